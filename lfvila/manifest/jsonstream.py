"""Stream the items of a large JSON object (``{key: value, ...}``) without loading the whole file.

ActivityNet, YouCook2 and HowTo100M ``caption.json`` are single JSON objects keyed by video id;
HowTo100M's is several GB. ``iter_object_items`` reads chunks and decodes one value at a time with
the C JSON decoder, so memory is bounded by the largest single video's entry.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import BinaryIO

_DECODER = json.JSONDecoder()
_WS = " \t\r\n"
_MAX_VALUE_CHARS = 1 << 30  # a single value larger than this is reported as malformed


class JsonStreamError(ValueError):
    """The file is not a JSON object of the expected shape; ``line`` is 1-based."""

    def __init__(self, message: str, line: int):
        super().__init__(f"line {line}: {message}")
        self.line = line


class _Buffer:
    """A text window over a binary file, decoded as UTF-8 with surrogate escapes, counting lines."""

    def __init__(self, f: BinaryIO, chunk_bytes: int, progress: Callable[[int], None] | None):
        self.f = f
        self.chunk_bytes = chunk_bytes
        self.progress = progress
        self.text = ""
        self.pos = 0
        self.line = 1  # line number at self.pos
        self.eof = False
        self._pending = b""  # an incomplete UTF-8 sequence at a chunk boundary

    def fill(self) -> bool:
        """Read one more chunk; False at end of file."""
        if self.eof:
            return False
        data = self.f.read(self.chunk_bytes)
        if self.progress is not None:
            self.progress(len(data))
        if not data:
            self.eof = True
            if self._pending:
                self.text = self.text[self.pos:] + self._pending.decode("utf-8", "surrogateescape")
                self.pos = 0
                self._pending = b""
                return True
            return False
        data = self._pending + data
        cut = len(data)
        # Keep a trailing partial multi-byte character for the next chunk.
        for back in range(1, min(4, len(data)) + 1):
            byte = data[-back]
            if byte < 0x80:
                break
            if byte >= 0xC0:
                need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
                if need > back:
                    cut = len(data) - back
                break
        self._pending = data[cut:]
        self.text = self.text[self.pos:] + data[:cut].decode("utf-8", "surrogateescape")
        self.pos = 0
        return True

    def advance(self, new_pos: int) -> None:
        self.line += self.text.count("\n", self.pos, new_pos)
        self.pos = new_pos

    def skip_ws(self) -> None:
        while True:
            n = len(self.text)
            p = self.pos
            while p < n and self.text[p] in _WS:
                p += 1
            self.advance(p)
            if p < n or not self.fill():
                return

    def peek(self) -> str:
        self.skip_ws()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, char: str) -> None:
        if self.peek() != char:
            got = self.text[self.pos:self.pos + 20] or "end of file"
            raise JsonStreamError(f"expected {char!r}, got {got!r}", self.line)
        self.advance(self.pos + 1)

    def decode_value(self) -> object:
        self.skip_ws()
        while True:
            try:
                value, end = _DECODER.raw_decode(self.text, self.pos)
            except json.JSONDecodeError as e:
                # An incomplete value at the end of the window: read more and retry; the chunk
                # size doubles so a huge value costs O(n log n), not O(n^2).
                if len(self.text) - self.pos < _MAX_VALUE_CHARS and self.fill():
                    self.chunk_bytes = min(self.chunk_bytes * 2, 1 << 26)
                    continue
                raise JsonStreamError(e.msg, self.line + self.text.count("\n", self.pos, e.pos)) from None
            if end >= len(self.text) and not self.eof:
                # A number at the window's end may continue in the next chunk.
                if self.fill():
                    continue
            self.advance(end)
            return value


def iter_object_items(f: BinaryIO, path: tuple[str, ...] = (), *, chunk_bytes: int = 1 << 20,
                      progress: Callable[[int], None] | None = None) -> Iterator[tuple[str, object, int]]:
    """Yield ``(key, value, line)`` of the object found at ``path`` (nested keys) inside a JSON file.

    Raises ``JsonStreamError`` (with a line number) on malformed JSON; items before it were yielded.
    """
    buf = _Buffer(f, chunk_bytes, progress)
    yield from _iter_object(buf, path)


def _iter_object(buf: _Buffer, path: tuple[str, ...]) -> Iterator[tuple[str, object, int]]:
    buf.expect("{")
    if buf.peek() == "}":
        buf.advance(buf.pos + 1)
        return
    while True:
        if buf.peek() != '"':
            raise JsonStreamError("expected a string key", buf.line)
        key = buf.decode_value()
        buf.expect(":")
        if path:
            if key == path[0]:
                buf.skip_ws()
                yield from _iter_object(buf, path[1:])
            else:
                buf.decode_value()
        else:
            buf.skip_ws()
            line = buf.line
            yield key, buf.decode_value(), line
        sep = buf.peek()
        if sep == ",":
            buf.advance(buf.pos + 1)
            continue
        if sep == "}":
            buf.advance(buf.pos + 1)
            return
        raise JsonStreamError(f"expected ',' or '}}', got {sep or 'end of file'!r}", buf.line)
