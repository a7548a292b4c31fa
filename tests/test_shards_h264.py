"""shards.frames: h264: one H.264 stream per sample, and the loader decoding only the frames it uses."""
from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest

from lfvila.build_config import BuildConfig
from lfvila.config import load_config
from lfvila.data import DataConfig
from lfvila.data.frames import render_frames, render_geometry
from lfvila.data.reader import read_shard
from lfvila.data.sampling import SkipSample, plan_sample
from lfvila.shards.build import build_shards
from lfvila.shards.fixtures import sentences_every, write_longform
from lfvila.shards.task import fingerprint_settings
from lfvila.video.h264 import frames_to_decode

# A real 240p H.264 video (the pancake) and a real MJPEG AVI with another frame size.
VIDEOS = [("pancake", "decord__flipping_a_pancake", 2.0, 10.0), ("album", "kphotoalbum__movie", 0.9, 4.5)]


def _build(shared_data, out, *overrides):
    rows = [{"key": key, "video_id": vid, "sentences": sentences_every(0.0, end, step, vid, text=f"{key} sentence")}
            for key, vid, step, end in VIDEOS]
    write_longform(out / "longform.parquet", rows)
    cfg = load_config(BuildConfig, None, ["shards.samples_per_shard=2", *overrides])
    build_shards(cfg, out, shared_data / "videos" / "natural", workers=1)
    return out / "shards" / "train-000000.tar"


@pytest.fixture(scope="module")
def shards(shared_data, tmp_path_factory):
    return {frames: _build(shared_data, tmp_path_factory.mktemp(frames), f"shards.frames={frames}")
            for frames in ("jpeg", "h264")}


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def test_h264_sample_layout_matches_the_jpeg_sample(shards):
    """Same JSON as the JPEG sample (frame times, sentences and their frame ranges) plus the stream's
    layout; members KEY.json then KEY.h264; one packet per frame, keyframes every video.h264_gop."""
    gop = BuildConfig().video.h264_gop
    with tarfile.open(shards["jpeg"]) as jt, tarfile.open(shards["h264"]) as ht:
        names = ht.getnames()
        assert names == [n for key in ("album", "pancake") for n in (f"{key}.json", f"{key}.h264")]
        for key in ("album", "pancake"):
            jpeg_meta = json.loads(jt.extractfile(f"{key}.json").read())
            meta = json.loads(ht.extractfile(f"{key}.json").read())
            stream = ht.extractfile(f"{key}.h264").read()
            assert meta["codec"] == "h264" and list(meta)[list(meta).index("frame_times") + 1] == "codec"
            same = {k: v for k, v in meta.items() if k not in ("codec", "keyframes", "packet_bytes")}
            assert same == {k: v for k, v in jpeg_meta.items() if k != "frame_bytes"}
            n = len(meta["frame_times"])
            assert len(meta["packet_bytes"]) == n and sum(meta["packet_bytes"]) == len(stream)
            assert meta["keyframes"] == list(range(0, n, gop))
            assert stream[:4] == b"\0\0\0\1"  # Annex B


def test_h264_build_is_byte_identical_on_rerun(shared_data, shards, tmp_path):
    again = _build(shared_data, tmp_path, "shards.frames=h264")
    assert again.read_bytes() == shards["h264"].read_bytes()


def test_frames_setting_is_in_the_fingerprint_and_jpeg_fingerprints_are_unchanged():
    jpeg = fingerprint_settings(BuildConfig())
    # What JPEG shards were fingerprinted with before the setting existed: a finished corpus stays finished.
    assert set(jpeg["shards"]) == {"samples_per_shard"}
    assert not any(k.startswith("h264_") for k in jpeg["video"])
    h264 = fingerprint_settings(load_config(BuildConfig, None, ["shards.frames=h264"]))
    assert h264["shards"]["frames"] == "h264" and h264["video"]["h264_gop"] == BuildConfig().video.h264_gop
    other_gop = fingerprint_settings(load_config(BuildConfig, None, ["shards.frames=h264", "video.h264_gop=2"]))
    assert other_gop != h264


def test_frames_setting_is_checked():
    with pytest.raises(ValueError, match="shards.frames"):
        load_config(BuildConfig, None, ["shards.frames=png"])
    with pytest.raises(ValueError, match="video.h264_gop"):
        load_config(BuildConfig, None, ["video.h264_gop=0"])


def _raws(tar):
    return {raw["__key__"]: raw for raw in read_shard(str(tar))}


@pytest.mark.parametrize("train", [True, False])
def test_h264_loader_draws_the_jpeg_paths_frames_and_decodes_close_pixels(shards, train):
    """For the same seed the plans draw the same frames, crop and flip from both storages, and the
    decoded frames agree within the codecs' losses (PSNR > 30 dB against the JPEG decode)."""
    cfg = DataConfig()
    jpeg_raws, h264_raws = _raws(shards["jpeg"]), _raws(shards["h264"])
    assert sorted(jpeg_raws) == sorted(h264_raws) == ["album", "pancake"]
    for key in jpeg_raws:
        for seed in range(3):
            jp = plan_sample(jpeg_raws[key], cfg, np.random.default_rng(seed), train, (seed,))
            hp = plan_sample(h264_raws[key], cfg, np.random.default_rng(seed), train, (seed,))
            assert hp.frame_ids == jp.frame_ids and hp.box == jp.box and hp.flip == jp.flip and hp.texts == jp.texts
            assert hp.jpegs == [] and len(hp.h264.wanted) == len(jp.jpegs)
            outs = []
            for plan in (jp, hp):
                factor, hw = render_geometry(plan, cfg)
                out = np.zeros((cfg.n_frames, *hw, 3), np.uint8)
                outs.append((render_frames(plan, cfg, out, factor, hw), out))
            (jbox, jout), (hbox, hout) = outs
            assert jbox == hbox and jout.shape == hout.shape
            assert min(_psnr(a, b) for a, b in zip(jout, hout)) > 30


def test_h264_plan_keeps_only_the_packets_from_each_keyframe_to_the_frames_it_uses(shards):
    raw = _raws(shards["h264"])["pancake"]
    meta = json.loads(raw["json"])
    decoded = []
    for seed in range(8):
        plan = plan_sample(raw, DataConfig(), np.random.default_rng(seed), True, (seed,))
        decode = plan.h264.packet_frames
        assert decode == frames_to_decode(plan.h264.wanted, meta["keyframes"], len(meta["frame_times"]))
        assert max(decode) == max(plan.h264.wanted)  # nothing past the last frame used
        assert [len(p) for p in plan.h264.packets] == [meta["packet_bytes"][f] for f in decode]
        decoded.append(len(decode))
    assert min(decoded) < len(meta["frame_times"])  # windows that do not reach the end: not the whole stream


def test_frames_to_decode_runs_from_the_keyframe_before_each_wanted_frame():
    keyframes = [0, 6, 12, 18]
    assert frames_to_decode([0], keyframes, 20) == [0]
    assert frames_to_decode([2, 4], keyframes, 20) == [0, 1, 2, 3, 4]
    assert frames_to_decode([4, 13, 19], keyframes, 20) == [0, 1, 2, 3, 4, 12, 13, 18, 19]
    assert frames_to_decode([5, 6], keyframes, 20) == [0, 1, 2, 3, 4, 5, 6]
    assert frames_to_decode(list(range(3)), [0, 1, 2], 3) == [0, 1, 2]  # all-intra: only what is wanted


@pytest.mark.parametrize("damage", ["packet_bytes", "stream", "codec"])
def test_a_damaged_h264_sample_is_a_counted_skip(shards, damage):
    from lfvila.data.frames import render_frames as render

    raw = dict(_raws(shards["h264"])["pancake"])
    meta = json.loads(raw["json"])
    if damage == "packet_bytes":
        meta["packet_bytes"][0] += 1
    elif damage == "codec":
        meta["codec"] = "av1"
    raw["json"] = json.dumps(meta).encode()
    cfg = DataConfig()
    if damage == "stream":  # garbage in every packet the plan keeps
        plan = plan_sample(raw, cfg, np.random.default_rng(0), True, (0,))
        plan.h264.packets = [b"\0\0\0\1" + bytes(len(p)) for p in plan.h264.packets]
        factor, hw = render_geometry(plan, cfg)
        with pytest.raises(SkipSample) as info:
            render(plan, cfg, np.zeros((cfg.n_frames, *hw, 3), np.uint8), factor, hw)
        assert info.value.reason == "corrupt_video"
        return
    with pytest.raises(SkipSample) as info:
        plan_sample(raw, cfg, np.random.default_rng(0), True, (0,))
    assert info.value.reason == "bad_json"


def test_viewing_an_h264_sample_decodes_all_its_frames(shards):
    import io

    import pyarrow.parquet as pq
    from PIL import Image

    from lfvila.shards.read import iter_samples
    from lfvila.viz.corpus import read_sample_at

    index = {r["key"]: r for r in pq.read_table(shards["h264"].parent / "index.parquet").to_pylist()}
    jpeg = {s["key"]: s for s in iter_samples(shards["jpeg"])}
    for key, row in index.items():
        meta, frames = read_sample_at(shards["h264"], row["offset"], row["size"], key)
        assert len(frames) == len(meta["frame_times"]) == len(jpeg[key]["frames"])
        first = np.asarray(Image.open(io.BytesIO(frames[0])).convert("RGB"))
        assert _psnr(first, np.asarray(Image.open(io.BytesIO(jpeg[key]["frames"][0])).convert("RGB"))) > 30
    assert all("h264" in s and s["frames"] == [] for s in iter_samples(shards["h264"]))


def test_the_loader_makes_batches_from_h264_shards(shards, bert_dir):
    from lfvila.data import build_loader
    from lfvila.testing import model_pixels

    cfg = DataConfig(val_shards=[str(shards["h264"])], batch_size=2, num_workers=0, bert_dir=str(bert_dir))
    loader = build_loader(cfg, "val", epoch_mode=True)
    batch = next(iter(loader))
    assert sorted(batch["keys"]) == ["album", "pancake"]
    assert model_pixels(batch).shape == (2, 3, 32, 192, 320)
