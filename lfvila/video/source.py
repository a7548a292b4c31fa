"""Find a long-form video's source files under the videos directory.

Two layouts are accepted, checked in this order:
- a full video ``DIR/<video_id>.<ext>`` (any extension; sidecar files such as ``.json`` or ``.vtt``
  written by downloaders are skipped);
- HD-VILA's pre-cut clips ``DIR/<video_id>/<clip_id>``: the long-form video is the concatenation of
  its clips, a clip file's time 0 being its span's start in the source video.
"""
from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

# Files a downloader leaves next to a video; never decoded.
SIDECAR_SUFFIXES = {".json", ".txt", ".vtt", ".srt", ".part", ".ytdl", ".jpg", ".jpeg", ".png", ".webp",
                    ".description", ".tmp", ".md5", ".sha256"}
# Preference when several video files share the stem (deterministic choice).
PREFERRED_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi")


@dataclass(frozen=True)
class VideoSource:
    """Either ``full`` (one file) or ``clips`` (clip_id -> file, None where the clip file is missing)."""

    full: Path | None = None
    clips: dict[str, Path | None] | None = None


def _suffix_rank(path: Path) -> tuple[int, str]:
    suffix = path.suffix.lower()
    rank = PREFERRED_SUFFIXES.index(suffix) if suffix in PREFERRED_SUFFIXES else len(PREFERRED_SUFFIXES)
    return rank, path.name


def find_source(videos_dir: Path, video_id: str, clip_ids: list[str]) -> VideoSource | None:
    """Locate ``video_id``'s full video or its clip files; None when neither exists."""
    candidates = [Path(p) for p in glob.glob(str(videos_dir / glob.escape(video_id)) + ".*")]
    candidates = [p for p in candidates if p.is_file() or p.is_fifo()]
    candidates = [p for p in candidates if p.suffix.lower() not in SIDECAR_SUFFIXES and p.stem == video_id]
    if candidates:
        return VideoSource(full=min(candidates, key=_suffix_rank))
    clip_dir = videos_dir / video_id
    if clip_dir.is_dir():
        clips = {cid: (clip_dir / cid if (clip_dir / cid).exists() else None) for cid in clip_ids}
        if any(p is not None for p in clips.values()):
            return VideoSource(clips=clips)
    return None
