"""Merge a video's clips into long-form videos: runs of consecutive clips, split, keyed, assigned a split.

LF-VILA's rule (``hdvila``): consecutive means adjacent clip numbers n, n+1. Other sources: the
next clip (in time order) starts at most ``max_gap_s`` after the previous one ends and overlaps it
by at most ``max_overlap_s``. Runs of at least ``min_clips`` become long-form videos; a run longer
than ``max_clips`` clips or ``max_duration_s`` seconds is cut greedily into consecutive pieces, and
a piece (typically the tail) with fewer than ``min_clips`` clips is left out. Every clip left out
is reported with a reason (``run_too_short`` / ``piece_too_short``) so it can be written to the
rejects table: each kept clip ends in exactly one long-form video or one merge reject.
"""
from __future__ import annotations

import hashlib
import operator
import re
from typing import NamedTuple

from lfvila.manifest.config import ManifestConfig
from lfvila.manifest.records import PIECE_TOO_SHORT, RUN_TOO_SHORT, Clip

_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_SAFE_ID = re.compile(r"[A-Za-z0-9_-]*").fullmatch
_MAX_KEY_ID = 80  # escaped video ids longer than this are shortened with a hash


def follows(prev_number, number):
    """LF-VILA's adjacency of HD-VILA clips: clip number ``number`` comes right after ``prev_number``.

    Plain arithmetic, so the same definition serves ints (``runs_of``) and numpy arrays of numbers
    (the columnar fast path, elementwise).
    """
    return number == prev_number + 1


def runs_of(clips: list[Clip], by_number: bool, cfg: ManifestConfig) -> list[list[Clip]]:
    """Runs of consecutive clips, in time order (clip number order when ``by_number``)."""
    if not clips:
        return []
    if by_number:
        ordered = sorted(clips, key=operator.attrgetter("clip_index"))
    else:
        ordered = sorted(clips, key=lambda c: (c.start, c.end, c.clip_index))
    max_gap, max_overlap = cfg.max_gap_s, cfg.max_overlap_s
    runs = [[ordered[0]]]
    for prev, clip in zip(ordered, ordered[1:]):
        if by_number:
            consecutive = follows(prev.clip_index, clip.clip_index)
        else:
            gap = clip.start - prev.end  # negative when the clips overlap
            consecutive = (max_gap is None or gap <= max_gap) and (max_overlap is None or -gap <= max_overlap)
        if consecutive:
            runs[-1].append(clip)
        else:
            runs.append([clip])
    return runs


def pieces_of(run: list[Clip], cfg: ManifestConfig) -> list[list[Clip]]:
    """Cut a run greedily by max_clips / max_duration_s (all pieces, short ones included)."""
    max_clips, max_duration = cfg.max_clips, cfg.max_duration_s
    if max_clips is None and max_duration is None:
        return [run]
    pieces: list[list[Clip]] = []
    current: list[Clip] = []
    for clip in run:
        if current and ((max_clips is not None and len(current) >= max_clips)
                        or (max_duration is not None and clip.end - current[0].start > max_duration)):
            pieces.append(current)
            current = []
        current.append(clip)
    pieces.append(current)
    return pieces


def run_too_short_detail(run_length: int, min_clips: int) -> str:
    return f"run of {run_length} consecutive clips, min_clips {min_clips}"


class LeftOut(NamedTuple):
    """Consecutive clips of a video that are in no long-form video, and why."""

    clips: list[Clip]
    reason: str  # RUN_TOO_SHORT or PIECE_TOO_SHORT
    detail: str


def merge_video(clips: list[Clip], by_number: bool, cfg: ManifestConfig) -> tuple[list[list[Clip]], list[LeftOut]]:
    """One video's long-form videos (lists of clips in order) and the clips left out of all of them."""
    videos: list[list[Clip]] = []
    left_out: list[LeftOut] = []
    min_clips = cfg.min_clips
    for run in runs_of(clips, by_number, cfg):
        if len(run) < min_clips:
            left_out.append(LeftOut(run, RUN_TOO_SHORT, run_too_short_detail(len(run), min_clips)))
            continue
        for piece in pieces_of(run, cfg):
            if len(piece) >= min_clips:
                videos.append(piece)
            else:
                left_out.append(LeftOut(piece, PIECE_TOO_SHORT,
                                        f"piece of {len(piece)} clips left by cutting a run of {len(run)} clips "
                                        f"(max_clips {cfg.max_clips}, max_duration_s {cfg.max_duration_s}), "
                                        f"min_clips {min_clips}"))
    return videos, left_out


def escape_id(video_id: str) -> str:
    """Injective escape of an id into ``[A-Za-z0-9_-]``: any other character becomes ``%XX`` (UTF-8 hex)."""
    if _SAFE_ID(video_id):
        return video_id
    return "".join(ch if ch in _SAFE else "".join(f"%{b:02X}" for b in ch.encode("utf-8")) for ch in video_id)


def longform_key(source: str, video_id: str, first_clip_index: int) -> str:
    """``<source>~<escaped video id>~<first clip index, 6 digits>``: deterministic, unique and dot-free.

    The escape maps every character outside ``[A-Za-z0-9_-]`` (``.`` and ``~`` included) to ``%XX``,
    so ``~`` never occurs inside the parts and the key splits back into (source, video_id, index);
    overlong ids are cut and suffixed with 16 hex digits of their BLAKE2b hash.
    """
    escaped = escape_id(video_id)
    if len(escaped) > _MAX_KEY_ID:
        digest = hashlib.blake2b(video_id.encode("utf-8"), digest_size=8).hexdigest()
        escaped = f"{escaped[:_MAX_KEY_ID - 17]}-{digest}"
    return f"{source}~{escaped}~{first_clip_index:06d}"


def unescape_id(escaped: str) -> str:
    """Inverse of ``escape_id`` (for keys whose id was not shortened)."""
    out = bytearray()
    i = 0
    while i < len(escaped):
        if escaped[i] == "%":
            out += bytes.fromhex(escaped[i + 1:i + 3])
            i += 3
        else:
            out += escaped[i].encode()
            i += 1
    return out.decode("utf-8")


def split_of(video_id: str, val_fraction: float) -> str:
    """"train" or "val" from a hash of the video id alone, so a video never spans both splits."""
    if val_fraction <= 0:
        return "train"
    h = int.from_bytes(hashlib.blake2b(video_id.encode("utf-8"), digest_size=8).digest(), "big")
    return "val" if h < val_fraction * 2.0**64 else "train"
