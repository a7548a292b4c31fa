"""Shard building: determinism, indexes (wids, byte offsets), resume, kill-and-resume, shard ranges, CLI."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from lfvila.build_config import BuildConfig
from lfvila.config import load_config
from lfvila.shards.build import build_shards, format_build_summary, parse_shard_range
from lfvila.shards.fixtures import make_colour_video, sentences_every, write_longform
from lfvila.shards.read import iter_samples, read_sample

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("videos")
    make_colour_video(d / "colour.mp4", 12)
    make_colour_video(d / "wide.mkv", 6, size="320x180")
    return d


def _rows(n: int = 9) -> list[dict]:
    """n long-form videos over the two test videos, plus one whose video is missing; keys unsorted."""
    rows = []
    for i in range(n):
        vid = "colour" if i % 3 else "wide"
        start = 0.3 * i % 2.0
        rows.append({"key": f"k{(i * 7) % n:03d}", "video_id": vid, "split": "val" if i == 4 else "train",
                     "sentences": sentences_every(start, start + 3.2, 0.8, vid)})
    rows.append({"key": "k999", "video_id": "missing", "sentences": sentences_every(0, 4, 1, "missing")})
    return rows


def _cfg(*overrides: str) -> BuildConfig:
    return load_config(BuildConfig, None, ["shards.samples_per_shard=2", *overrides])


def _manifest(out: Path, rows: list[dict] | None = None) -> Path:
    write_longform(out / "longform.parquet", rows or _rows())
    return out


def _files(out: Path) -> dict[str, bytes]:
    """Every output file of the shard stage (and corpus.json) by relative path."""
    found = {p.relative_to(out).as_posix(): p.read_bytes() for p in (out / "shards").iterdir()}
    found["corpus.json"] = (out / "corpus.json").read_bytes()
    return found


def test_two_builds_are_byte_identical_whatever_the_workers(tmp_path, videos):
    one = _manifest(tmp_path / "one")
    two = _manifest(tmp_path / "two")
    s1 = build_shards(_cfg(), one, videos, workers=1)
    s2 = build_shards(_cfg(), two, videos, workers=2)
    assert s1 == s2
    f1, f2 = _files(one), _files(two)
    assert sorted(f1) == sorted(f2)
    assert [name for name in f1 if name.endswith(".tar")] and not [n for n in f1 if n.endswith(".tmp")]
    assert all(f1[name] == f2[name] for name in f1)
    # 9 train-or-val samples + 1 missing: train has 9 rows -> 5 shards, val 1 row -> 1 shard
    assert sorted(n for n in f1 if n.endswith(".tar")) == [f"shards/train-{i:06d}.tar" for i in range(5)] + [
        "shards/val-000000.tar"]
    assert s1["totals"]["samples_written"] == 9 and s1["totals"]["rejected_by_reason"] == {"video_not_found": 1}
    assert s1["clips_check_ok"] and "OK:" in format_build_summary(s1)


def test_samples_are_in_key_order_and_tar_headers_are_fixed(tmp_path, videos):
    import tarfile

    out = _manifest(tmp_path)
    build_shards(_cfg(), out, videos, workers=1)
    keys = [s["key"] for tar in sorted((out / "shards").glob("train-*.tar")) for s in iter_samples(tar)]
    assert keys == sorted(keys)
    with tarfile.open(out / "shards" / "train-000000.tar") as tar:
        infos = tar.getmembers()
    assert {(i.mtime, i.uid, i.gid, i.uname, i.gname, i.mode) for i in infos} == {(0, 0, 0, "", "", 0o444)}
    names = [i.name for i in infos]
    first = names[0].split(".")[0]
    own = [n for n in names if n.startswith(first + ".")]
    assert own[0] == f"{first}.json" and own[1:] == [f"{first}.{i:04d}.jpg" for i in range(len(own) - 1)]


def test_json_comes_first_and_frame_bytes_locate_every_frame(tmp_path, videos):
    """Each sample is KEY.json then its frames; offsets computed from frame_bytes land on the frame headers."""
    import tarfile

    from lfvila.shards.tar import BLOCK, frame_header_offsets, padded, read_member_header

    out = _manifest(tmp_path)
    build_shards(_cfg(), out, videos, workers=1)
    index = {r["key"]: r for r in pq.read_table(out / "shards" / "index.parquet").to_pylist()}
    checked = 0
    for tar_path in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            infos = tar.getmembers()
        blob = tar_path.read_bytes()
        by_key: dict[str, list[tarfile.TarInfo]] = {}
        for info in infos:
            by_key.setdefault(info.name.split(".")[0], []).append(info)
        for key, members in by_key.items():
            head, frames = members[0], members[1:]
            meta = json.loads(blob[head.offset_data:head.offset_data + head.size])
            assert head.name == f"{key}.json" and [m.name for m in frames] == [
                f"{key}.{i:04d}.jpg" for i in range(len(meta["frame_times"]))]
            assert list(meta)[list(meta).index("frame_times") + 1] == "frame_bytes"
            assert meta["frame_bytes"] == [m.size for m in frames]
            assert index[key]["offset"] == head.offset  # the sample starts with its JSON member
            # As docs/shards.md tells a reader: JSON member = one header block + padded data, then the frames.
            assert head.offset_data == head.offset + BLOCK
            offsets = frame_header_offsets(head.offset, BLOCK + padded(head.size), meta["frame_bytes"])
            assert offsets == [m.offset for m in frames]
            for i, at in enumerate(offsets):
                assert read_member_header(blob[at:at + BLOCK]) == (f"{key}.{i:04d}.jpg", meta["frame_bytes"][i])
                data = blob[at + BLOCK:at + BLOCK + meta["frame_bytes"][i]]
                assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"  # a whole JPEG
            end = offsets[-1] + BLOCK + padded(meta["frame_bytes"][-1])
            assert index[key]["size"] == end - head.offset  # the index range covers the whole sample
            checked += 1
    assert checked == 9


def test_frame_headers_are_one_block_for_short_ascii_names():
    """The condition docs/shards.md states for the offset formula, checked against tarfile's PAX writer."""
    from lfvila.shards.tar import BLOCK, member_header, read_member_header

    for name in ("k.0000.jpg", "k" * 91 + ".0000.jpg"):  # up to 100 ASCII characters: one ustar block
        assert len(member_header(name, 25_000)) == BLOCK
        assert read_member_header(member_header(name, 25_000)) == (name, 25_000)
    for name in ("k" * 92 + ".0000.jpg", "ké.0000.jpg"):  # longer or non-ASCII: PAX blocks in front
        header = member_header(name, 25_000)
        assert len(header) > BLOCK
        with pytest.raises(ValueError, match="not a regular file"):
            read_member_header(header[:BLOCK])
    with pytest.raises(ValueError, match="no valid tar header"):
        read_member_header(bytes(BLOCK))


def test_add_sample_writes_json_first_and_checks_frame_count(tmp_path):
    import tarfile

    from lfvila.shards.tar import DeterministicTarWriter

    writer = DeterministicTarWriter(tmp_path / "t.tar")
    meta = {"key": "a", "frame_times": [0.5, 1.5], "frame_bytes": "stale", "sentences": []}
    assert writer.add_sample("a", meta, [b"x" * 600, b"y"]) == (0, 512 + 512 + 512 + 1024 + 512 + 512)
    with pytest.raises(ValueError, match="1 frame_times for 2 frames"):
        writer.add_sample("b", dict(meta, frame_times=[0.5]), [b"x", b"y"])
    writer.close()
    with tarfile.open(tmp_path / "t.tar") as tar:
        assert tar.getnames() == ["a.json", "a.0000.jpg", "a.0001.jpg"]
        written = json.loads(tar.extractfile("a.json").read())
    assert list(written) == ["key", "frame_times", "frame_bytes", "sentences"] and written["frame_bytes"] == [600, 1]


def test_index_byte_ranges_and_wids_random_access(tmp_path, videos):
    import webdataset as wds
    import wids

    out = _manifest(tmp_path)
    build_shards(_cfg(), out, videos, workers=1)
    index = pq.read_table(out / "shards" / "index.parquet").to_pylist()
    sequential = {s["key"]: s for tar in sorted((out / "shards").glob("*.tar")) for s in iter_samples(tar)}
    assert sorted(r["key"] for r in index) == sorted(sequential)
    for row in index:
        sample = read_sample(out, row["key"])
        assert sample == sequential[row["key"]]
        assert row["n_frames"] == len(sample["frames"]) and row["n_sentences"] == len(sample["meta"]["sentences"])

    ds = wids.ShardListDataset(str(out / "shards" / "train.wids.json"), cache_dir=str(tmp_path / "wids_cache"))
    train_keys = [r["key"] for r in index if r["split"] == "train"]
    assert len(ds) == len(train_keys)
    for i in (len(ds) - 1, 0, 3):  # random access, out of order
        sample = ds[i]
        assert sample["__key__"] == train_keys[i]
        meta = sample[".json"]  # wids decodes JSON members
        assert meta["key"] == train_keys[i]
        assert sum(k.endswith(".jpg") for k in sample) == len(meta["frame_times"])

    # Plain webdataset, as in docs/shards.md.
    urls = [str(p) for p in sorted((out / "shards").glob("train-*.tar"))]
    seen = []
    for sample in wds.WebDataset(urls, shardshuffle=False).decode("rgb8"):
        meta = sample["json"]
        frames = [sample[f"{i:04d}.jpg"] for i in range(len(meta["frame_times"]))]
        assert frames[0].shape == (240, meta["width"], 3)
        seen.append(sample["__key__"])
    assert seen == train_keys


def test_rerun_skips_complete_shards_and_redoes_what_changed(tmp_path, videos):
    out = _manifest(tmp_path)
    build_shards(_cfg(), out, videos, workers=1)
    before = _files(out)
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.stats.json")}
    build_shards(_cfg(), out, videos, workers=1)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.stats.json")} == stamps
    # A damaged tar (size no longer matches its stats) is redone, and only that shard.
    damaged = out / "shards" / "train-000001.tar"
    damaged.write_bytes(damaged.read_bytes()[:1000])
    build_shards(_cfg(), out, videos, workers=1)
    after = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.stats.json")}
    assert [n for n in after if after[n] != stamps[n]] == ["train-000001.stats.json"]
    assert _files(out) == before
    # Runtime-only settings (timeouts, decoder threads) leave complete shards alone.
    build_shards(_cfg("video.timeout_s=300", "video.decoder_threads=2"), out, videos, workers=1)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.stats.json")} == after
    # A config change that alters the output changes every task's fingerprint: everything is redone.
    build_shards(_cfg("video.jpeg_quality=50"), out, videos, workers=1)
    assert _files(out)["shards/train-000000.tar"] != before["shards/train-000000.tar"]


def test_retry_failed_redoes_shards_with_failed_samples(tmp_path, videos):
    out = _manifest(tmp_path)
    videos_here = tmp_path / "videos"
    shutil.copytree(videos, videos_here)
    first = build_shards(_cfg(), out, videos_here, workers=1)
    assert first["totals"]["samples_failed"] == 1
    os.symlink(videos / "colour.mp4", videos_here / "missing.mp4")  # the download arrived
    assert build_shards(_cfg(), out, videos_here, workers=1)["totals"]["samples_failed"] == 1
    retried = build_shards(_cfg(), out, videos_here, workers=1, retry_failed=True)
    assert retried["totals"]["samples_failed"] == 0 and retried["totals"]["samples_written"] == 10
    assert json.loads((out / "corpus.json").read_text())["video"] == retried


def test_sigkill_mid_build_then_rerun_equals_uninterrupted(tmp_path, videos):
    rows = [{"key": f"s{i:03d}", "video_id": "colour", "sentences": sentences_every(0.1 * i, 0.1 * i + 10.0, 2.5, "colour")}
            for i in range(14)]
    overrides = ["shards.samples_per_shard=1"]
    reference = _manifest(tmp_path / "reference", rows)
    build_shards(_cfg(*overrides), reference, videos, workers=1)

    killed = _manifest(tmp_path / "killed", rows)
    cmd = [sys.executable, "-m", "lfvila.cli", "build", "--stage", "shards", "--out", str(killed), "--videos",
           str(videos), "--workers", "1", "--set", overrides[0]]
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        while len(list((killed / "shards").glob("*.stats.json"))) < 3 and proc.poll() is None:
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole job, ffmpeg children included
        proc.wait()
    complete = len(list((killed / "shards").glob("*.stats.json")))
    assert 3 <= complete < 14, "the build must be killed part-way for this test to mean anything"

    build_shards(_cfg(*overrides), killed, videos, workers=1)
    assert _files(killed) == _files(reference)


def test_shard_range_parts_add_up_to_the_full_build(tmp_path, videos):
    assert parse_shard_range("1/3") == (1, 3)
    with pytest.raises(ValueError, match="shard_range"):
        parse_shard_range("3/3")
    full = _manifest(tmp_path / "full")
    build_shards(_cfg(), full, videos, workers=1)
    parts = _manifest(tmp_path / "parts")
    assert build_shards(_cfg(), parts, videos, workers=1, shard_range="1/2") == {}
    assert not (parts / "shards" / "index.parquet").exists()  # not complete yet
    built = sorted(p.name for p in (parts / "shards").glob("*.tar"))
    assert built == ["train-000001.tar", "train-000003.tar", "val-000000.tar"]
    build_shards(_cfg(), parts, videos, workers=1, shard_range="0/2")
    assert _files(parts) == _files(full)


def test_cli_build_from_hdvila_metadata_through_shards(tmp_path, videos):
    from lfvila.cli import main

    meta = tmp_path / "meta.jsonl"
    clips = [{"clip_id": f"colour.{n}.mp4", "span": [f"00:00:{2 * n - 2:02d}.250", f"00:00:{2 * n:02d}.100"],
              "text": f"second {2 * n - 2} to {2 * n}"} for n in range(1, 6)]
    meta.write_text(json.dumps({"video_id": "colour", "clip": clips}) + "\n")
    out = tmp_path / "out"
    assert main(["build", "--out", str(out), "--source", f"hdvila:{meta}", "--videos", str(videos),
                 "--workers", "1"]) == 0
    corpus = json.loads((out / "corpus.json").read_text())
    assert corpus["video"]["totals"]["samples_written"] == 1 and corpus["video"]["clips_check_ok"]
    assert "counts" in corpus  # the manifest stage's section is kept
    (sample,) = [s for tar in (out / "shards").glob("*.tar") for s in iter_samples(tar)]
    assert [s["text"] for s in sample["meta"]["sentences"]] == [c["text"] for c in clips]
    assert sample["meta"]["sentences"][0]["start"] == 0.25


def test_manifest_keys_must_be_unique_and_dot_free(tmp_path, videos):
    rows = _rows(2)
    write_longform(tmp_path / "a" / "longform.parquet", rows + [dict(rows[0])])
    with pytest.raises(ValueError, match="occurs twice"):
        build_shards(_cfg(), tmp_path / "a", videos, workers=1)
    write_longform(tmp_path / "b" / "longform.parquet", [dict(rows[0], key="has.dot")])
    with pytest.raises(ValueError, match="not a WebDataset key"):
        build_shards(_cfg(), tmp_path / "b", videos, workers=1)


def test_a_failing_shard_task_does_not_stop_the_others(tmp_path, videos):
    out = _manifest(tmp_path)
    (out / "shards").mkdir()
    # A directory where train-000001.tar must go: that task cannot rename its tar into place.
    (out / "shards" / "train-000001.tar").mkdir()
    with pytest.raises(RuntimeError, match=r"1 shard task\(s\) failed.*train-000001"):
        build_shards(_cfg(), out, videos, workers=2)
    assert len(list((out / "shards").glob("*.stats.json"))) == 5
    (out / "shards" / "train-000001.tar").rmdir()
    summary = build_shards(_cfg(), out, videos, workers=1)
    assert summary["totals"]["samples_written"] == 9
