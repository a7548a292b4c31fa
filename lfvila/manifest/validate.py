"""Validation: raw clips of one video -> canonical clips + rejects, nothing dropped silently.

Checks run in this order and the first failure names the reject reason: the video's id (invalid
UTF-8, unsafe, seen before in this source), its duration, then per clip: clip id (invalid UTF-8,
unsafe), text (over MAX_TEXT_CHARS, invalid UTF-8), timestamps (bad, negative, end not after start, beyond the video's
duration), text (empty after normalisation), duplicates (same clip id, or same start, end and text).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lfvila.manifest.config import ManifestConfig
from lfvila.manifest.records import (
    BAD_TIMESTAMP, BEYOND_DURATION, DUPLICATE_CLIP, EMPTY_TEXT, END_NOT_AFTER_START, FLOAT_NOISE_S, INVALID_UTF8,
    MAX_TEXT_CHARS, NEGATIVE_TIME, TOO_LARGE, UNSAFE_ID, Clip, RawVideo, Reject, clean_text, has_invalid_utf8,
    is_clean_text, is_plain_id, parse_time, shown_utf8, unsafe_id_reason,
)


_new_tuple = tuple.__new__  # builds a NamedTuple without its Python-level __new__ (hot loop)


@dataclass
class ValidatedVideo:
    video_id: str
    duration: float | None
    clips: list[Clip] = field(default_factory=list)  # input order; clip_index is the raw number
    rejects: list[Reject] = field(default_factory=list)
    word_starts: dict = field(default_factory=dict)  # ASR: clip_id -> per-word start times
    clamped: int = 0  # ends pulled back to the duration (within duration_tolerance_s)
    snapped: int = 0  # ends past the duration by float noise only (< FLOAT_NOISE_S)


def _value(v: object) -> str | None:
    if v is None:
        return None
    s = v if isinstance(v, str) else repr(v)
    if has_invalid_utf8(s):
        s = shown_utf8(s)
    return s[:500]


def validate_video(video: RawVideo, source: str, cfg: ManifestConfig, seen_video_ids: set) -> ValidatedVideo:
    """Validate one video's raw clips; ``seen_video_ids`` (per source) detects repeated videos."""
    video_id, file = video.video_id, video.file
    out = ValidatedVideo(video_id, None)

    def reject(raw, stage_reason: str, detail: str, value: object) -> None:
        out.rejects.append(Reject(source, _value(video_id), _value(raw.clip_id), "validate", stage_reason, detail,
                                  _value(value), file, raw.line))

    video_problem = None
    if not isinstance(video_id, str) or has_invalid_utf8(video_id):
        video_problem = (INVALID_UTF8, "video_id is not valid UTF-8")
    elif (why := unsafe_id_reason(video_id, cfg.max_id_length)) is not None:
        video_problem = (UNSAFE_ID, f"video_id: {why}")
    elif video_id in seen_video_ids:
        video_problem = (DUPLICATE_CLIP, "video_id seen earlier in this source")
    else:
        seen_video_ids.add(video_id)
        if video.duration is not None:
            try:
                out.duration = parse_time(video.duration)
                if out.duration <= 0:
                    raise ValueError("not positive")
            except ValueError:
                video_problem = (BAD_TIMESTAMP, f"video duration {video.duration!r} is not a positive number")
    if video_problem is not None:
        for raw in video.clips:
            reject(raw, video_problem[0], video_problem[1], video_id if video_problem[0] != BAD_TIMESTAMP else video.duration)
        return out

    duration = out.duration
    tolerance = cfg.duration_tolerance_s
    max_id = cfg.max_id_length
    seen_clip_ids: set = set()
    seen_content: set = set()
    kept = out.clips
    for raw in video.clips:
        clip_id, number, start_raw, end_raw, text, line, word_starts = raw
        if not (type(clip_id) is str and is_plain_id(clip_id, max_id)):
            if not isinstance(clip_id, str):
                reject(raw, UNSAFE_ID, "clip_id is not a string", clip_id)
                continue
            if has_invalid_utf8(clip_id):
                reject(raw, INVALID_UTF8, "clip_id is not valid UTF-8", clip_id)
                continue
            if (why := unsafe_id_reason(clip_id, max_id)) is not None:
                reject(raw, UNSAFE_ID, f"clip_id: {why}", clip_id)
                continue
        if type(text) is str and len(text) > MAX_TEXT_CHARS:
            reject(raw, TOO_LARGE, f"text of {len(text)} characters, over the cap of {MAX_TEXT_CHARS}", text)
            continue
        if type(text) is str and is_clean_text(text):
            clean = text  # the common case, before the UTF-8 check it makes needless
        elif isinstance(text, str):
            if has_invalid_utf8(text):
                reject(raw, INVALID_UTF8, "text is not valid UTF-8", text)
                continue
            clean = clean_text(text)
        else:
            clean = ""
        try:
            start = parse_time(start_raw)
        except ValueError:
            reject(raw, BAD_TIMESTAMP, "start does not parse as a time", start_raw)
            continue
        try:
            end = parse_time(end_raw)
        except ValueError:
            reject(raw, BAD_TIMESTAMP, "end does not parse as a time", end_raw)
            continue
        if start < 0 or end < 0:
            reject(raw, NEGATIVE_TIME, "start or end is negative", f"{start}-{end}")
            continue
        if end <= start:
            reject(raw, END_NOT_AFTER_START, "zero-length span" if end == start else "end before start", f"{start}-{end}")
            continue
        clamped = False
        if duration is not None and end > duration:
            excess = end - duration
            if start >= duration or excess > tolerance + FLOAT_NOISE_S:
                reject(raw, BEYOND_DURATION, f"ends {excess:.6g} s past the video duration {duration}", f"{start}-{end}")
                continue
            end = duration
            if excess > FLOAT_NOISE_S:
                clamped = True
                out.clamped += 1
            else:
                out.snapped += 1
        if not clean:
            reject(raw, EMPTY_TEXT, "no text" if text is None else "text is empty after normalisation", text)
            continue
        # The duplicate rule (the columnar form is ``may_repeat`` below):
        if clip_id in seen_clip_ids:
            reject(raw, DUPLICATE_CLIP, "clip_id repeated within the video", clip_id)
            continue
        content = (start, end, clean)
        if content in seen_content:
            reject(raw, DUPLICATE_CLIP, "same start, end and text as an earlier clip of the video", clean)
            continue
        seen_clip_ids.add(clip_id)
        seen_content.add(content)
        kept.append(_new_tuple(Clip, (clip_id, number, start, end, clean, clamped, line)))
        if word_starts is not None:
            out.word_starts[clip_id] = word_starts
    return out


def may_repeat(same_video: np.ndarray, numbers: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The duplicate rule's columnar form, for clips in input order: per pair of neighbouring clips
    (n - 1,) True where they are of the same video and the later one's clip number and start are
    not both greater. Where it is False for every pair of a video, ``validate_video`` rejects no clip
    of it as a duplicate: distinct numbers n give distinct clip ids ``<video_id>.<n>.mp4``, distinct
    starts distinct (start, end, text); and the clips are already in clip-number order.
    ``same_video``: (n - 1,) bool, numbers: (n,) int, starts: (n,) float seconds.
    """
    return same_video & ((numbers[1:] <= numbers[:-1]) | (starts[1:] <= starts[:-1]))
