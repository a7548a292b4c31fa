"""howto100m: HowTo100M ASR captions, raw rolling fragments that become sentences (lfvila.manifest.asr).

PATH is a directory of per-video ``<video_id>.csv`` files with ``start,end,text`` rows (header
optional), one such CSV file, or one ``caption.json`` ``{video_id: {start: [], end: [], text: []}}``.
A row with more than three fields (an unquoted comma in the text) keeps the extra fields as text.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from pathlib import Path

from lfvila.manifest.records import MALFORMED_RECORD, RawClip, RawVideo, Reject
from lfvila.manifest.sources._io import files_with_suffixes, read_text
from lfvila.manifest.sources._jsonobj import read_json_object

IS_ASR = True
OPTIONS = ()
SOURCE = "howto100m"


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


def read_csv(path: Path, progress: Callable[[int], None] | None) -> Iterator[RawVideo | Reject]:
    """One video from a ``start,end,text`` CSV; video_id is the file name without ``.csv``."""
    file, video_id = str(path), path.stem
    reader = csv.reader(io.StringIO(read_text(path, progress), newline=""))
    clips = []
    for row in reader:
        line = reader.line_num
        if not row or (line == 1 and [c.strip().lower() for c in row] == ["start", "end", "text"]):
            continue
        if len(row) < 3:
            yield Reject(SOURCE, video_id, None, "parse", MALFORMED_RECORD, f"line {line}: expected start,end,text",
                         ",".join(row)[:500], file, line)
            continue
        clips.append(RawClip(f"{video_id}.{len(clips)}", len(clips), row[0].strip(), row[1].strip(), ",".join(row[2:]), line))
    yield RawVideo(video_id, None, clips, file)


def read(path: Path, options: dict, progress: Callable[[int], None] | None, stats: dict) -> Iterator[RawVideo | Reject]:
    if path.is_file() and path.suffix.lower() == ".json":
        yield from read_json_object(SOURCE, path, (), parse_caption_entry, progress)
        return
    for csv_path in input_files(path, options):
        yield from read_csv(csv_path, progress)
