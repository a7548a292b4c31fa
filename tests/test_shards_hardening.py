"""Shard stage under hostile names and broken environments (issue 12, "Shard stage").

File names that ffmpeg would read as URLs or options, directories named like glob patterns, disk full
while writing a shard, a SIGKILLed driver, absurd sample aspect ratios. Real videos from
../shared/data where decoding matters.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from lfvila.build_config import BuildConfig
from lfvila.config import load_config
from lfvila.shards.build import build_shards
from lfvila.shards.fixtures import make_colour_video, sentences_every, write_longform
from lfvila.shards.read import iter_samples
from lfvila.video.decode import SegmentDecoder

REPO = Path(__file__).resolve().parents[1]
REAL_MP4 = "videos/rendered/forensics-samples-files__movie-hello.mp4"  # 1280x720 H.264: 426x240 frames


def _cfg(*overrides: str) -> BuildConfig:
    return load_config(BuildConfig, None, ["shards.samples_per_shard=2", *overrides])


def _samples(out: Path) -> list[dict]:
    return [s for tar in sorted((out / "shards").glob("*.tar")) for s in iter_samples(tar)]


def _luma(path: Path) -> list[bytes]:
    decoder = SegmentDecoder(path, 1.0, 3, 3.0, 240, None, 1, time.monotonic() + 120)
    frames = [frame.y.tobytes() for _, frame in decoder]
    assert not decoder.result.failed and not decoder.result.error_lines
    return frames


@pytest.mark.parametrize("name", ["concat:x.mp4", "-i.mp4", "a|b.mp4", "file:x.mp4"])
def test_a_file_name_is_never_read_as_a_url_or_an_option(tmp_path, monkeypatch, shared_data, name):
    """Relative names in the working directory (``--videos .``) decode the file itself, nothing else."""
    monkeypatch.chdir(tmp_path)
    make_colour_video(tmp_path / "x.mp4", 3)  # what ``concat:x.mp4`` or ``file:x.mp4`` would decode as a URL
    shutil.copy(shared_data / REAL_MP4, tmp_path / name)
    shutil.copy(shared_data / REAL_MP4, tmp_path / "plain.mp4")
    plain = _luma(Path("plain.mp4"))
    assert len(plain) == 3 and len(plain[0]) == 426 * 240
    assert _luma(Path(name)) == plain


def test_a_build_from_the_working_directory_reads_each_video_by_its_own_name(tmp_path, monkeypatch, shared_data):
    monkeypatch.chdir(tmp_path)
    make_colour_video(tmp_path / "x.mp4", 6)
    ids = ["concat:x", "-i", "a|b", "plain"]
    for video_id in ids:
        shutil.copy(shared_data / REAL_MP4, tmp_path / f"{video_id}.mp4")
    rows = [{"key": f"k{i}", "video_id": v, "sentences": sentences_every(1.0, 4.0, 1.0, v)} for i, v in enumerate(ids)]
    write_longform(tmp_path / "out" / "longform.parquet", rows)
    summary = build_shards(_cfg(), Path("out"), Path("."), workers=1)
    assert summary["totals"]["samples_written"] == 4, summary["totals"]["rejected_by_reason"]
    samples = _samples(tmp_path / "out")
    assert {s["meta"]["width"] for s in samples} == {426}
    assert len({tuple(s["frames"]) for s in samples}) == 1  # all four are the same real video's frames


def test_a_videos_directory_named_like_a_glob_pattern_is_found(tmp_path):
    videos = tmp_path / "dir[1]"
    videos.mkdir()
    make_colour_video(videos / "colour.mp4", 4)
    (tmp_path / "dir1").mkdir()  # what the unescaped pattern dir[1] would match instead
    write_longform(tmp_path / "out" / "longform.parquet",
                   [{"key": "k", "video_id": "colour", "split": "tr[a]in", "sentences": sentences_every(0, 3, 1, "colour")}])
    summary = build_shards(_cfg(), tmp_path / "out", videos, workers=1)
    assert summary["totals"]["samples_written"] == 1, summary["totals"]["rejected_by_reason"]
    # A split named like a pattern: the stale-temporary cleanup matches its own name literally.
    stale = tmp_path / "out" / "shards" / ".tr[a]in-000000.tar.0123.tmp"
    stale.write_bytes(b"left by a killed attempt")
    (tmp_path / "out" / "shards" / "tr[a]in-000000.stats.json").unlink()
    build_shards(_cfg(), tmp_path / "out", videos, workers=1)
    assert not stale.exists()


def test_download_tools_read_local_files_by_their_own_name(tmp_path, monkeypatch, shared_data):
    """The same for the download stage's ffmpeg cut and PyAV probes of a local file."""
    from lfvila.download.fetch import probe_video
    from lfvila.download.sections import cut_section

    monkeypatch.chdir(tmp_path)
    make_colour_video(tmp_path / "x.mp4", 3)
    shutil.copy(shared_data / REAL_MP4, tmp_path / "concat:x.mp4")
    assert probe_video(Path("concat:x.mp4"))[1].endswith("1280x720")
    entry = cut_section("concat:x.mp4", 2.0, 4.0, Path("cut"), "000.mp4")
    assert probe_video(Path("cut") / entry["file"])[1].endswith("1280x720")
