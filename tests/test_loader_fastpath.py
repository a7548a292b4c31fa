"""Local shards in the shard stage's layout are read by offsets (only the frames a plan keeps);
whatever that path cannot trust falls back to reading member by member, with the same results."""
from __future__ import annotations

import json
import random
from dataclasses import replace

import numpy as np
import pytest
import torch
import webdataset as wds

from lfvila.data import DataConfig, build_loader
from lfvila.data.reader import FrameMemberError, read_shard
from lfvila.data.sampling import SkipSample, plan_sample
from lfvila.shards.tar import DeterministicTarWriter
from lfvila.testing import model_pixels, synthetic_sample, write_sample_tar, write_synthetic_shards

BLOCK = 512


def samples(n: int, seed: int = 0, **kw) -> list[dict]:
    rng = random.Random(seed)
    return [synthetic_sample(f"k{i:03d}", rng, size=(24, 40), **kw) for i in range(n)]


def members(raw: dict) -> dict:
    """A read sample's members as bytes, whichever way it was read (every frame checked)."""
    if "__frames__" in raw:
        frames = raw["__frames__"]
        return {"json": raw["json"], **{f"{i:04d}.jpg": bytes(frames[i]) for i in range(len(frames))}}
    return {k: bytes(v) for k, v in raw.items() if not k.startswith("__")}


def read_both_ways(path) -> tuple[list[dict], list[dict]]:
    """(mapped, piped) reads of one shard: the local path allows reading by offsets, a pipe not."""
    return list(read_shard(str(path))), list(read_shard(f"pipe:cat {path}"))


def plan_all(raws: list[dict], cfg: DataConfig) -> list:
    out = []
    for i, raw in enumerate(raws):
        try:
            plan = plan_sample(raw, cfg, np.random.default_rng(i), True, (i,))
            out.append(replace(plan, url=""))  # the URL says how it was read
        except SkipSample as exc:
            out.append(exc.reason)
    return out


CFG = DataConfig(train_shards=["unused"], num_workers=0, n_sentences=3, frames_per_sentence=4,
                 min_frames_per_sentence=1, crop=(16, 24))


def test_both_paths_give_the_same_samples_plans_and_batches(tmp_path, bert_dir):
    paths = write_synthetic_shards(tmp_path, n_samples=6, samples_per_shard=3, size=(24, 40))
    mapped, piped = read_both_ways(paths[0])
    assert all("__frames__" in raw and "0000.jpg" not in raw for raw in mapped)  # read by offsets
    assert all("__frames__" not in raw and "0000.jpg" in raw for raw in piped)
    assert [members(r) for r in mapped] == [members(r) for r in piped]
    assert [r["__meta__"] for r in mapped] == [json.loads(r["json"]) for r in piped]
    assert plan_all(mapped, CFG) == plan_all(piped, CFG)
    batches = []
    for urls in (paths, [f"pipe:cat {p}" for p in paths]):
        cfg = DataConfig(train_shards=urls, num_workers=0, batch_size=3, crop=(16, 24), max_tokens=12,
                         shuffle_buffer=4, bert_dir=str(bert_dir))
        batches.append(list(build_loader(cfg, "train", epoch_mode=True)))
    assert len(batches[0]) == len(batches[1]) == 2
    for fast, slow in zip(*batches):
        assert fast["keys"] == slow["keys"]
        assert torch.equal(model_pixels(fast), model_pixels(slow)) and torch.equal(fast["text_ids"], slow["text_ids"])


def lie(sample: dict, change) -> dict:
    meta = json.loads(sample["json"])
    meta["frame_bytes"] = change(meta["frame_bytes"])
    return {**sample, "json": json.dumps(meta).encode()}


LIES = {
    "middle frame too short": lambda b: b[:2] + [b[2] - 600] + b[3:],
    "middle frame too long": lambda b: b[:2] + [b[2] + 512] + b[3:],
    "last frame one byte off": lambda b: b[:-1] + [b[-1] + 1],
    "one frame fewer": lambda b: b[:-1],
    "one frame more": lambda b: b + [100],
    "negative": lambda b: [-1] + b[1:],
    "not ints": lambda b: [float(n) for n in b],
    "bools": lambda b: [True] * len(b),
    "not a list": lambda b: {"0": b[0]},
    "far too long": lambda b: [1 << 70] + b[1:],
}


@pytest.mark.parametrize("lie_name", sorted(LIES))
def test_a_lying_frame_bytes_costs_speed_not_samples(tmp_path, lie_name):
    honest = samples(3, seed=1)
    path = tmp_path / "s.tar"
    write_sample_tar(path, [honest[0], lie(honest[1], LIES[lie_name]), honest[2]])
    mapped, piped = read_both_ways(path)
    assert [members(r) for r in mapped] == [members(r) for r in piped]
    assert [r["__key__"] for r in mapped] == ["k000", "k001", "k002"]
    assert ["__frames__" in r for r in mapped] == [True, False, True]  # only the liar read member by member
    assert plan_all(mapped, CFG) == plan_all(piped, CFG)


def test_a_one_byte_lie_inside_the_padding_is_read_from_the_header(tmp_path):
    """A middle frame's size off by a byte keeps every offset right: read by offsets, with the
    size its header holds, as member-by-member reading gives."""
    honest = samples(2, seed=2)
    odd = next(i for i, n in enumerate(json.loads(honest[0]["json"])["frame_bytes"][:-1]) if n % BLOCK)
    path = tmp_path / "s.tar"
    write_sample_tar(path, [lie(honest[0], lambda b: b[:odd] + [b[odd] - 1] + b[odd + 1:]), honest[1]])
    mapped, piped = read_both_ways(path)
    assert all("__frames__" in r for r in mapped)
    assert [members(r) for r in mapped] == [members(r) for r in piped]


def header_offset(path, name: str) -> int:
    at = path.read_bytes().index(name.encode() + b"\0")
    assert at % BLOCK == 0
    return at


def test_a_corrupt_skipped_frame_header_costs_its_sample_only_when_chosen(tmp_path):
    honest = samples(3, seed=3, n_sentences=3, frames_per_sentence=(4, 6))
    path = tmp_path / "s.tar"
    write_sample_tar(path, honest)
    meta = json.loads(honest[1]["json"])
    starts = {s["frame_start"] for s in meta["sentences"]}
    bad = next(i for i in range(1, len(meta["frame_times"]) - 1) if i not in starts)  # not a sentence start
    data = bytearray(path.read_bytes())
    data[header_offset(path, f"k001.{bad:04d}.jpg") + 136] ^= 0x01  # its mtime: only the checksum notices
    path.write_bytes(bytes(data))
    mapped = list(read_shard(str(path)))
    assert [r["__key__"] for r in mapped] == ["k000", "k001", "k002"] and all("__frames__" in r for r in mapped)
    with pytest.raises(FrameMemberError, match=f"frame {bad}"):
        mapped[1]["__frames__"][bad]
    assert bytes(mapped[1]["__frames__"][bad - 1]) == honest[1][f"{bad - 1:04d}.jpg"]
    # Every frame chosen (more frames per clip than any sentence has): skipped, the rest read.
    every = DataConfig(train_shards=["unused"], num_workers=0, n_sentences=3, frames_per_sentence=8,
                       min_frames_per_sentence=1)
    plans = plan_all(mapped, every)
    assert plans[1] == "bad_frame_member" and not isinstance(plans[0], str) and not isinstance(plans[2], str)
    # One frame per clip, each sentence's first: the corrupt header is never read.
    first_only = DataConfig(train_shards=["unused"], num_workers=0, n_sentences=3, frames_per_sentence=1,
                            min_frames_per_sentence=1)
    plan = plan_all(mapped, first_only)[1]
    assert plan.jpegs == [honest[1][f"{i:04d}.jpg"] for i in sorted(starts)]
    # Read member by member, the same corruption costs that sample (counted), and the reader goes
    # on at the next valid header.
    piped = list(read_shard(f"pipe:cat {path}"))
    assert [(r["__key__"], r.get("__error__")) for r in piped] == \
        [("k000", None), ("k001", "bad_tar_header"), ("k002", None)]


def test_truncated_shards_end_in_truncated_tar(tmp_path):
    honest = samples(3, seed=4)
    path = tmp_path / "s.tar"
    write_sample_tar(path, honest)
    whole = path.read_bytes()
    second_end = header_offset(path, "k002.json")
    for cut, kind in [(second_end - 700, "inside k001's frames"), (second_end - 1, "inside the padding"),
                      (second_end + 300, "inside k002's JSON header")]:
        path.write_bytes(whole[:cut])
        got = list(read_shard(str(path)))
        # As read member by member: k001 is the sample being read when the shard ends (the header
        # after it is cut short), so the record names it.
        assert [(r["__key__"], r.get("__error__")) for r in got] == [("k000", None), ("k001", "truncated_tar")], kind
        assert [(r["__key__"], r.get("__error__")) for r in read_shard(f"pipe:cat {path}")] == \
            [(r["__key__"], r.get("__error__")) for r in got]
    # Cut between samples (no end-of-archive block, which every tar writer puts there): the
    # samples before are used, and the cut is counted (the samples after it are lost).
    path.write_bytes(whole[:second_end])
    for url in (str(path), f"pipe:cat {path}"):
        assert [(r["__key__"], r.get("__error__")) for r in read_shard(url)] == \
            [("k000", None), ("k001", None), (None, "truncated_tar")]


def test_other_layouts_are_read_member_by_member(tmp_path):
    """webdataset's TarWriter (members sorted: the JSON last), no frame_bytes, long names (pax
    headers) and a JSON in the middle: read as before, as the piped read gives."""
    rng = random.Random(5)
    plain = samples(2, seed=5)
    no_sizes = [{**s, "json": json.dumps({k: v for k, v in json.loads(s["json"]).items()
                                          if k != "frame_bytes"}).encode()} for s in samples(2, seed=6)]
    long_key = synthetic_sample("L" * 95, rng, size=(24, 40))  # "KEY.json" fits a header, its frames not
    frames = [k for k in plain[1] if k.endswith(".jpg")]
    json_in_middle = {"__key__": "mid", **{k: plain[1][k] for k in frames[:2]}, "json": plain[1]["json"],
                      **{k: plain[1][k] for k in frames[2:]}}
    sorted_path = tmp_path / "sorted.tar"
    with wds.TarWriter(str(sorted_path)) as sink:
        for s in plain:
            sink.write(s)
    other_path = tmp_path / "other.tar"
    # plain[0] under a key of its own: no_sizes reuses k000, and a key repeated in a shard is skipped
    write_sample_tar(other_path, [*no_sizes, long_key, json_in_middle, {**plain[0], "__key__": "k900"}])
    for path, fast in [(sorted_path, [False, False]), (other_path, [False, False, False, False, True])]:
        mapped, piped = read_both_ways(path)
        assert ["__frames__" in r for r in mapped] == fast
        assert [members(r) for r in mapped] == [members(r) for r in piped]
        assert plan_all(mapped, CFG) == plan_all(piped, CFG)
        assert not any(isinstance(p, str) for p in plan_all(mapped, CFG))


def test_sample_frames_sequence(tmp_path):
    honest = samples(1, seed=7)
    path = tmp_path / "s.tar"
    write_sample_tar(path, honest)
    (raw,) = read_shard(str(path))
    frames = raw["__frames__"]
    n = len(json.loads(honest[0]["json"])["frame_times"])
    assert len(frames) == n and [bytes(f) for f in frames] == [honest[0][f"{i:04d}.jpg"] for i in range(n)]
    with pytest.raises(IndexError):
        frames[n]
    path.unlink()  # frames are read from an open descriptor: the shard's name is not needed any more
    assert bytes(frames[0]) == honest[0]["0000.jpg"]


def test_the_shard_writers_samples_are_read_by_offsets_past_9999_frames_too(tmp_path):
    """DeterministicTarWriter.add_sample (the shard stage's writer) pads every index of a sample
    past 9,999 frames to 5 digits; another writer may pad to 4 only: both are read by offsets."""
    n = 10_001
    meta = {"key": "long", "fps": 3.0, "width": 8, "height": 8, "frame_times": [round(i / 3, 6) for i in range(n)],
            "sentences": [{"text": "t", "start": 0.0, "end": n / 3, "clip_id": "c", "frame_start": 0, "frame_end": n}]}
    jpegs = [b"%d" % i for i in range(n)]
    short = samples(1, seed=8)[0]
    short_jpegs = [short[f"{i:04d}.jpg"] for i in range(len(json.loads(short["json"])["frame_times"]))]
    wide = tmp_path / "wide.tar"
    writer = DeterministicTarWriter(wide)
    writer.add_sample("long", meta, jpegs, digits=5)
    writer.add_sample("short", json.loads(short["json"]), short_jpegs)
    writer.close()
    narrow = tmp_path / "narrow.tar"
    narrow_json = json.dumps({**meta, "frame_bytes": list(map(len, jpegs))}).encode()
    write_sample_tar(narrow, [{"__key__": "long", "json": narrow_json,
                               **{f"{i:04d}.jpg": jpeg for i, jpeg in enumerate(jpegs)}}])
    for path in (wide, narrow):
        raws = list(read_shard(str(path)))
        assert all("__frames__" in raw for raw in raws)
        picked = [0, 7, 9_999, 10_000]
        assert raws[0]["__frames__"].take(picked) == [jpegs[i] for i in picked]
        if path == wide:
            assert [raw["__key__"] for raw in raws] == ["long", "short"]
            assert [bytes(f) for f in raws[1]["__frames__"]] == short_jpegs
