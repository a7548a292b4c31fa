"""howto100m: HowTo100M ASR captions, raw rolling fragments that become sentences (lfvila.manifest.asr).

PATH is a directory of per-video ``<video_id>.csv`` files with ``start,end,text`` rows (header
optional), one such CSV file, or one ``caption.json`` ``{video_id: {start: [], end: [], text: []}}``.
A row with more than three fields (an unquoted comma in the text) keeps the extra fields as text.
A row is one line (``read_csv``).
"""
from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from pathlib import Path

from lfvila.manifest.records import MALFORMED_RECORD, NO_RECORDS, TOO_LARGE, RawClip, RawVideo, Reject
from lfvila.manifest.sources._io import files_with_suffixes, iter_lines
from lfvila.manifest.sources._jsonobj import read_json_object

IS_ASR = True
OPTIONS = ()
SOURCE = "howto100m"
MAX_CSV_LINE_CHARS = 131_072  # the csv module's default field limit; a HowTo100M row is ~60 characters


def input_files(path: Path, options: dict) -> list[Path]:
    if path.is_file():
        return [path]
    return files_with_suffixes(path, (".csv",))


def parse_caption_entry(video_id: str, value: object, line: int, file: str) -> RawVideo:
    if not isinstance(value, dict):
        raise ValueError("entry is not an object")
    starts, ends, texts = value.get("start"), value.get("end"), value.get("text")
    if not (isinstance(starts, list) and isinstance(ends, list) and isinstance(texts, list)
            and len(starts) == len(ends) == len(texts)):
        raise ValueError("needs start, end and text lists of equal length")
    clips = [RawClip(f"{video_id}.{i}", i, s, e, t, line) for i, (s, e, t) in enumerate(zip(starts, ends, texts))]
    return RawVideo(video_id, None, clips, file)


def _row(line: str) -> list[str]:
    """The fields of one CSV line; ValueError for an unterminated quote or other bad quoting."""
    try:
        return next(csv.reader((line,), strict=True), [])
    except csv.Error as e:
        raise ValueError(f"bad CSV quoting ({e})") from None


def read_csv(path: Path, progress: Callable[[int], None] | None, in_directory: bool = False) -> Iterator[RawVideo | Reject]:
    """One video from a ``start,end,text`` CSV; video_id is the file name without ``.csv``.

    A row is one line: a quote left open at the end of its line is a ``malformed_record`` reject of
    that line, never a field that swallows the rows after it (ASR text has no newlines). A line over
    ``MAX_CSV_LINE_CHARS`` is a ``too_large`` reject (the csv module's own field limit is the same).
    A CSV of a directory source without any row is one ``no_records`` reject.
    """
    file, video_id = str(path), path.stem
    clips = []
    rows = 0
    for line, text in iter_lines(path, progress):
        if text is None or len(text) > MAX_CSV_LINE_CHARS:
            rows += 1
            yield Reject(SOURCE, video_id, None, "parse", TOO_LARGE,
                         f"line {line}: over the cap of {MAX_CSV_LINE_CHARS} characters per CSV line", None, file, line)
            continue
        try:
            row = _row(text)
        except ValueError as e:
            rows += 1
            yield Reject(SOURCE, video_id, None, "parse", MALFORMED_RECORD, f"line {line}: {e}", text.strip()[:500],
                         file, line)
            continue
        if not row or (line == 1 and [c.strip().lower() for c in row] == ["start", "end", "text"]):
            continue
        rows += 1
        if len(row) < 3:
            yield Reject(SOURCE, video_id, None, "parse", MALFORMED_RECORD, f"line {line}: expected start,end,text",
                         ",".join(row)[:500], file, line)
            continue
        clips.append(RawClip(f"{video_id}.{len(clips)}", len(clips), row[0].strip(), row[1].strip(), ",".join(row[2:]), line))
    if clips:
        yield RawVideo(video_id, None, clips, file)
    elif not rows and in_directory:
        yield Reject(SOURCE, video_id, None, "parse", NO_RECORDS, "the CSV has no row", None, file, 0)


def read(path: Path, options: dict, progress: Callable[[int], None] | None, stats: dict) -> Iterator[RawVideo | Reject]:
    if path.is_file() and path.suffix.lower() == ".json":
        yield from read_json_object(SOURCE, path, (), parse_caption_entry, progress)
        return
    for csv_path in input_files(path, options):
        yield from read_csv(csv_path, progress, in_directory=path.is_dir())
