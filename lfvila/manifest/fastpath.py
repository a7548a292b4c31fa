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

No rule is stated here: each check is the columnar form defined next to its per-record rule
(``records``: ``is_plain_id``, ``HDVILA_CLIP_ID_PATTERN``, ``CLEAN_TEXT_PATTERN``, ``parse_hms``,
MAX_TEXT_CHARS; ``validate.may_repeat``; ``merge.follows``), and this module only combines them.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lfvila.manifest.merge import follows
from lfvila.manifest.records import CLEAN_TEXT_PATTERN, HDVILA_CLIP_ID_PATTERN, MAX_TEXT_CHARS, is_plain_id, parse_hms
from lfvila.manifest.sources.hdvila import LineBatch
from lfvila.manifest.validate import may_repeat

# The clip-id rule, capped at 9 digits (always within int32; longer numbers: the per-record path checks the cap).
_CLIP_ID_9_DIGITS = HDVILA_CLIP_ID_PATTERN.replace("[0-9]+", "[0-9]{1,9}")
assert _CLIP_ID_9_DIGITS != HDVILA_CLIP_ID_PATTERN


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


def check_batch(batch: LineBatch, max_id_length: int, seen_video_ids: set) -> CheckedBatch:
    """Which videos of ``batch`` are clean, with their clips' numbers and times (see module doc)."""
    counts = np.array(batch.clip_counts, np.int64)
    first_clip = np.concatenate([[0], np.cumsum(counts)])
    video_of_clip = np.repeat(np.arange(len(counts)), counts)

    clean = np.ones(len(counts), bool)
    in_batch: set = set()
    for v, video_id in enumerate(batch.video_ids):
        if not is_plain_id(video_id, max_id_length) or video_id in seen_video_ids or video_id in in_batch:
            clean[v] = False
        in_batch.add(video_id)

    clip_ids = pa.array(batch.clip_ids, pa.string())
    parts = pc.extract_regex(clip_ids, _CLIP_ID_9_DIGITS)
    own_video = pa.array(batch.video_ids, pa.string()).take(pa.array(video_of_clip))
    same_prefix = pc.equal(pc.struct_field(parts, "video"), own_video)  # null where the id does not match
    ok = pc.fill_null(same_prefix, False).to_numpy(zero_copy_only=False)
    ok &= pc.binary_length(clip_ids).to_numpy() <= max_id_length
    numbers = pc.cast(pc.fill_null(pc.struct_field(parts, "number"), "0"), pa.int64()).to_numpy()
    texts = pa.array(batch.texts, pa.string())
    text_bytes = pc.binary_length(texts).to_numpy()
    ok &= pc.match_substring_regex(texts, CLEAN_TEXT_PATTERN).to_numpy(zero_copy_only=False)
    ok &= (text_bytes > 0) & (text_bytes <= MAX_TEXT_CHARS)  # not empty; clean texts are ASCII: bytes == characters
    start_ok, starts = parse_hms(batch.starts)
    end_ok, ends = parse_hms(batch.ends)
    ok &= start_ok & end_ok & (ends > starts)
    same_video = video_of_clip[1:] == video_of_clip[:-1]
    clean[video_of_clip[~ok]] = False
    clean[video_of_clip[1:][may_repeat(same_video, numbers, starts)]] = False
    new_run = np.ones(len(numbers), bool)
    new_run[1:] = ~same_video | ~follows(numbers[:-1], numbers[1:])
    run_starts = np.flatnonzero(new_run)
    run_end = np.maximum.reduceat(ends, run_starts) if len(run_starts) else np.zeros(0)
    run_start = starts[run_starts]
    return CheckedBatch(
        clean.tolist(), first_clip.tolist(), own_video, clip_ids, texts, pa.array(numbers.astype(np.int32)), pa.array(starts),
        pa.array(ends), run_starts.tolist() + [len(numbers)], np.searchsorted(run_starts, first_clip).tolist(),
        numbers[run_starts].tolist(), run_start.tolist(), run_end.tolist(), (run_end - run_start).tolist())
