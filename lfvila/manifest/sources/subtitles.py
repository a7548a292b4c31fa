"""subtitles: WebVTT and SRT caption tracks, one file per video (directory or single file).

video_id is the file name without its extension and without a youtube-dl language suffix
(``talk-abc123.en.vtt`` -> ``talk-abc123``). Each cue is one raw fragment; YouTube auto captions'
per-word ``<HH:MM:SS.mmm>`` timing tags give word start times (the words before a line's first tag
start at the cue start), other tags (``<c>``, ``<i>``, ``{\\an8}``) are dropped and HTML entities
unescaped. Rolling duplicated lines are removed later by the sentence builder.
"""
from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from lfvila.manifest.records import RawClip, RawVideo, Reject, parse_time
from lfvila.manifest.sources._io import files_with_suffixes, read_text

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


def parse_cues(text: str, video_id: str) -> list[RawClip]:
    """Cues of a VTT or SRT track as raw fragments; a timing line always starts a new cue."""
    clips: list[RawClip] = []
    cue = None  # [start_raw, end_raw, line, words, starts]

    def close():
        if cue is not None:
            words, starts = cue[3], cue[4]
            timed = tuple(starts) if any(s is not None for s in starts) else None
            clips.append(RawClip(f"{video_id}.{len(clips)}", len(clips), cue[0], cue[1], " ".join(words), cue[2], timed))

    for line_no, line in enumerate(text.splitlines(), 1):
        if "-->" in line:
            close()
            left, _, right = line.partition("-->")
            start_raw, end_raw = left.strip(), (right.split() or [""])[0]
            try:
                cue_start = parse_time(start_raw.replace(",", "."))
            except ValueError:
                cue_start = None
            cue = [start_raw, end_raw, line_no, [], []]
        elif not line.strip() and (not line or (cue is not None and cue[3])):
            # An empty line ends a cue; YouTube puts a lone " " line first in a cue, which does not.
            close()
            cue = None
        elif cue is not None:
            words, starts = _words_of_line(line, cue_start)
            cue[3].extend(words)
            cue[4].extend(starts)
    close()
    return clips


def read(path: Path, options: dict, progress: Callable[[int], None] | None, stats: dict) -> Iterator[RawVideo | Reject]:
    for track in input_files(path, options):
        yield RawVideo(video_id_of(track), None, parse_cues(read_text(track, progress), video_id_of(track)), str(track))
