"""Small reading helpers shared by the adapters.

Lines are read with a bound (``MAX_LINE_BYTES``): a longer line is consumed in pieces and reported
as None, so one record never costs more memory than the cap. A UTF-8 BOM at the start of a file is
an encoding mark, not data, and is dropped.
"""
from __future__ import annotations

import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from lfvila.errors import InputError
from lfvila.manifest.records import MAX_LINE_BYTES

BOM = b"\xef\xbb\xbf"


def raw_lines(f: BinaryIO, progress: Callable[[int], None] | None,
              max_bytes: int = MAX_LINE_BYTES) -> Iterator[bytes | None]:
    """The lines of a binary file (with their newline), None for a line longer than ``max_bytes``."""
    readline, limit = f.readline, max_bytes + 1
    raw = readline(limit)
    if raw.startswith(BOM):
        if progress is not None:
            progress(3)
        raw = raw[3:] or readline(limit)
    while raw:
        if progress is not None:
            progress(len(raw))
        if len(raw) > max_bytes and raw[-1:] != b"\n":
            while (rest := readline(1 << 20)) and rest[-1:] != b"\n":  # consume it, keep nothing
                if progress is not None:
                    progress(len(rest))
            if rest and progress is not None:
                progress(len(rest))
            yield None
        else:
            yield raw
        raw = readline(limit)


def iter_lines(path: Path, progress: Callable[[int], None] | None,
               max_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[int, str | None]]:
    """``(line_number, text)`` of a file read in binary, decoded as UTF-8 with surrogate escapes.

    Invalid bytes survive as lone surrogates so validation can reject the record that holds
    them as ``invalid_utf8`` instead of the whole file failing to decode. ``text`` is None for a
    line over ``max_bytes`` (the caller rejects it as ``too_large``).
    """
    with open(path, "rb") as f:
        for number, raw in enumerate(raw_lines(f, progress, max_bytes), 1):
            yield number, None if raw is None else raw.decode("utf-8", "surrogateescape")


def read_text(path: Path, progress: Callable[[int], None] | None) -> str:
    """A whole small file (one caption track) as text with surrogate escapes; BOM removed."""
    data = path.read_bytes()
    if progress is not None:
        progress(len(data))
    text = data.decode("utf-8", "surrogateescape")
    return text[1:] if text.startswith("\ufeff") else text


def require_regular_file(path: Path, what: str) -> None:
    """InputError unless ``path`` is a regular file (a pipe or ``<(...)`` cannot be read twice)."""
    try:
        mode = path.stat().st_mode
    except OSError as e:
        raise InputError(f"{what}: cannot read {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(mode):
        kind = "a pipe (a process substitution such as <(...)?)" if stat.S_ISFIFO(mode) else "not a regular file"
        raise InputError(f"{what}: {path} is {kind}; the manifest stage reads each input twice (checksum, "
                         "then records): write it to a file first")


def files_with_suffixes(path: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """``path`` itself if it is a file, else its files with one of ``suffixes`` (recursive, sorted)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        if path.exists():
            require_regular_file(path, "source")
        raise FileNotFoundError(f"{path}: no such file or directory")
    return sorted(p for p in path.rglob("*") if p.suffix.lower() in suffixes and not p.is_dir())
