"""Record types shared by the manifest stage, the reject vocabulary, and small field parsers.

Adapters yield ``RawVideo`` (one video with its raw clips, times and text still unvalidated) or
``Reject`` (a record that could not even be parsed). Validation turns raw clips into ``Clip``s or
more ``Reject``s; every input record ends in exactly one of the two.
"""
from __future__ import annotations

import math
import re
import unicodedata
from typing import NamedTuple

import numpy as np
import pyarrow as pa

# The fixed reject vocabulary (docs/manifest.md explains each; manifests/schemas/ lists it too).
MALFORMED_RECORD = "malformed_record"  # unparseable line/entry or missing field; detail names the line
INVALID_UTF8 = "invalid_utf8"  # bytes that are not UTF-8 in an id or the text
UNSAFE_ID = "unsafe_id"  # id with a path separator, "..", NUL/control characters, empty or too long
BAD_TIMESTAMP = "bad_timestamp"  # time that does not parse or is not finite
NEGATIVE_TIME = "negative_time"
END_NOT_AFTER_START = "end_not_after_start"  # zero-length or inverted span
BEYOND_DURATION = "beyond_duration"  # ends past the known video duration by more than the tolerance
EMPTY_TEXT = "empty_text"  # no text after normalisation (or no text for the clip in a text file)
DUPLICATE_CLIP = "duplicate_clip"  # same clip id, same (start, end, text), or a video seen before
NO_SUBTITLES = "no_subtitles"  # hdvila ?subtitles=DIR: no caption file for the clip's video (and no other text)
TOO_LARGE = "too_large"  # a line, JSON entry, caption cue or text over its size cap (below); detail names the cap
TOO_DEEP = "too_deep"  # JSON nested deeper than MAX_JSON_DEPTH
NO_RECORDS = "no_records"  # a file of a directory source that holds no record (a whole source with none is an InputError)
NOT_IN_SPLIT = "not_in_split"  # left out by the source's split selection (?split_list=FILE, condensed_movies ?split=)
REJECT_REASONS = (MALFORMED_RECORD, INVALID_UTF8, UNSAFE_ID, BAD_TIMESTAMP, NEGATIVE_TIME,
                  END_NOT_AFTER_START, BEYOND_DURATION, EMPTY_TEXT, DUPLICATE_CLIP, NO_SUBTITLES,
                  TOO_LARGE, TOO_DEEP, NO_RECORDS, NOT_IN_SPLIT)
# Merge rejects (stage "merge"): valid, kept clips (they stay in clips.parquet) that end up in no
# long-form video; one row per clip, so kept_clips == clips_in_longform + merge rejects.
RUN_TOO_SHORT = "run_too_short"  # its run of consecutive clips has fewer than min_clips clips
PIECE_TOO_SHORT = "piece_too_short"  # a run cut by max_clips / max_duration_s left a piece below min_clips
NOT_IN_RUNS = "not_in_runs"  # with manifest.runs_file: a kept clip that no listed run names
MERGE_REJECT_REASONS = (RUN_TOO_SHORT, PIECE_TOO_SHORT, NOT_IN_RUNS)
# Runs-file rejects (stage "runs", with manifest.runs_file): clip ids a listed run names that are not
# in its long-form video. They are references, not input clips (see lfvila/manifest/runs_file.py).
RUN_CLIP_MISSING = "run_clip_missing"  # not in the metadata (or its video is not)
RUN_CLIP_REJECTED = "run_clip_rejected"  # in the metadata but rejected by validation
RUN_CLIP_OTHER_VIDEO = "run_clip_other_video"  # a clip of another video than the run's first clip
RUN_CLIP_DUPLICATE = "run_clip_duplicate"  # already in an earlier run of the file
RUN_CLIP_REASONS = (MALFORMED_RECORD, RUN_CLIP_MISSING, RUN_CLIP_REJECTED, RUN_CLIP_OTHER_VIDEO, RUN_CLIP_DUPLICATE)

# Caps that bound the work and memory one record can cost (docs/failure-model.md). Real records are
# far below each: an HD-VILA line ~3 KB, an ActivityNet / HowTo100M entry < 1 MB, a caption cue or
# clip sentence < 1 KB. A record over a cap is one ``too_large`` reject; the file goes on.
MAX_LINE_BYTES = 1 << 24  # one line of a line-based file (hdvila metadata and text file, CSV, caption track, runs file)
MAX_ENTRY_CHARS = 1 << 24  # one entry (a video's value) of a single-object JSON file
MAX_JSON_DEPTH = 64  # nesting of one JSON line or entry (real ones: 4-5); far below the decoders' recursion limits
MAX_TEXT_CHARS = 1 << 16  # one clip text or ASR fragment (a caption cue's words, a CSV row's text)
MAX_CUE_CHARS = 4 * MAX_TEXT_CHARS  # a caption cue's payload as written: per-word timing tags take ~3x the words
MAX_CLIP_NUMBER = (1 << 31) - 1  # n of an hdvila <video_id>.<n>.mp4 (clip_index is int32)

# Float noise in released annotations (e.g. 66.22000000001 for 66.22): an end past the duration by
# less than this is the same time, snapped to the duration and counted separately from "clamped".
FLOAT_NOISE_S = 1e-6


class RawClip(NamedTuple):
    """One unvalidated clip (or ASR fragment) as the adapter read it."""

    clip_id: str
    number: int  # hdvila: n of <vid>.<n>.mp4; others: 0-based order in the source record
    start: object  # float, int or a time string; validated later
    end: object
    text: object  # str (possibly with surrogate escapes for invalid UTF-8) or None
    line: int  # 1-based line in the input file where the record starts (0 when unknown)
    word_starts: tuple | None = None  # ASR only: per word of text.split(), its start time or None


class RawVideo(NamedTuple):
    video_id: str
    duration: object  # seconds if the source knows it, else None
    clips: list
    file: str


class Reject(NamedTuple):
    source: str
    video_id: str | None
    clip_id: str | None
    stage: str  # "parse" (adapter), "validate", "text" (hdvila text file), "merge" (kept clip in no long-form video)
    reason: str
    detail: str
    value: str | None  # the offending value, as text
    file: str
    line: int


class Clip(NamedTuple):
    """A validated canonical clip (for ASR sources: a built sentence)."""

    clip_id: str
    clip_index: int
    start: float
    end: float
    text: str
    clamped: bool
    line: int


_TWO_DIGITS_COLON = {f"{i:02d}:": i for i in range(100)}
_MAX_TIME_CHARS = 64  # a time string longer than this is not a time (e.g. a 400-digit hour field)
_HMS = re.compile(r"^(?:(\d+):)?(\d{1,2}):(\d{1,2}(?:[.,]\d+)?)$")


def parse_time(value: object) -> float:
    """Seconds from a number or ``[HH:]MM:SS[.mmm]`` / ``HH:MM:SS,mmm`` / ``"12.5"``; ValueError if not finite."""
    if isinstance(value, str):
        # Fast path for the HD-VILA / WebVTT form HH:MM:SS.mmm (hundreds of millions of calls).
        if len(value) == 12 and value[8] == ".":
            try:  # the table only holds "00:".."99:"; with the "." checked, "SS.mmm" cannot be nan/inf
                return _TWO_DIGITS_COLON[value[:3]] * 3600 + _TWO_DIGITS_COLON[value[3:6]] * 60 + float(value[6:])
            except (KeyError, ValueError):
                pass
        if len(value) > _MAX_TIME_CHARS:  # also keeps int() below Python's 4300-digit limit
            raise ValueError(f"not a time: {len(value)} characters")
        m = _HMS.match(value.strip())
        try:
            if m:
                t = int(m.group(1) or 0) * 3600 + int(m.group(2)) * 60 + float(m.group(3).replace(",", "."))
            else:
                t = float(value)
        except OverflowError:
            raise ValueError(f"out of range: {value[:40]!r}") from None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            t = float(value)
        except OverflowError:  # an integer beyond float range (a JSON 1 followed by 400 zeros)
            raise ValueError("out of range: an integer beyond float range") from None
    else:
        raise ValueError(f"not a time: {value!r}")
    if not math.isfinite(t):
        raise ValueError(f"not finite: {value!r}")
    return t


_HMS_DIGITS = np.array([0, 1, 3, 4, 6, 7, 9, 10, 11])  # the digit positions of HH:MM:SS.mmm


def parse_hms(values: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``parse_time`` on many ``HH:MM:SS.mmm`` strings at once -> (ok bool (n,), seconds float64 (n,)).

    The columnar form of ``parse_time``'s first branch: ok where that branch applies, and there
    the same seconds, bit for bit. ``parse_time`` computes ``HH * 3600 + MM * 60`` as an int plus
    ``float("SS.mmm")``; the latter is the correctly rounded value of the decimal, which is what
    ``(SS * 1000 + mmm) / 1000`` (two exact integers, one IEEE division) gives too.
    """
    arr = pa.array(values, pa.string())
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], np.int32, n + 1)
    data = np.frombuffer(arr.buffers()[2], np.uint8) if arr.buffers()[2] is not None else np.zeros(0, np.uint8)
    ok = np.diff(offsets) == 12
    if len(data) == 0:
        return ok & False, np.zeros(n)
    if ok.all() and offsets[0] == 0:
        chars = data[:12 * n].reshape(n, 12)  # the common case: every value is 12 bytes
    else:
        chars = data[np.minimum(offsets[:-1, None] + np.arange(12), len(data) - 1)]  # (n, 12) bytes
    digits = (chars - 48).astype(np.int64)  # non-digits wrap to >= 10 in uint8 before the cast
    ok &= (digits[:, _HMS_DIGITS] <= 9).all(1) & (chars[:, 2] == 58) & (chars[:, 5] == 58) & (chars[:, 8] == 46)
    hours = digits[:, 0] * 10 + digits[:, 1]
    minutes = digits[:, 3] * 10 + digits[:, 4]
    millis = (digits[:, 6] * 10 + digits[:, 7]) * 1000 + digits[:, 9] * 100 + digits[:, 10] * 10 + digits[:, 11]
    seconds = (hours * 3600 + minutes * 60).astype(np.float64) + millis / 1000.0
    return ok, seconds


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_PRINTABLE_ASCII = re.compile(r"[ -~]*").fullmatch


def has_invalid_utf8(text: str) -> bool:
    """True when ``text`` holds surrogates (invalid UTF-8 decoded with surrogateescape, or bad JSON escapes)."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


_SURROGATE = re.compile("[\ud800-\udfff]")


def shown_utf8(text: str) -> str:
    """``text`` as valid UTF-8 for a table: escaped invalid bytes and lone surrogates become U+FFFD."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate that is no escaped byte, e.g. from a JSON "\ud800"
        return _SURROGATE.sub("\ufffd", text)


def is_clean_text(text: str) -> bool:
    """True when ``clean_text`` returns ``text`` unchanged because it is printable ASCII words
    separated by single spaces (the common case, kept cheap); the empty text is clean too."""
    return _PRINTABLE_ASCII(text) is not None and "  " not in text and text[:1] != " " and text[-1:] != " "


# ``is_clean_text`` as one regular expression, for Arrow's ``match_substring_regex`` over a column
# (the scalar form is 4x faster per text in Python's ``re``, so each keeps its own spelling; the
# test test_manifest_rules pins them equal on tricky texts).
CLEAN_TEXT_PATTERN = r"^(?:[!-~]+(?: [!-~]+)*)?$"


def clean_text(text: str) -> str:
    """NFC-normalise, replace control characters by spaces, collapse whitespace, strip."""
    if is_clean_text(text):
        return text
    if text.isascii():
        if not text.isprintable():
            text = _CONTROL.sub(" ", text)
    else:
        if not unicodedata.is_normalized("NFC", text):
            text = unicodedata.normalize("NFC", text)
        text = _CONTROL.sub(" ", text)
    return " ".join(text.split())


_FAST_SAFE_ID = re.compile(r"[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]+)*")


def is_plain_id(value: str, max_length: int) -> bool:
    """True for an id of plain ASCII words separated by single dots, at most ``max_length`` long:
    safe without the detailed checks of ``unsafe_id_reason`` (the common case, kept cheap)."""
    return len(value) <= max_length and _FAST_SAFE_ID.fullmatch(value) is not None


def unsafe_id_reason(value: object, max_length: int) -> str | None:
    """Why ``value`` cannot be part of a file or tar member name, or None when it is safe."""
    if not isinstance(value, str):
        return "not a string"
    if is_plain_id(value, max_length):
        return None
    if not value:
        return "empty"
    if len(value) > max_length:
        return f"longer than {max_length} characters"
    if "/" in value or "\\" in value:
        return "path separator"
    if ".." in value or value == ".":
        return "dot path component"
    if not value.isprintable():
        return "control or non-printable character"
    if value != value.strip():
        return "leading or trailing whitespace"
    return None


def hdvila_clip_number(video_id: str, clip_id: str) -> str | None:
    """The digits ``n`` of an HD-VILA clip id ``<video_id>.<n>.mp4`` (LF-VILA's adjacency), or None
    when ``clip_id`` has another form (the caller checks ``n`` against MAX_CLIP_NUMBER)."""
    middle = clip_id[len(video_id) + 1:-4]
    if clip_id.startswith(video_id + ".") and clip_id.endswith(".mp4") and middle.isdigit() and middle.isascii():
        return middle
    return None


# ``hdvila_clip_number`` as one regular expression over a column of clip ids: where group "video"
# equals the clip's video id, group "number" is what ``hdvila_clip_number`` returns (the greedy
# "video" group ends at the last "." before the digits, as the prefix does); pinned equal by
# test_manifest_rules.
HDVILA_CLIP_ID_PATTERN = r"^(?P<video>.*)\.(?P<number>[0-9]+)\.mp4$"
