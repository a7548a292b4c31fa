"""Frame selection by time: videos whose content tells the time (one colour per second), made by ffmpeg."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import simplejpeg

from lfvila.build_config import BuildConfig
from lfvila.config import load_config
from lfvila.shards.build import build_shards
from lfvila.shards.fixtures import PALETTE, cut_clip, make_colour_video, sentences_every, write_longform
from lfvila.shards.read import iter_samples
from lfvila.video.decode import ffmpeg_exe, slot_at_or_after, slot_time

FPS = 3.0


@pytest.fixture(scope="module")
def colour_video(tmp_path_factory) -> Path:
    """12 s, 25 fps, second k shows PALETTE[k % 8]."""
    d = tmp_path_factory.mktemp("colour")
    return make_colour_video(d / "colour.mp4", 12)


def _mean_colour(jpg: bytes) -> np.ndarray:
    return simplejpeg.decode_jpeg(jpg).reshape(-1, 3).mean(0)


def _expected_colour(t: float) -> np.ndarray:
    """Colour on screen just before ``t``: a slot shows the last frame that started strictly before its time."""
    return np.array(PALETTE[(int(np.ceil(t - 1e-9)) - 1) % len(PALETTE)], dtype=float)


def _build(tmp: Path, videos: Path, rows: list[dict], overrides: list[str] = ()) -> tuple[dict, list[dict]]:
    write_longform(tmp / "longform.parquet", rows)
    cfg = load_config(BuildConfig, None, list(overrides))
    summary = build_shards(cfg, tmp, videos, workers=1)
    samples = [s for tar in sorted((tmp / "shards").glob("*.tar")) for s in iter_samples(tar)]
    return summary, samples


def _check_sample_against_clock(sample: dict, sentences: list[dict]) -> None:
    """Every stored frame shows its recorded time's colour; sentence frame ranges are exact."""
    meta = sample["meta"]
    times = meta["frame_times"]
    assert len(times) == len(sample["frames"]) and times == sorted(times)
    for t, jpg in zip(times, sample["frames"]):
        assert np.abs(_mean_colour(jpg) - _expected_colour(t)).max() < 30, f"frame at {t} s shows the wrong second"
    # Frame times are the grid's slot midpoints inside some sentence span, computed independently here.
    start = min(s["start"] for s in sentences)
    grid = [round(start + (n + 0.5) / FPS, 6) for n in range(int((meta["end"] - start) * FPS) + 2)]
    expected_times = [t for t in grid if any(s["start"] <= t < s["end"] for s in sentences)]
    assert times == expected_times
    for s in meta["sentences"]:
        inside = [i for i, t in enumerate(times) if s["start"] <= t < s["end"]]
        assert (s["frame_start"], s["frame_end"]) == (inside[0], inside[-1] + 1)


def test_slot_helpers_follow_the_documented_grid():
    assert slot_time(0, 10.0, 3.0) == pytest.approx(10 + 1 / 6)
    assert slot_at_or_after(10.0, 10.0, 3.0) == 0
    assert slot_at_or_after(10.0 + 1 / 6, 10.0, 3.0) == 0  # a slot midpoint belongs to the span starting there
    assert slot_at_or_after(10.0 + 1 / 6 + 0.001, 10.0, 3.0) == 1
    assert slot_at_or_after(5.0, 10.0, 3.0) == 0


def test_full_video_frames_show_their_recorded_times(tmp_path, colour_video):
    sentences = sentences_every(1.25, 9.6, 1.7, "colour") + [
        # an overlapping sentence and one after a gap: frames of the gap are not stored
        {"clip_id": "colour.99.mp4", "start": 2.0, "end": 4.0, "text": "overlap"},
        {"clip_id": "colour.100.mp4", "start": 10.4, "end": 11.5, "text": "after a gap"},
    ]
    sentences.sort(key=lambda s: s["start"])
    _, samples = _build(tmp_path, colour_video.parent, [{"key": "c0", "video_id": "colour", "sentences": sentences}])
    (sample,) = samples
    _check_sample_against_clock(sample, sentences)
    meta = sample["meta"]
    assert meta["fps"] == FPS and meta["height"] == 240 and meta["width"] == 320  # 160x120 keeps 4:3
    assert [s["clip_id"] for s in meta["sentences"]] == [s["clip_id"] for s in sentences]
    assert not any(9.6 <= t < 10.4 for t in meta["frame_times"])


def test_frame_on_screen_before_the_span_start_is_used(tmp_path):
    """A 1 fps source: at 3.67 s the frame shown is the one from 3.0 s, which starts before the span;
    at 4.0 s exactly (a frame starts there) the slot still shows the 3.0 s frame (strictly before)."""
    videos = tmp_path / "videos"
    videos.mkdir()
    make_colour_video(videos / "slow.mp4", 10, fps=1)
    sentences = sentences_every(3.5, 8.5, 1.25, "slow")
    _, (sample,) = _build(tmp_path, videos, [{"key": "slow", "video_id": "slow", "sentences": sentences}])
    assert sample["meta"]["frame_times"][0] == pytest.approx(3.5 + 0.5 / FPS)
    _check_sample_against_clock(sample, sentences)


def test_precut_clips_give_the_same_frames_as_the_full_video(tmp_path, colour_video):
    sentences = sentences_every(0.9, 8.0, 1.6, "vid")  # spans not on slot boundaries
    clip_dir = tmp_path / "videos" / "vid"
    clip_dir.mkdir(parents=True)
    for s in sentences:
        cut_clip(colour_video, clip_dir / s["clip_id"], s["start"], s["end"])
    _, samples = _build(tmp_path / "clips", tmp_path / "videos", [{"key": "k", "video_id": "vid", "sentences": sentences}])
    (sample,) = samples
    _check_sample_against_clock(sample, sentences)
    os.symlink(colour_video, tmp_path / "videos" / "vid.mp4")  # now the full video exists and wins
    _, (full,) = _build(tmp_path / "full", tmp_path / "videos", [{"key": "k", "video_id": "vid", "sentences": sentences}])
    assert full["meta"]["frame_times"] == sample["meta"]["frame_times"]
    assert full["meta"]["sentences"] == sample["meta"]["sentences"]


def test_missing_clip_files_drop_their_sentences(tmp_path, colour_video):
    sentences = sentences_every(0.0, 10.0, 2.0, "vid")
    clip_dir = tmp_path / "videos" / "vid"
    clip_dir.mkdir(parents=True)
    for s in sentences[:4]:
        cut_clip(colour_video, clip_dir / s["clip_id"], s["start"], s["end"])
    summary, (sample,) = _build(tmp_path, tmp_path / "videos", [{"key": "k", "video_id": "vid", "sentences": sentences}])
    assert len(sample["meta"]["sentences"]) == 4
    assert summary["totals"]["clips_rejected_by_reason"] == {"clip_file_not_found": 1}
    assert summary["clips_check_ok"]


def test_span_past_end_is_trimmed_or_rejected(tmp_path, colour_video):
    rows = [
        # 4 sentences, the last runs 2 s past the 12 s video: kept, clipped to the decoded end
        {"key": "trim", "video_id": "colour", "sentences": sentences_every(4.0, 14.0, 2.5, "colour")},
        # only 2 of 4 sentences lie inside the video: no longer a long-form video
        {"key": "toolittle", "video_id": "colour", "sentences": sentences_every(8.0, 16.0, 2.0, "colour")},
        {"key": "beyond", "video_id": "colour", "sentences": sentences_every(20.0, 28.0, 2.0, "colour")},
    ]
    summary, samples = _build(tmp_path, colour_video.parent, rows)
    (sample,) = samples
    assert sample["key"] == "trim"
    last = sample["meta"]["sentences"][-1]
    assert 11.9 <= last["end"] <= 12.01 and max(sample["meta"]["frame_times"]) < 12.0
    _check_sample_against_clock(sample, sentences_every(4.0, 12.0, 2.5, "colour"))
    status = {r["key"]: r for r in pq.read_table(tmp_path / "shards" / "status.parquet").to_pylist()}
    assert status["trim"]["trimmed"] and status["trim"]["status"] == "written"
    assert status["toolittle"]["reason"] == "too_little_left"
    assert status["beyond"]["reason"] == "span_past_end"
    assert summary["clips_check_ok"]


def test_rotation_and_sample_aspect_ratio_are_honoured(tmp_path, colour_video):
    videos = tmp_path / "videos"
    videos.mkdir()
    ff = ffmpeg_exe()
    subprocess.run([ff, "-v", "error", "-display_rotation", "90", "-i", str(colour_video), "-c", "copy",
                    str(videos / "rot.mp4")], check=True)
    subprocess.run([ff, "-v", "error", "-i", str(colour_video), "-vf", "setsar=2", "-c:v", "libx264", "-preset",
                    "ultrafast", str(videos / "sar.mp4")], check=True)
    rows = [{"key": k, "video_id": k, "sentences": sentences_every(0.0, 4.0, 1.0, k)} for k in ("rot", "sar")]
    _, samples = _build(tmp_path, videos, rows)
    size = {s["key"]: (s["meta"]["width"], s["meta"]["height"]) for s in samples}
    assert size["rot"] == (180, 240)  # 160x120 turned a quarter: 120x160 -> 180x240
    assert size["sar"] == (640, 240)  # 160x120 with 2:1 pixels displays as 320x120
    for s in samples:
        assert simplejpeg.decode_jpeg(s["frames"][0]).shape == (240, size[s["key"]][0], 3)


def test_hanging_decoder_is_killed_and_the_build_goes_on(tmp_path, colour_video):
    videos = tmp_path / "videos"
    videos.mkdir()
    os.mkfifo(videos / "hang.mp4")  # ffmpeg blocks opening a pipe nobody writes
    os.symlink(colour_video, videos / "ok.mp4")
    # Deadlines: 2 s + 3 s per span second, i.e. 3.2 s for the short hanging span and 14 s for the
    # good one (generous on a loaded machine).
    rows = [{"key": "hang", "video_id": "hang", "sentences": sentences_every(0.0, 0.4, 0.1, "hang")},
            {"key": "ok", "video_id": "ok", "sentences": sentences_every(0.0, 4.0, 1.0, "ok")}]
    _, samples = _build(tmp_path, videos, rows, ["video.timeout_s=2", "video.timeout_per_video_s=3"])
    assert [s["key"] for s in samples] == ["ok"]
    status = {r["key"]: r for r in pq.read_table(tmp_path / "shards" / "status.parquet").to_pylist()}
    assert (status["hang"]["status"], status["hang"]["reason"]) == ("failed", "decode_timeout")
