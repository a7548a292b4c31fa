"""Small reading helpers shared by the adapters."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path


def iter_lines(path: Path, progress: Callable[[int], None] | None) -> Iterator[tuple[int, str]]:
    """``(line_number, text)`` of a file read in binary, decoded as UTF-8 with surrogate escapes.

    Invalid bytes survive as lone surrogates so validation can reject the record that holds
    them as ``invalid_utf8`` instead of the whole file failing to decode.
    """
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if progress is not None:
                progress(len(raw))
            yield number, raw.decode("utf-8", "surrogateescape")


def read_text(path: Path, progress: Callable[[int], None] | None) -> str:
    """A whole small file (one caption track) as text with surrogate escapes; BOM removed."""
    data = path.read_bytes()
    if progress is not None:
        progress(len(data))
    text = data.decode("utf-8", "surrogateescape")
    return text[1:] if text.startswith("\ufeff") else text


def files_with_suffixes(path: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """``path`` itself if it is a file, else its files with one of ``suffixes`` (recursive, sorted)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or directory")
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
