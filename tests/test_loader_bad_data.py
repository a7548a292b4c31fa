"""Bad data never crashes or hangs the loader: skipped, counted by reason, logged with the URL."""
from __future__ import annotations

import functools
import http.server
import json
import logging
import random
import shutil
import tarfile
import threading

import numpy as np
import pytest
import webdataset as wds

from lfvila.data import DataConfig, build_loader
from lfvila.data import loader as loader_module
from lfvila.testing import synthetic_sample, write_synthetic_shards

SIZE = (24, 40)


def sample(key: str, seed: int, **kw) -> dict:
    return synthetic_sample(key, random.Random(seed), size=SIZE, **kw)


def with_meta(s: dict, edit) -> dict:
    meta = json.loads(s["json"])
    edit(meta)
    return {**s, "json": json.dumps(meta).encode()}


def bad_samples() -> dict[str, dict]:
    """One sample per way a sample can be wrong, keyed by the reason the loader must report."""
    out = {}
    out["bad_json"] = {**sample("bad_json", 1), "json": b"{not json"}
    out["missing_json"] = {k: v for k, v in sample("missing_json", 2).items() if k != "json"}
    out["bad_frame_range"] = with_meta(sample("bad_range", 3), lambda m: m["sentences"][1].update(frame_end=999))
    out["bad_frame_range/time"] = with_meta(  # frames whose times fall outside the sentence's span
        sample("bad_time", 4), lambda m: m["sentences"][0].update(end=m["sentences"][0]["start"] + 0.01))
    out["too_few_frames"] = with_meta(  # a sentence without frames (all sentences are in the window)
        sample("no_frames", 5, n_sentences=2),
        lambda m: m["sentences"][0].update(frame_start=m["sentences"][0]["frame_end"]))
    missing = sample("missing_frame", 6)
    del missing["0002.jpg"]
    out["frame_count_mismatch"] = missing
    corrupt = sample("corrupt_jpeg", 7)
    corrupt["0001.jpg"] = corrupt["0001.jpg"][:50] + b"\x00" * 30
    out["corrupt_jpeg"] = corrupt
    return out


def write_tar(path, samples) -> str:
    with wds.TarWriter(str(path)) as sink:
        for s in samples:
            sink.write(s)
    return str(path)


def truncated_copy(src: str, dst) -> str:
    """``src`` cut in the middle of its second sample's members."""
    with tarfile.open(src) as tar:
        members = tar.getmembers()
    second = [m for m in members if m.name.startswith("trunc_1.")]
    cut = second[1].offset_data + 10
    with open(src, "rb") as f:
        data = f.read()[:cut]
    with open(dst, "wb") as f:
        f.write(data)
    return str(dst)


@pytest.fixture
def corpus(tmp_path):
    good = write_synthetic_shards(tmp_path / "good", n_samples=6, samples_per_shard=3, size=SIZE)
    bad = bad_samples()
    mixed = write_tar(tmp_path / "mixed.tar", [sample("ok_a", 10), *bad.values(), sample("ok_b", 11)])
    whole = write_tar(tmp_path / "whole.tar", [sample(f"trunc_{i}", 20 + i) for i in range(3)])
    truncated = truncated_copy(whole, tmp_path / "truncated.tar")
    not_a_tar = tmp_path / "noise.tar"
    not_a_tar.write_bytes(random.Random(0).randbytes(5000))
    urls = [mixed, truncated, str(not_a_tar), str(tmp_path / "missing.tar"),
            f"pipe:cat {good[0]}", f"pipe:cat {tmp_path / 'missing-too.tar'}", good[1]]
    good_keys = {f"train_{i:06d}" for i in range(6)} | {"ok_a", "ok_b", "trunc_0"}
    return urls, good_keys


def test_bad_samples_and_shards_are_skipped_and_counted(corpus, bert_dir, caplog):
    urls, good_keys = corpus
    cfg = DataConfig(train_shards=urls, batch_size=4, num_workers=0, crop=(16, 24), max_tokens=12,
                     bert_dir=str(bert_dir), error_log_interval_s=0)
    loader = build_loader(cfg, "train", epoch_mode=True)
    with caplog.at_level(logging.WARNING, logger="lfvila.data"):
        keys = [k for batch in loader for k in batch["keys"]]
    assert sorted(keys) == sorted(good_keys)
    assert loader.counters() == {
        "bad_json": 1, "missing_json": 1, "bad_frame_range": 2, "too_few_frames": 1,
        "frame_count_mismatch": 1, "corrupt_jpeg": 1, "truncated_tar": 1, "shard_open_error": 3,
    }
    for url in urls[2:4] + [urls[5]]:  # every shard that cannot be opened is reported with its URL
        assert url in caplog.text
    assert "corrupt_jpeg" in caplog.text and "truncated_tar" in caplog.text


def test_counters_come_back_from_worker_processes(corpus, bert_dir):
    urls, good_keys = corpus
    cfg = DataConfig(train_shards=urls, batch_size=2, num_workers=2, crop=(16, 24), max_tokens=12,
                     bert_dir=str(bert_dir))
    loader = build_loader(cfg, "train", epoch_mode=True)
    keys = [k for batch in loader for k in batch["keys"]]
    assert sorted(keys) == sorted(good_keys)
    assert sum(loader.counters().values()) == 11


def test_unusable_infinite_stream_raises_instead_of_spinning(tmp_path, bert_dir, monkeypatch):
    monkeypatch.setattr(loader_module, "MAX_CONSECUTIVE_SKIPS", 50)
    broken = [str(tmp_path / "nope-0.tar"), str(tmp_path / "nope-1.tar")]
    cfg = DataConfig(train_shards=broken, num_workers=0, bert_dir=str(bert_dir))
    with pytest.raises(RuntimeError, match="shard_open_error"):
        next(iter(build_loader(cfg, "train")))
    empty = [write_tar(tmp_path / f"empty-{i}.tar", []) for i in range(2)]
    with pytest.raises(RuntimeError, match="hold no samples"):
        next(iter(build_loader(DataConfig(train_shards=empty, num_workers=0, bert_dir=str(bert_dir)), "train")))


@pytest.mark.skipif(shutil.which("curl") is None, reason="webdataset opens http URLs through curl")
def test_http_shards(tmp_path, bert_dir):
    """Shards served over HTTP (a real server on 127.0.0.1) read like local ones."""
    paths = write_synthetic_shards(tmp_path, n_samples=4, samples_per_shard=2, size=SIZE)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        spec = f"http://127.0.0.1:{port}/train-{{000000..000001}}.tar"
        cfg = DataConfig(train_shards=spec, batch_size=4, num_workers=0, crop=(16, 24), max_tokens=12,
                         bert_dir=str(bert_dir))
        keys = [k for batch in build_loader(cfg, "train", epoch_mode=True) for k in batch["keys"]]
    finally:
        server.shutdown()
        server.server_close()
    assert sorted(keys) == [f"train_{i:06d}" for i in range(4)] and len(paths) == 2



@pytest.mark.parametrize("edit", [
    lambda m: m["frame_times"].__setitem__(0, 10 ** 400),  # an int beyond float range
    lambda m: m["frame_times"].__setitem__(1, True),
    lambda m: m["frame_times"].__setitem__(2, float("nan")),
])
def test_odd_frame_times_are_skips_not_crashes(edit):
    from lfvila.data.sampling import SkipSample, plan_sample

    raw = {"__key__": "odd", "__url__": "u", **with_meta(sample("odd", 11), edit)}
    with pytest.raises(SkipSample) as info:
        plan_sample(raw, DataConfig(), np.random.default_rng(0), True, (0,))
    assert info.value.reason == "bad_json"
    # A member whose "number" int() cannot read ("²" is a digit to str.isdigit) is not a frame.
    raw = {"__key__": "odd", "__url__": "u", **sample("odd", 11), "\u00b2.jpg": b"x"}
    assert plan_sample(raw, DataConfig(), np.random.default_rng(0), True, (0,)).key == "odd"


@pytest.mark.parametrize("resize_on", ["device", "loader"])
def test_a_sample_failing_last_leaves_no_trace_in_the_final_batch(tmp_path, bert_dir, resize_on):
    """The stream's last sample fails while its frames are decoded (a corrupt JPEG): the final,
    short batch holds exactly the good samples and finishes on the device."""
    from lfvila.data import batch_to_device

    shard = write_tar(tmp_path / "s.tar", [sample("good", 11), bad_samples()["corrupt_jpeg"]])
    cfg = DataConfig(train_shards=[shard], val_shards=[shard], batch_size=4, num_workers=0, crop=(16, 24),
                     max_tokens=12, bert_dir=str(bert_dir), resize_on=resize_on)
    loader = build_loader(cfg, "val", epoch_mode=True)
    (batch,) = list(loader)
    assert batch["keys"] == ["good"] and loader.counters() == {"corrupt_jpeg": 1}
    assert len(batch["video"]) == 1
    assert batch_to_device(batch, "cpu")["video"].shape == (1, 3, 32, 16, 24)
