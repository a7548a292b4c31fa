"""Columnar fast path of the hdvila adapter: validate a batch of plain metadata lines with array ops.

HD-VILA-100M is ~100M clips, and per-clip Python (time parsing, id and text checks, tuples) was
most of the manifest stage's cost. ``check_batch`` decides, for a whole ``LineBatch`` at once,
which videos are *clean*: every clip would pass validation unchanged and in order (within the
same caps: clip numbers of at most 9 digits, texts of at most MAX_TEXT_CHARS), so the slow
path would keep all of them as they are. Clean videos are written straight from the batch's
columns; any other video is handed back to the per-record path (``validate_video``), which
produces its rejects exactly as before. The conditions are deliberately narrower than validation
(e.g. strictly increasing clip numbers and starts, which rule out duplicates without a set), so
the tables are byte-identical with and without this path.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lfvila.manifest.records import MAX_TEXT_CHARS, _FAST_SAFE_ID
from lfvila.manifest.sources.hdvila import LineBatch

# "<video_id>.<n>.mp4" with n of 1-9 ASCII digits (the release's form; int32 clip_index).
_CLIP_ID = r"^(?P<video>.*)\.(?P<number>[0-9]{1,9})\.mp4$"
# Already-clean printable ASCII text: words of [!-~] separated by single spaces, no edge spaces
# (the same texts ``clean_text`` returns unchanged; empty text is not clean).
_CLEAN_TEXT = r"^[!-~]+(?: [!-~]+)*$"
_DIGITS = np.array([0, 1, 3, 4, 6, 7, 9, 10, 11])


class CheckedBatch(NamedTuple):
    clean: list[bool]  # per video: every clip of the video is kept unchanged
    first_clip: list[int]  # (videos + 1): the video's clips are [first_clip[v], first_clip[v + 1])
    # Per clip, as Arrow arrays for the table writers (numbers and times meaningful for clean videos):
    video_ids: pa.Array  # string: the clip's video
    clip_ids: pa.Array  # string
    texts: pa.Array  # string
    numbers: pa.Array  # int32: n of <video_id>.<n>.mp4
    starts: pa.Array  # float64 seconds
    ends: pa.Array
    # LF-VILA runs (adjacent clip numbers within a video): run r is clips [run_starts[r], run_starts[r + 1]),
    # the runs of video v are first_run[v] .. first_run[v + 1] - 1; per run its first clip's number
    # and start, its latest clip end, and end - start (computed as the per-record path does).
    run_starts: list[int]
    first_run: list[int]
    run_number: list[int]
    run_start: list[float]
    run_end: list[float]
    run_seconds: list[float]


def parse_hms(values: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``HH:MM:SS.mmm`` strings -> (ok bool (n,), seconds float64 (n,)), equal to ``parse_time``'s result.

    ``parse_time`` computes ``HH * 3600 + MM * 60`` as an int plus ``float("SS.mmm")``; the latter
    is the correctly rounded value of the decimal, which is what ``(SS * 1000 + mmm) / 1000``
    (two exact integers, one IEEE division) gives too, so the seconds are bit-identical.
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
    ok &= (digits[:, _DIGITS] <= 9).all(1) & (chars[:, 2] == 58) & (chars[:, 5] == 58) & (chars[:, 8] == 46)
    hours = digits[:, 0] * 10 + digits[:, 1]
    minutes = digits[:, 3] * 10 + digits[:, 4]
    millis = (digits[:, 6] * 10 + digits[:, 7]) * 1000 + digits[:, 9] * 100 + digits[:, 10] * 10 + digits[:, 11]
    seconds = (hours * 3600 + minutes * 60).astype(np.float64) + millis / 1000.0
    return ok, seconds


def check_batch(batch: LineBatch, max_id_length: int, seen_video_ids: set) -> CheckedBatch:
    """Which videos of ``batch`` are clean, with their clips' numbers and times (see module doc)."""
    counts = np.array(batch.clip_counts, np.int64)
    first_clip = np.concatenate([[0], np.cumsum(counts)])
    video_of_clip = np.repeat(np.arange(len(counts)), counts)

    clean = np.ones(len(counts), bool)
    in_batch: set = set()
    fast_safe = _FAST_SAFE_ID.fullmatch
    for v, video_id in enumerate(batch.video_ids):
        if not (len(video_id) <= max_id_length and fast_safe(video_id)) or video_id in seen_video_ids \
                or video_id in in_batch:
            clean[v] = False
        in_batch.add(video_id)

    clip_ids = pa.array(batch.clip_ids, pa.string())
    parts = pc.extract_regex(clip_ids, _CLIP_ID)
    own_video = pa.array(batch.video_ids, pa.string()).take(pa.array(video_of_clip))
    same_prefix = pc.equal(pc.struct_field(parts, "video"), own_video)  # null where the id does not match
    ok = pc.fill_null(same_prefix, False).to_numpy(zero_copy_only=False)
    ok &= pc.binary_length(clip_ids).to_numpy() <= max_id_length
    numbers = pc.cast(pc.fill_null(pc.struct_field(parts, "number"), "0"), pa.int64()).to_numpy()
    texts = pa.array(batch.texts, pa.string())
    ok &= pc.match_substring_regex(texts, _CLEAN_TEXT).to_numpy(zero_copy_only=False)
    ok &= pc.binary_length(texts).to_numpy() <= MAX_TEXT_CHARS  # clean texts are ASCII: bytes == characters
    start_ok, starts = parse_hms(batch.starts)
    end_ok, ends = parse_hms(batch.ends)
    ok &= start_ok & end_ok & (ends > starts)
    # Within a video, strictly increasing clip numbers and starts: already in clip-number order,
    # no repeated clip id, no two clips with the same (start, end, text).
    same_video = video_of_clip[1:] == video_of_clip[:-1]
    out_of_order = same_video & ((numbers[1:] <= numbers[:-1]) | (starts[1:] <= starts[:-1]))
    clean[video_of_clip[~ok]] = False
    clean[video_of_clip[1:][out_of_order]] = False
    new_run = np.ones(len(numbers), bool)
    new_run[1:] = ~same_video | (numbers[1:] != numbers[:-1] + 1)
    run_starts = np.flatnonzero(new_run)
    run_end = np.maximum.reduceat(ends, run_starts) if len(run_starts) else np.zeros(0)
    run_start = starts[run_starts]
    return CheckedBatch(
        clean.tolist(), first_clip.tolist(), own_video, clip_ids, texts, pa.array(numbers.astype(np.int32)), pa.array(starts),
        pa.array(ends), run_starts.tolist() + [len(numbers)], np.searchsorted(run_starts, first_clip).tolist(),
        numbers[run_starts].tolist(), run_start.tolist(), run_end.tolist(), (run_end - run_start).tolist())
