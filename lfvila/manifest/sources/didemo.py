"""didemo: DiDeMo (LocalizingMoments) ``train_data.json`` / ``val_data.json`` / ``test_data.json``.

The file is a JSON list of annotations ``{"annotation_id", "video", "description", "times",
"num_segments"?, "download_link"?, ...}`` (github.com/LisaAnne/LocalizingMoments ``data/``). Videos
are cut into 5-second segments (0 is 0-5 s, ..., 5 is 25-30 s; videos were truncated to 30 s for
annotation, and ``num_segments`` is 5 for a video shorter than 25 s), and ``times`` holds each
annotator's ``[first segment, last segment]`` (usually four annotators).

One annotation is one clip ``<video>.<annotation_id>``, its span the **consensus** of the annotators:
the most frequent ``[start, end]`` pair, ties going to the earliest pair (smallest start, then
smallest end), in seconds ``start * 5`` to ``(end + 1) * 5``. (The last segment of a video can be
shorter than 5 s; the video stage stops at the end of the file.) The video's descriptions in the
time order of their consensus spans are its paragraph, with the ``retrieval_didemo`` recipe one
long-form video per DiDeMo video. The video id is ``video`` as given: LocalizingMoments'
downloaders save ``<video>.mp4``, which the video stage finds as ``<video_id>.<ext>``.

Rejects: an entry that is not an object, or lacks ``video``, ``annotation_id`` or a ``times`` list of
``[int, int]`` pairs, is ``malformed_record`` (an unreadable ``times`` pair is one bad annotation,
not a vote to drop: the annotation is rejected); a consensus segment below 0 is ``negative_time``,
one past the last segment (5, or ``num_segments - 1``) ``beyond_duration``, an end segment before
the start segment ``end_not_after_start``; the description is validated like any clip text
(``empty_text``, ``invalid_utf8``, ...). The file is read whole (the public files are under 10 MB);
broken JSON ends the file with one reject naming the line, as for the other JSON sources.

``?split_list=FILE`` keeps the listed videos (collaborative-experts ``misc/datasets/didemo``
``train_list.txt`` / ``val_list.txt`` / ``test_list.txt``); ids are compared without what follows
their first ``.`` (the collaborative-experts loader strips the file suffix the same way).
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from lfvila.errors import InputError
from lfvila.manifest.jsonstream import deeper_than_cap
from lfvila.manifest.records import (
    BEYOND_DURATION, END_NOT_AFTER_START, MALFORMED_RECORD, MAX_JSON_DEPTH, NEGATIVE_TIME, TOO_DEEP, RawClip, RawVideo,
    Reject,
)
from lfvila.manifest.sources._io import read_text
from lfvila.manifest.sources._splitlist import OPTION as SPLIT_LIST
from lfvila.manifest.sources._splitlist import keep_listed, split_list_files

IS_ASR = False
OPTIONS = (SPLIT_LIST,)
SOURCE = "didemo"
SEGMENT_S = 5.0  # DiDeMo's annotation unit
MAX_SEGMENTS = 6  # videos were truncated to 30 s for annotation

_DECODER = json.JSONDecoder()


def input_files(path: Path, options: dict) -> list[Path]:
    return [path] + split_list_files(options)


def id_stem(video_id: str) -> str:
    """The id without its file suffix(es), as the collaborative-experts split lists are compared."""
    return video_id.split(".", 1)[0]


def consensus(times: list[tuple[int, int]]) -> tuple[int, int]:
    """The annotators' most frequent ``(start, end)`` segment pair; ties: the earliest pair."""
    counts = Counter(times)
    return min(counts, key=lambda pair: (-counts[pair], pair))


def _segment_pairs(times: object) -> list[tuple[int, int]]:
    """``times`` as (start, end) integer pairs; ValueError naming what is wrong."""
    if not isinstance(times, list) or not times:
        raise ValueError("times is not a non-empty list")
    pairs = []
    for t in times:
        if not (isinstance(t, list) and len(t) == 2
                and all(isinstance(x, int) and not isinstance(x, bool) for x in t)):
            raise ValueError(f"times entry {t!r} is not a [start, end] pair of segment numbers")
        pairs.append((t[0], t[1]))
    return pairs


def _iter_entries(text: str) -> Iterator[tuple[int, object, int]]:
    """``(index, value, line)`` of each element of a JSON list; ValueError (with ``line``) where the
    structure breaks: nothing after that point can be read."""
    line, pos = 1, 0

    def skip_ws(i: int) -> int:
        nonlocal line
        j = i
        while j < len(text) and text[j] in " \t\r\n":
            j += 1
        line += text.count("\n", i, j)
        return j

    pos = skip_ws(pos)
    if not text.startswith("[", pos):
        raise InputError("not a JSON list of annotations")
    pos = skip_ws(pos + 1)
    index = 0
    if text.startswith("]", pos):
        return
    while True:
        try:
            value, end = _DECODER.raw_decode(text, pos)
        except RecursionError:
            raise _Broken(f"entry {index} nested deeper than {MAX_JSON_DEPTH} levels", line, TOO_DEEP) from None
        except json.JSONDecodeError as e:
            raise _Broken(f"invalid JSON ({e.msg})", line + text.count("\n", pos, e.pos)) from None
        except ValueError as e:  # valid syntax the decoder refuses (an integer over Python's 4300 digits)
            raise _Broken(f"entry {index}: unreadable value ({e})", line) from None
        entry_line = line
        if deeper_than_cap(value, text[pos:end]):
            yield index, _Broken(f"entry {index} nested deeper than {MAX_JSON_DEPTH} levels", line, TOO_DEEP), line
        else:
            yield index, value, entry_line
        line += text.count("\n", pos, end)
        pos = skip_ws(end)
        index += 1
        if text.startswith(",", pos):
            pos = skip_ws(pos + 1)
        elif text.startswith("]", pos):
            if skip_ws(pos + 1) != len(text):
                raise _Broken("data after the list", line)
            return
        else:
            raise _Broken("expected ',' or ']' after an entry", line)


class _Broken(ValueError):
    def __init__(self, message: str, line: int, reason: str = MALFORMED_RECORD):
        super().__init__(message)
        self.line, self.reason = line, reason


def _clip(entry: dict, index: int, line: int, file: str) -> tuple[str, RawClip | Reject]:
    """The annotation's video id and its clip, or a Reject."""
    video, ann_id = entry.get("video"), entry.get("annotation_id")
    video_id = video if isinstance(video, str) else None

    def reject(reason: str, detail: str, value: object) -> tuple[str, Reject]:
        clip_id = f"{video_id}.{ann_id}" if video_id is not None and ann_id is not None else None
        return video_id, Reject(SOURCE, video_id, clip_id, "parse", reason, f"line {line}: entry {index}: {detail}",
                                None if value is None else repr(value)[:500], file, line)

    if video_id is None:
        return reject(MALFORMED_RECORD, "no video name", video)
    if not isinstance(ann_id, (int, str)) or isinstance(ann_id, bool):
        return reject(MALFORMED_RECORD, "no annotation_id", ann_id)
    try:
        pairs = _segment_pairs(entry.get("times"))
    except ValueError as e:
        return reject(MALFORMED_RECORD, str(e), entry.get("times"))
    start, end = consensus(pairs)
    n_segments = entry.get("num_segments")
    known = isinstance(n_segments, int) and not isinstance(n_segments, bool) and n_segments > 0
    last = (min(n_segments, MAX_SEGMENTS) if known else MAX_SEGMENTS) - 1
    if start < 0 or end < 0:
        return reject(NEGATIVE_TIME, f"consensus segments {[start, end]} below 0", pairs)
    if end < start:
        return reject(END_NOT_AFTER_START, f"consensus end segment {end} before start segment {start}", pairs)
    if end > last:
        return reject(BEYOND_DURATION, f"consensus segments {[start, end]} past the last segment {last}", pairs)
    text = entry.get("description")
    return video_id, RawClip(f"{video_id}.{ann_id}", index, start * SEGMENT_S, (end + 1) * SEGMENT_S, text, line)


def _read(path: Path, progress: Callable[[int], None] | None) -> Iterator[RawVideo | Reject]:
    file = str(path)
    text = read_text(path, progress)
    by_video: dict[str, list[RawClip]] = {}  # first-appearance order; a video's annotations need not be adjacent
    rejects: list[Reject] = []
    try:
        for index, value, line in _iter_entries(text):
            if isinstance(value, _Broken):
                rejects.append(Reject(SOURCE, None, None, "parse", value.reason, f"line {line}: {value}", None, file, line))
                continue
            if not isinstance(value, dict):
                rejects.append(Reject(SOURCE, None, None, "parse", MALFORMED_RECORD,
                                      f"line {line}: entry {index} is not an object", repr(value)[:500], file, line))
                continue
            video_id, item = _clip(value, index, line, file)
            if isinstance(item, Reject):
                rejects.append(item)
            else:
                by_video.setdefault(video_id, []).append(item)
    except _Broken as e:
        rejects.append(Reject(SOURCE, None, None, "parse", e.reason, f"line {e.line}: {e}; the rest of the file was "
                              "not read", None, file, e.line))
    except InputError as e:
        raise InputError(f"{SOURCE} source {file}: {e} (is it a DiDeMo train/val/test_data.json?)") from None
    yield from rejects
    for video_id, clips in by_video.items():
        yield RawVideo(video_id, None, clips, file)


def read(path: Path, options: dict, progress: Callable[[int], None] | None, stats: dict) -> Iterator[RawVideo | Reject]:
    return keep_listed(SOURCE, _read(path, progress), options, stats, key=id_stem)
