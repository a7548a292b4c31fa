"""condensed_movies: Condensed Movies (CMD, Bain et al. 2020) descriptions as a CSV.

Accepted: the challenge release's ``metadata/train_val_challf0.csv`` / ``test_challf0.csv``
(github.com/m-bain/CondensedMovies-chall: columns ``videoid``, ``caption``, ``split``
(train / val / test), ``upload_year``, ...) and the original release's ``metadata/descriptions.csv``
(github.com/m-bain/CondensedMovies: ``videoid``, ``description``, ...). Other columns are ignored.
Each row describes a whole clip (a movie's key scene, one YouTube video ``videoid``), so a row is one
clip ``<videoid>.<k>`` (k: the video's k-th row) spanning ``0`` to the video's duration; the rows of a
video, in file order, are its paragraph (usually one description).

The duration comes from a ``duration`` column if the CSV has one, else from ``?durations=FILE``: the
original release's ``metadata/durations.csv`` (``videoid,duration`` in seconds: the clip without
the advertisement outro its download script trims, so the span leaves the outro out even of an
untrimmed download). A CSV without either is refused (InputError): a whole-clip description needs
the clip's length. A row whose video has no duration there is a ``bad_timestamp`` reject.

``?split=train|val|test`` keeps the rows whose ``split`` column says so (the challenge's split);
the others are ``not_in_split`` rejects. Assumption: the challenge CSV's column names beyond
``videoid``, ``caption``, ``split`` and ``upload_year`` (which its loader reads) are not known
offline; a ``duration`` column is used if present. The downloaders store videos as
``videos/<upload_year>/<videoid>.mkv``; the video stage looks for ``DIR/<videoid>.<ext>``, so
point ``--videos`` at a folder of links (or move the files) without the year level.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from pathlib import Path

from lfvila.errors import InputError
from lfvila.manifest.records import BAD_TIMESTAMP, MALFORMED_RECORD, NOT_IN_SPLIT, TOO_LARGE, RawClip, RawVideo, Reject
from lfvila.manifest.sources._io import read_text

IS_ASR = False
OPTIONS = ("split", "durations")
SOURCE = "condensed_movies"
SPLITS = ("train", "val", "test")
TEXT_COLUMNS = ("caption", "description")  # the challenge CSV, the original descriptions.csv


def input_files(path: Path, options: dict) -> list[Path]:
    return [path] + ([Path(options["durations"])] if options.get("durations") else [])


def _rows(path: Path, progress: Callable[[int], None] | None) -> Iterator[tuple[int, list[str] | csv.Error]]:
    """``(line, fields)`` of each CSV record (a quoted caption may hold commas, quotes and newlines);
    a record the csv module refuses (a field over its 131,072-character limit, ...) is ``(line, error)``
    and reading goes on after it."""
    reader = csv.reader(io.StringIO(read_text(path, progress), newline=""))
    line = 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            fields = e
        yield line, fields
        line = reader.line_num + 1


def read_durations(path: Path) -> dict[str, str]:
    """``videoid -> duration`` (as written) of a ``videoid,duration`` CSV."""
    rows = _rows(path, None)
    header = next(rows, (1, []))[1]
    if isinstance(header, csv.Error) or "videoid" not in header or "duration" not in header:
        raise InputError(f"{SOURCE} durations {path}: needs videoid and duration columns, has {header}")
    vid, dur = header.index("videoid"), header.index("duration")
    return {fields[vid]: fields[dur] for _, fields in rows
            if not isinstance(fields, csv.Error) and len(fields) > max(vid, dur)}


def read(path: Path, options: dict, progress: Callable[[int], None] | None, stats: dict) -> Iterator[RawVideo | Reject]:
    file = str(path)
    want_split = options.get("split")
    if want_split is not None and want_split not in SPLITS:
        raise InputError(f"{SOURCE} source {file}: ?split= must be one of {', '.join(SPLITS)}, got {want_split!r}")
    rows = _rows(path, progress)
    header = next(rows, (1, []))[1]
    header = [] if isinstance(header, csv.Error) else [h.strip() for h in header]
    text_col = next((c for c in TEXT_COLUMNS if c in header), None)
    if "videoid" not in header or text_col is None:
        raise InputError(f"{SOURCE} source {file}: needs a videoid and a caption (or description) column, "
                         f"has {header}; is it a Condensed Movies CSV?")
    if want_split is not None and "split" not in header:
        raise InputError(f"{SOURCE} source {file}: ?split= needs a split column (the challenge CSVs have one)")
    durations = read_durations(Path(options["durations"])) if options.get("durations") else None
    if "duration" not in header and durations is None:
        raise InputError(f"{SOURCE} source {file}: no duration column: give the clips' durations with "
                         "?durations=durations.csv (CondensedMovies metadata)")
    col = {name: header.index(name) for name in ("videoid", text_col, "split", "duration") if name in header}
    by_video: dict[str, list[RawClip]] = {}  # first-appearance order
    duration_of: dict[str, str] = {}
    for line, fields in rows:
        if isinstance(fields, csv.Error):
            reason = TOO_LARGE if "field limit" in str(fields) else MALFORMED_RECORD
            yield Reject(SOURCE, None, None, "parse", reason, f"line {line}: bad CSV record ({fields})", None, file, line)
            continue
        if not fields:
            continue  # a blank line is no record
        if len(fields) != len(header):
            yield Reject(SOURCE, None, None, "parse", MALFORMED_RECORD,
                         f"line {line}: {len(fields)} fields, the header has {len(header)}", ",".join(fields)[:500],
                         file, line)
            continue
        video_id, text = fields[col["videoid"]], fields[col[text_col]]
        clips = by_video.setdefault(video_id, [])
        clip_id = f"{video_id}.{len(clips)}"
        if want_split is not None and fields[col["split"]] != want_split:
            clips.append(None)  # keeps the numbering of the video's rows
            yield Reject(SOURCE, video_id, clip_id, "parse", NOT_IN_SPLIT,
                         f"line {line}: split {fields[col['split']]!r}, not {want_split!r}", fields[col["split"]],
                         file, line)
            continue
        duration = fields[col["duration"]] if "duration" in col else durations.get(video_id)
        if duration is None:
            clips.append(None)
            yield Reject(SOURCE, video_id, clip_id, "parse", BAD_TIMESTAMP,
                         f"line {line}: no duration for the video in {Path(options['durations']).name}", video_id,
                         file, line)
            continue
        duration_of.setdefault(video_id, duration)
        clips.append(RawClip(clip_id, len(clips), 0.0, duration, text, line))
    for video_id, clips in by_video.items():
        kept = [c for c in clips if c is not None]
        if kept:
            yield RawVideo(video_id, duration_of[video_id], kept, file)
