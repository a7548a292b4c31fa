"""subtitles: WebVTT and SRT caption tracks, one file per video (directory or single file).

video_id is the file name without its extension and without a youtube-dl language suffix
(``talk-abc123.en.vtt`` -> ``talk-abc123``). Each cue is one raw fragment; YouTube auto captions'
per-word ``<HH:MM:SS.mmm>`` timing tags give word start times (the words before a line's first tag
start at the cue start), other tags (``<c>``, ``<i>``, ``{\\an8}``) are dropped and HTML entities
unescaped. Rolling duplicated lines are removed later by the sentence builder. Text outside any cue
and oversized cues are rejects with their line (``_parse``), never dropped unseen.
"""
from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from lfvila.manifest.records import (
    MALFORMED_RECORD, MAX_CUE_CHARS, MAX_LINE_BYTES, NO_RECORDS, TOO_LARGE, RawClip, RawVideo, Reject, parse_time,
)
from lfvila.manifest.sources._io import files_with_suffixes, iter_lines, read_text

IS_ASR = True
OPTIONS = ()
SOURCE = "subtitles"

_LANG_SUFFIX = re.compile(r"\.[a-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})?$")
_TIME_TAG = re.compile(r"<(\d+:\d{2}:\d{2}[.,]\d{3}|\d{2}:\d{2}[.,]\d{3})>")
_OTHER_TAG = re.compile(r"<[^>]*>|\{\\[^}]*\}")


def input_files(path: Path, options: dict) -> list[Path]:
    return files_with_suffixes(path, (".vtt", ".srt"))


def video_id_of(path: Path) -> str:
    return _LANG_SUFFIX.sub("", path.stem) or path.stem


def _words_of_line(line: str, cue_start: float | None) -> tuple[list[str], list]:
    """Words of one payload line and their start times (None where the line carries no timing)."""
    pieces = _TIME_TAG.split(line)
    words: list[str] = []
    starts: list = []
    for k in range(0, len(pieces), 2):
        if len(pieces) == 1:
            time = None
        elif k == 0:
            time = cue_start
        else:
            try:
                time = parse_time(pieces[k - 1])
            except ValueError:
                time = None
        piece_words = html.unescape(_OTHER_TAG.sub("", pieces[k])).split()
        words.extend(piece_words)
        # Only the first word after a tag is timed; the rest are interpolated by the builder.
        starts.extend([time] + [None] * (len(piece_words) - 1) if piece_words else [])
    return words, starts


class _Cue:
    __slots__ = ("start_raw", "end_raw", "line", "words", "starts", "chars", "too_large", "cue_start")

    def __init__(self, start_raw: str, end_raw: str, line: int, too_large: bool = False):
        self.start_raw, self.end_raw, self.line = start_raw, end_raw, line
        self.words: list[str] = []
        self.starts: list = []
        self.chars = 0
        self.too_large = too_large
        try:
            self.cue_start = parse_time(start_raw.replace(",", "."))
        except ValueError:
            self.cue_start = None


_NOT_RECORDS = ("NOTE", "STYLE", "REGION")
_WHOLE_FILE_BYTES = 1 << 22  # tracks up to 4 MiB are read whole  # WebVTT blocks that are not cues


def _parse(lines: Iterable[tuple[int, str | None]], video_id: str, problems: list | None) -> list[RawClip]:
    """The cues of numbered track lines (None: a line over the line cap) as raw fragments.

    A timing line (``START --> END``) always starts a new cue; a blank line ends it. Lines outside
    any cue are not dropped unseen: the first block's ``WEBVTT`` header, NOTE/STYLE/REGION blocks and
    the identifier line right before a timing line are not records; any other such block (text after
    a malformed timing line, text after a blank line inside a cue) is one ``malformed_record``
    problem at its first line. A cue whose payload passes ``MAX_CUE_CHARS`` is one ``too_large``
    problem, its words not kept (bounded work and memory). Problems are appended to ``problems`` as
    ``(line, reason, detail, value)``.
    """
    clips: list[RawClip] = []
    problems = [] if problems is None else problems
    cue: _Cue | None = None
    block: list = []  # lines outside any cue since the last blank line: [first line, text (500 chars), last, count, too long]
    first_block = True

    def close() -> None:
        if cue is None:
            return
        if cue.too_large:
            problems.append((cue.line, TOO_LARGE, f"line {cue.line}: cue over the cap of {MAX_CUE_CHARS} characters",
                             None))
            return
        timed = tuple(cue.starts) if any(s is not None for s in cue.starts) else None
        clips.append(RawClip(f"{video_id}.{len(clips)}", len(clips), cue.start_raw, cue.end_raw, " ".join(cue.words),
                             cue.line, timed))

    def flush(identifier_follows: bool) -> None:
        nonlocal first_block, block
        if not block:
            return
        line_no, first, _, count, too_long = block
        block = []
        header = first is not None and ((first_block and first.startswith("WEBVTT"))
                                        or first.split(None, 1)[0] in _NOT_RECORDS)
        first_block = False
        if too_long:
            problems.append((line_no, TOO_LARGE, f"line {line_no}: a line over the cap of {MAX_LINE_BYTES} bytes "
                             "outside any cue", None))
        elif not header and count > (1 if identifier_follows else 0):
            problems.append((line_no, MALFORMED_RECORD, f"line {line_no}: text outside any cue (no 'START --> END' "
                             "timing line before it)", first))

    for line_no, line in lines:
        if line is None:  # over the line cap: consumed, not kept
            if cue is not None:
                cue.too_large = True
            elif block:
                block[3] += 1
                block[4] = True
            else:
                block = [line_no, None, None, 1, True]
            continue
        if "-->" in line:
            close()
            flush(identifier_follows=True)
            first_block = False
            left, _, right = line.partition("-->")
            if len(line) > MAX_CUE_CHARS:
                cue = _Cue(left[:64].strip(), "", line_no, too_large=True)
                continue
            cue = _Cue(left.strip(), (right.split() or [""])[0], line_no)
        elif not line.strip():
            if cue is None:
                flush(identifier_follows=False)
            elif not line or cue.words or cue.too_large:
                # An empty line ends a cue; YouTube puts a lone " " line first in a cue, which does not.
                close()
                cue = None
        elif cue is not None:
            if cue.too_large:
                continue
            cue.chars += len(line)
            if cue.chars > MAX_CUE_CHARS:
                cue.too_large = True
                cue.words, cue.starts = [], []
                continue
            words, starts = _words_of_line(line, cue.cue_start)
            cue.words.extend(words)
            cue.starts.extend(starts)
        elif block:
            if block[1] is not None and len(block[1]) < 500:
                block[1] = (block[1] + "\n" + line)[:500]  # the reject shows the block's start
            block[2] = line
            block[3] += 1
        else:
            block = [line_no, line, line, 1, False]
    close()
    flush(identifier_follows=False)
    return clips


def _split(numbered: Iterable[tuple[int, str | None]]) -> Iterator[tuple[int, str | None]]:
    """Physical lines -> the lines ``str.splitlines`` gives (\\r, \\x0b, \\u2028... also end a line), renumbered."""
    n = 0
    for _, text in numbered:
        if text is None:
            n += 1
            yield n, None
            continue
        for piece in text.splitlines() or [""]:
            n += 1
            yield n, piece


def parse_cues(text: str, video_id: str, problems: list | None = None) -> list[RawClip]:
    """Cues of a VTT or SRT track (the whole text) as raw fragments; see ``_parse``."""
    return _parse(enumerate(text.splitlines(), 1), video_id, problems)


def parse_track(path: Path, video_id: str, progress: Callable[[int], None] | None,
                problems: list | None = None) -> list[RawClip]:
    """Cues of a track file. A file over ``_WHOLE_FILE_BYTES`` is read line by line (one cue in memory at
    a time, never a whole long line); a smaller one (every real track: a 3-hour one is ~1.3 MB) at once,
    which is faster and gives the same cues."""
    if path.stat().st_size <= _WHOLE_FILE_BYTES:
        return parse_cues(read_text(path, progress), video_id, problems)
    return _parse(_split(iter_lines(path, progress)), video_id, problems)


def read(path: Path, options: dict, progress: Callable[[int], None] | None, stats: dict) -> Iterator[RawVideo | Reject]:
    """One RawVideo per track, one Reject per problem; a track of a directory without any cue is one no_records reject."""
    for track in input_files(path, options):
        video_id, file, problems = video_id_of(track), str(track), []
        clips = parse_track(track, video_id, progress, problems)
        for line, reason, detail, value in problems:
            yield Reject(SOURCE, video_id, None, "parse", reason, detail, value, file, line)
        if clips:
            yield RawVideo(video_id, None, clips, file)
        elif not problems and path.is_dir():
            yield Reject(SOURCE, video_id, None, "parse", NO_RECORDS, "the track has no cue", None, file, 0)
