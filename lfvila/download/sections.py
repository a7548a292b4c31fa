"""Download only the time ranges a corpus needs (``download.sections: runs``).

A video's long-form runs become merged time ranges with a margin (``runs_to_sections``); each range
is fetched by ffmpeg from a local path or an http(s) URL (``cut_section``: ``-ss`` before ``-i``
seeks, over HTTP with range requests, so only the range's bytes and the index are transferred) and
listed in ``VIDEOS/<video_id>/sections.json`` (``write_sections_json``), the layout the shard stage
reads (lfvila/video/source.py).

Stream copy, not re-encoding: a section keeps the source's packets bit for bit (no quality loss, no
CPU beyond demuxing, decoded frames equal the full video's), at the price of starting at the
keyframe at or before ``start``. That start is measured, not assumed: the section's first packet is
found among the source's packets after the same seek, by its bytes, and its source time is the
section's ``offset``. The margin of ``runs_to_sections`` keeps the frame on screen at a run's start
inside the section either way.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from lfvila.atomic import AtomicPath, atomic_write_text
from lfvila.video.decode import file_url
from lfvila.video.source import SECTIONS_FILE

# Containers a section may be written as (by the name's suffix).
_FORMATS = {".mp4": "mp4", ".mkv": "matroska", ".webm": "webm", ".mov": "mov"}
# How many source packets after the seek point are compared with the section's first one.
_MATCH_PACKETS = 2000


class SectionError(Exception):
    """A section could not be cut: ``reason`` is ``cut_failed`` (ffmpeg failed), ``no_video_stream``
    or ``offset_unmeasured`` (the section's first packet was not found in the source)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def _media_url(input: str | Path) -> str:
    """An http(s) URL as it is; anything else is a local path, named as a ``file:`` URL (see ``file_url``)."""
    text = str(input)
    return text if text.lower().startswith(("http://", "https://")) else file_url(text)


def runs_to_sections(longform_rows, margin_s: float, merge_gap_s: float) -> list[tuple[float, float]]:
    """One video's long-form runs (dicts with ``start``/``end`` in source seconds) -> the time ranges
    to download: each run widened by ``margin_s`` on both sides (clamped at 0), ranges that overlap or
    lie at most ``merge_gap_s`` apart merged, in time order."""
    if margin_s < 0 or merge_gap_s < 0:
        raise ValueError("margin_s and merge_gap_s must be >= 0")
    spans = sorted((max(0.0, float(r["start"]) - margin_s), float(r["end"]) + margin_s) for r in longform_rows)
    merged: list[tuple[float, float]] = []
    for lo, hi in spans:
        if merged and lo - merged[-1][1] <= merge_gap_s:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def http_header_lines(headers: dict[str, str] | None) -> str:
    """``headers`` as ffmpeg's ``-headers`` value (also PyAV's ``headers`` option): CRLF-ended lines."""
    lines = []
    for key, value in (headers or {}).items():
        if any(c in f"{key}{value}" for c in "\r\n"):
            raise ValueError(f"HTTP header {key!r} holds a line break")
        lines.append(f"{key}: {value}\r\n")
    return "".join(lines)


def cut_section(input: str | Path, start: float, end: float, dest_dir: Path, name: str,
                timeout_s: float = 600.0, headers: dict[str, str] | None = None) -> dict:
    """Fetch source times ``[start, end)`` of ``input`` (local path or http URL) into ``dest_dir/name``
    by stream copy (video only: the shard stage reads no audio) and return its sections.json entry
    ``{"file", "start", "end", "offset"}``. Written under a temporary name and renamed when complete.
    ``headers`` are sent with every HTTP request (ffmpeg's and PyAV's)."""
    from lfvila.video.decode import ffmpeg_exe

    source = _media_url(input)
    if Path(name).name != name or Path(name).suffix.lower() not in _FORMATS:
        raise ValueError(f"section name {name!r} must be a plain file name ending in one of {sorted(_FORMATS)}")
    if not 0 <= start < end:
        raise ValueError(f"need 0 <= start < end, got {start}, {end}")
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / name
    section = AtomicPath(final)
    tmp = section.tmp
    header_lines = http_header_lines(headers)
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
           *(["-headers", header_lines] if header_lines else []),
           "-ss", f"{start:.6f}", "-i", source, "-t", f"{end - start:.6f}",
           "-map", "0:v:0", "-c", "copy", "-avoid_negative_ts", "make_zero",
           "-f", _FORMATS[final.suffix.lower()], file_url(tmp)]
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s)
        if proc.returncode != 0:
            raise SectionError("cut_failed", proc.stderr.decode(errors="replace").strip()[-500:])
        offset = _measure_offset(source, start, tmp, {"headers": header_lines} if header_lines else None)
        section.commit()
    except subprocess.TimeoutExpired as exc:
        raise SectionError("cut_failed", f"ffmpeg ran past {timeout_s} s") from exc
    finally:
        section.discard()
    return {"file": name, "start": round(start, 6), "end": round(end, 6), "offset": round(offset, 6)}


def _first_video_packet(path: str):
    """(file time of the first video packet, its bytes) of a container."""
    import av

    with av.open(path) as container:
        if not container.streams.video:
            raise SectionError("no_video_stream", f"{path} has no video stream")
        stream = container.streams.video[0]
        t0 = (container.start_time or 0) / 1e6
        for packet in container.demux(stream):
            if packet.pts is not None and packet.size:
                return float(packet.pts * stream.time_base) - t0, bytes(packet)
    raise SectionError("no_video_stream", f"{path} has no video packet")


def _measure_offset(input: str, start: float, section: Path, options: dict | None = None) -> float:
    """Source time of ``section``'s time 0: its first packet is looked up, by bytes, among the source's
    packets from the keyframe at or before ``start`` (what ffmpeg's ``-ss`` seek picked)."""
    import av

    section_time, first = _first_video_packet(file_url(section))
    with av.open(input, options=options or {}) as container:
        if not container.streams.video:
            raise SectionError("no_video_stream", f"{input} has no video stream")
        stream = container.streams.video[0]
        t0 = (container.start_time or 0) / 1e6
        container.seek(int((start + t0) / stream.time_base), stream=stream, backward=True, any_frame=False)
        for n, packet in enumerate(container.demux(stream)):
            if n >= _MATCH_PACKETS:
                break
            if packet.pts is not None and packet.size == len(first) and bytes(packet) == first:
                return float(packet.pts * stream.time_base) - t0 - section_time
    raise SectionError("offset_unmeasured", f"first packet of {section.name} not found in {input} after {start} s")


def write_sections_json(video_dir: Path, video_id: str, entries: list[dict]) -> Path:
    """Write ``video_dir/sections.json`` (entries in start order) atomically; returns its path."""
    video_dir = Path(video_dir)
    doc = {"video_id": video_id, "sections": sorted(entries, key=lambda e: (e["start"], e["file"]))}
    path = video_dir / SECTIONS_FILE
    atomic_write_text(path, json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return path
