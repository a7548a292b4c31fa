"""Every real video in ../shared/data/videos is written or rejected with a clear reason; every bad/ one is rejected."""
from __future__ import annotations

import os
from pathlib import Path

import av
import pyarrow.parquet as pq
import simplejpeg

from lfvila.build_config import BuildConfig
from lfvila.config import load_config
from lfvila.shards.build import build_shards
from lfvila.shards.fixtures import sentences_every, write_longform
from lfvila.shards.read import iter_samples

SAMPLE_REASONS = {"no_video_stream", "unreadable", "decode_error", "span_past_end", "too_little_left"}


def _duration(path: Path) -> float:
    """Container duration by PyAV (an independent reader); 5 s when it cannot tell."""
    try:
        with av.open(str(path)) as container:
            return (container.duration or 0) / 1e6 or 5.0
    except av.FFmpegError:
        return 5.0


def test_every_shared_video_is_written_or_rejected(tmp_path, shared_data):
    videos = tmp_path / "videos"
    videos.mkdir()
    rows, kind = [], {}
    for path in sorted((shared_data / "videos").glob("*/*")):
        video_id = f"{path.parent.name}__{path.name}".replace(".", "_").replace("+", "p")
        os.symlink(path, videos / f"{video_id}{path.suffix}")
        kind[video_id] = path.parent.name
        d = _duration(path)
        # 4 sentences from 10 % into the video (a real seek), at most 24 s long to keep the test short
        start = 0.1 * d
        length = min(0.8 * d, 24.0)
        rows.append({"key": video_id, "video_id": video_id, "sentences": sentences_every(start, start + length, length / 4, video_id)})
    assert len(rows) == 26
    out = tmp_path / "out"
    write_longform(out / "longform.parquet", rows)
    cfg = load_config(BuildConfig, None, ["shards.samples_per_shard=13", "video.timeout_s=60"])
    summary = build_shards(cfg, out, videos, workers=2)

    status = {r["key"]: r for r in pq.read_table(out / "shards" / "status.parquet").to_pylist()}
    assert set(status) == set(kind)
    for key, row in status.items():
        if kind[key] == "bad":
            assert row["status"] == "rejected" and row["reason"] in SAMPLE_REASONS, row
        else:
            assert row["status"] == "written", row
    assert summary["clips_check_ok"]
    assert summary["totals"]["samples_written"] == 22

    written = {s["key"]: s for tar in sorted((out / "shards").glob("*.tar")) for s in iter_samples(tar)}
    assert set(written) == {k for k, r in status.items() if r["status"] == "written"}
    for key, sample in written.items():
        meta = sample["meta"]
        assert len(meta["frame_times"]) == len(sample["frames"]) == status[key]["n_frames"] > 0
        assert meta["height"] == 240 and meta["width"] % 2 == 0
        assert simplejpeg.decode_jpeg(sample["frames"][0]).shape == (240, meta["width"], 3)
        assert all(0 <= s["frame_start"] < s["frame_end"] <= len(meta["frame_times"]) for s in meta["sentences"])
