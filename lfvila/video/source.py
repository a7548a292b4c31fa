"""Find a long-form video's source files under the videos directory.

Three layouts are accepted, checked in this order:
- a full video ``DIR/<video_id>.<ext>`` (any extension; sidecar files such as ``.json`` or ``.vtt``
  written by downloaders are skipped);
- downloaded sections ``DIR/<video_id>/sections.json`` (``lfvila download`` with
  ``download.sections: runs``): ``{"video_id", "sections": [{"file", "start", "end", "offset"}]}``,
  the section files in the same folder; ``offset`` is the source-video time of a section file's
  time 0 (measured after cutting), ``[offset, end)`` the source time it covers. A long-form video is
  decoded from the one section that covers its whole span, with frame times shifted back to source
  seconds;
- HD-VILA's pre-cut clips ``DIR/<video_id>/<clip_id>``: the long-form video is the concatenation of
  its clips, a clip file's time 0 being its span's start in the source video.
"""
from __future__ import annotations

import glob
import json
from dataclasses import dataclass
from pathlib import Path

# Files a downloader leaves next to a video; never decoded.
SIDECAR_SUFFIXES = {".json", ".txt", ".vtt", ".srt", ".part", ".ytdl", ".jpg", ".jpeg", ".png", ".webp",
                    ".description", ".tmp", ".md5", ".sha256"}
# Preference when several video files share the stem (deterministic choice).
PREFERRED_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi")


SECTIONS_FILE = "sections.json"


@dataclass(frozen=True)
class Section:
    """A downloaded time range of the source video: ``path``'s time t is source time ``offset + t``."""

    path: Path
    start: float  # requested source-time range
    end: float
    offset: float  # measured source time of the file's time 0 (<= start: a stream copy starts at a keyframe)


@dataclass(frozen=True)
class VideoSource:
    """One of: ``full`` (one file whose time t is source time ``offset + t``), ``sections`` (downloaded
    ranges, see ``for_span``) or ``clips`` (clip_id -> file, None where the clip file is missing)."""

    full: Path | None = None
    clips: dict[str, Path | None] | None = None
    sections: tuple[Section, ...] | None = None
    offset: float = 0.0

    def for_span(self, start: float, end: float) -> VideoSource | None:
        """The source to decode source times ``[start, end]`` from: self unless this is a sections
        layout, then the first section covering the whole span as a shifted full video (None if none)."""
        if self.sections is None:
            return self
        for section in self.sections:
            if section.offset <= start and end <= section.end:
                return VideoSource(full=section.path, offset=section.offset)
        return None


def _suffix_rank(path: Path) -> tuple[int, str]:
    suffix = path.suffix.lower()
    rank = PREFERRED_SUFFIXES.index(suffix) if suffix in PREFERRED_SUFFIXES else len(PREFERRED_SUFFIXES)
    return rank, path.name


def find_source(videos_dir: Path, video_id: str, clip_ids: list[str]) -> VideoSource | None:
    """Locate ``video_id``'s full video or its clip files; None when neither exists."""
    # Escape the whole path, not just the id: a directory named like a pattern (``dir[1]``) is a directory.
    candidates = [Path(p) for p in glob.glob(glob.escape(str(videos_dir / video_id)) + ".*")]
    candidates = [p for p in candidates if p.is_file() or p.is_fifo()]
    candidates = [p for p in candidates if p.suffix.lower() not in SIDECAR_SUFFIXES and p.stem == video_id]
    if candidates:
        return VideoSource(full=min(candidates, key=_suffix_rank))
    clip_dir = videos_dir / video_id
    if (clip_dir / SECTIONS_FILE).is_file():
        return VideoSource(sections=read_sections(clip_dir))
    if clip_dir.is_dir():
        clips = {cid: (clip_dir / cid if (clip_dir / cid).exists() else None) for cid in clip_ids}
        if any(p is not None for p in clips.values()):
            return VideoSource(clips=clips)
    return None


def read_sections(video_dir: Path) -> tuple[Section, ...]:
    """The sections listed in ``video_dir/sections.json`` whose file exists, in start order.

    Raises ValueError on a malformed file or an entry naming a path outside ``video_dir``."""
    doc = json.loads((video_dir / SECTIONS_FILE).read_text(encoding="utf-8"))
    out = []
    for entry in doc["sections"]:
        name = entry["file"]
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise ValueError(f"{video_dir / SECTIONS_FILE}: section file {name!r} is not a plain file name")
        start, end, offset = float(entry["start"]), float(entry["end"]), float(entry["offset"])
        if not offset <= start < end:
            raise ValueError(f"{video_dir / SECTIONS_FILE}: section {name!r} needs offset <= start < end")
        if (video_dir / name).is_file():
            out.append(Section(video_dir / name, start, end, offset))
    return tuple(sorted(out, key=lambda s: (s.start, s.path.name)))
