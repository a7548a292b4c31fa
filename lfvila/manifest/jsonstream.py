"""Stream the items of a large JSON object (``{key: value, ...}``) without loading the whole file.

ActivityNet, YouCook2 and HowTo100M ``caption.json`` are single JSON objects keyed by video id;
HowTo100M's is several GB. ``iter_object_items`` reads chunks and decodes one value at a time with
the C JSON decoder, so memory is bounded by the largest single video's entry.

Nothing in the file escapes as anything but ``JsonStreamError`` (the structure is broken: the rest of
the file cannot be resynchronised) or an ``EntryProblem`` yielded in place of one entry's value
(the entry is over ``MAX_ENTRY_CHARS``, nested deeper than ``MAX_JSON_DEPTH``, or its brackets match
but the decoder refuses it: a number over Python's 4300-digit limit, a bad literal or escape). Values
under keys that are not on ``path`` are skipped by a scanner that never decodes them. A UTF-8 BOM at
the start is an encoding mark, not data; objects concatenated in one file (``cat a.json b.json``)
are read one after the other.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import BinaryIO, NamedTuple

from lfvila.manifest.records import MALFORMED_RECORD, MAX_ENTRY_CHARS, MAX_JSON_DEPTH, TOO_DEEP, TOO_LARGE

_DECODER = json.JSONDecoder()
_WS = " \t\r\n"
_RUNS = re.compile(r'"|[\[{]+|[\]}]+')  # a quote, or a run of opening or of closing brackets
_STRING_CHARS = re.compile(r'[^"\\]*')  # string content up to a quote or backslash
_SCALAR = re.compile(r'[^,\]}:\s"\[{]*')
_OPENER = str.maketrans("]}", "[{")


class JsonStreamError(ValueError):
    """The file is not a JSON object of the expected shape; ``line`` is 1-based."""

    def __init__(self, message: str, line: int):
        super().__init__(f"line {line}: {message}")
        self.line = line


class MissingKeyError(JsonStreamError):
    """A top-level object without the key of ``path`` (e.g. a YouCook2 source given an ActivityNet file)."""


class EntryProblem(NamedTuple):
    """Yielded instead of a value that was skipped: its reject reason and why (the entry is one reject)."""

    reason: str
    detail: str


def nested_deeper(value: object, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when a decoded JSON value nests containers deeper than ``limit`` (the value itself is level 1)."""
    stack = [(value, 1)]
    containers = (dict, list)
    while stack:
        v, depth = stack.pop()
        if depth > limit:
            return True
        children = v.values() if type(v) is dict else v
        stack.extend((c, depth + 1) for c in children if isinstance(c, containers))
    return False


_NOT_SHAPE = bytes(sorted(set(range(256)) - set(b'[]{}"')))  # every byte but brackets and quotes
_EMPTY_STRINGS = re.compile(rb'"[^"]*"')


def shallow_json(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when valid JSON ``raw`` certainly nests at most ``limit`` deep; False: maybe deeper.

    All in C-speed byte operations (a walk over the decoded value costs more than decoding it):
    escaped backslashes and quotes go, then everything but brackets and quotes, then the strings
    (now only brackets between two quotes), and each pass removes the innermost ``[]`` and ``{}`` pairs,
    one or two levels; empty within ``limit // 2`` passes means at most ``limit`` levels.
    """
    if b"\\" in raw:
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    # Adjacent quotes close one string and open the next (or bound an empty one): dropping them
    # keeps every string's brackets between two quotes, and most strings hold no bracket at all.
    shape = raw.translate(None, _NOT_SHAPE).replace(b'""', b"")
    if b'"' in shape:
        shape = _EMPTY_STRINGS.sub(b"", shape)
    for _ in range(limit // 2):
        if not shape:
            return True
        shape = shape.replace(b"[]", b"").replace(b"{}", b"")
    return not shape


def deeper_than_cap(value: object, text: str | bytes) -> bool:
    """Whether the decoded ``value`` of valid JSON ``text`` nests deeper than MAX_JSON_DEPTH (cheap for most)."""
    if not isinstance(value, (dict, list)):
        return False
    raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH or shallow_json(raw):
        return False
    return nested_deeper(value)


def loads_line(text: str | bytes) -> object:
    """``json.loads`` of one JSON line, with nesting deeper than MAX_JSON_DEPTH refused the same way
    however deep it is: ``TooDeep`` (a ValueError). Other bad JSON is a ValueError as from json
    (an integer over Python's 4300-digit limit included)."""
    try:
        value = json.loads(text)
    except RecursionError:  # far deeper than the cap: the decoder gave up
        raise TooDeep(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    if deeper_than_cap(value, text):
        raise TooDeep(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return value


class TooDeep(ValueError):
    """A JSON value nested deeper than MAX_JSON_DEPTH."""


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
        self._start = True  # a BOM may come first

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
        if self._start:
            if len(data) < 3 and b"\xef\xbb\xbf".startswith(data):
                self._pending = data  # maybe a BOM cut by a tiny chunk
                return True
            self._start = False
            if data.startswith(b"\xef\xbb\xbf"):
                data = data[3:]
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
        """The value at the current position, or an ``EntryProblem`` when it was skipped (module doc)."""
        self.skip_ws()
        while True:
            try:
                value, end = _DECODER.raw_decode(self.text, self.pos)
            except (ValueError, RecursionError):  # incomplete in the window, malformed, too deep, huge int
                return self._decode_slow()
            if end >= len(self.text) and not self.eof and self.fill():
                continue  # a number at the window's end may continue in the next chunk
            if end - self.pos > MAX_ENTRY_CHARS:
                size = end - self.pos
                self.advance(end)
                return EntryProblem(TOO_LARGE, f"entry of {size} characters, over the cap of {MAX_ENTRY_CHARS}")
            if (self.text.count("[", self.pos, end) + self.text.count("{", self.pos, end) > MAX_JSON_DEPTH
                    and deeper_than_cap(value, self.text[self.pos:end])):
                self.advance(end)
                return EntryProblem(TOO_DEEP, f"nested deeper than {MAX_JSON_DEPTH} levels")
            self.advance(end)
            return value

    def _decode_slow(self) -> object:
        end, deepest = self.skip_value(MAX_ENTRY_CHARS)
        if end is None or end - self.pos > MAX_ENTRY_CHARS:
            if end is not None:
                self.advance(end)
            return EntryProblem(TOO_LARGE, f"entry over the cap of {MAX_ENTRY_CHARS} characters")
        if deepest > MAX_JSON_DEPTH:
            self.advance(end)
            return EntryProblem(TOO_DEEP, f"nested deeper than {MAX_JSON_DEPTH} levels")
        try:
            value, stop = _DECODER.raw_decode(self.text, self.pos)
        except (ValueError, RecursionError) as e:
            message = e.msg if isinstance(e, json.JSONDecodeError) else str(e).split(":")[0]
            self.advance(end)
            return EntryProblem(MALFORMED_RECORD, f"value does not decode ({message})")
        self.advance(end)
        if stop != end:
            return EntryProblem(MALFORMED_RECORD, "value does not decode (unexpected data inside it)")
        return value

    def skip_value(self, keep_chars: int | None) -> tuple[int | None, int]:
        """Find the end of the value at ``pos`` without decoding it: (end index in ``text``, deepest nesting).

        The window keeps the value while it is at most ``keep_chars`` long (None: never keep it); a
        longer one is dropped as it is read (memory stays one chunk), and then the end is None with
        ``pos`` after the value. Broken structure (unmatched brackets, end of file inside the value)
        is a ``JsonStreamError``. Only brackets and strings are checked: ``decode_value`` decodes
        what it keeps.
        """
        start_line = self.line
        stack = bytearray()
        deepest = 0
        keep = keep_chars is not None
        i = self.pos
        in_string = False
        scalar = None  # decided at the first character: a number or literal, not "[{
        scalar_chars = 0
        while True:
            if i >= len(self.text):
                if keep and i - self.pos > keep_chars:
                    keep = False
                if not keep:
                    self.advance(i)
                off = i - self.pos
                if not self.fill():
                    if scalar and scalar_chars:  # a number or literal ending the file
                        return self._skipped(self.pos + off, keep), 0
                    raise JsonStreamError("end of file inside a value", start_line)
                i = self.pos + off
                continue
            if scalar is None:
                scalar = self.text[i] not in '"[{'
            if scalar:
                j = _SCALAR.match(self.text, i).end()
                scalar_chars += j - i
                if j >= len(self.text) and not self.eof:
                    i = j
                    continue
                if not scalar_chars:
                    raise JsonStreamError(f"expected a value, got {self.text[i:i + 20]!r}", self.line)
                return self._skipped(j, keep), 0
            if in_string:
                i = _STRING_CHARS.match(self.text, i).end()
                if i >= len(self.text):
                    continue
                if self.text[i] == "\\":
                    if i + 1 >= len(self.text):
                        if self.eof:
                            raise JsonStreamError("end of file inside a string", start_line)
                        off = i - self.pos
                        if not keep:
                            self.advance(i)
                            off = 0
                        if not self.fill():
                            raise JsonStreamError("end of file inside a string", start_line)
                        i = self.pos + off
                        continue
                    i += 2
                    continue
                i += 1  # the closing quote
                in_string = False
                if not stack:
                    return self._skipped(i, keep), deepest
                continue
            m = _RUNS.search(self.text, i)
            if m is None:
                i = len(self.text)
                continue
            run, i = m.group(), m.end()
            if run == '"':
                in_string = True
            elif run[0] in "[{":
                stack += run.encode()
                deepest = max(deepest, len(stack))
            else:
                k = min(len(run), len(stack))  # closes past the value's end belong to the enclosing object
                opened = run[:k].translate(_OPENER).encode()[::-1]
                if not k or stack[len(stack) - k:] != opened:
                    raise JsonStreamError(f"unmatched {run[0]!r}", self.line + self.text.count("\n", self.pos, m.start()))
                del stack[len(stack) - k:]
                if not stack:
                    return self._skipped(m.start() + k, keep), deepest

    def _skipped(self, end: int, keep: bool) -> int | None:
        if keep:
            return end
        self.advance(end)
        return None


def iter_object_items(f: BinaryIO, path: tuple[str, ...] = (), *, chunk_bytes: int = 1 << 20,
                      progress: Callable[[int], None] | None = None) -> Iterator[tuple[str | None, object, int]]:
    """Yield ``(key, value, line)`` of the object found at ``path`` (nested keys) inside a JSON file.

    ``value`` is an ``EntryProblem`` for an entry that could not be decoded (module doc); ``key`` is
    None when the key itself was. Raises ``JsonStreamError`` (with a line number) on malformed JSON,
    ``MissingKeyError`` when a top-level object has no ``path``; items before either were yielded.
    """
    buf = _Buffer(f, chunk_bytes, progress)
    while True:
        line = buf.line
        found = yield from _iter_object(buf, path)
        if path and not found:
            raise MissingKeyError(f"the JSON object has no {'/'.join(path)!r} key", line)
        c = buf.peek()
        if not c:
            return
        if c != "{":
            raise JsonStreamError(f"unexpected data after the JSON object: {buf.text[buf.pos:buf.pos + 20]!r}", buf.line)


def _iter_object(buf: _Buffer, path: tuple[str, ...]) -> Iterator[tuple[str | None, object, int]]:
    """Items of the object at ``buf`` (or of its ``path``); returns whether ``path`` was found."""
    buf.expect("{")
    found = False
    if buf.peek() == "}":
        buf.advance(buf.pos + 1)
        return found
    while True:
        if buf.peek() != '"':
            raise JsonStreamError("expected a string key", buf.line)
        key_line = buf.line
        key = buf.decode_value()
        buf.expect(":")
        if isinstance(key, EntryProblem):
            buf.skip_ws()
            buf.skip_value(None)
            yield None, EntryProblem(key.reason, f"key: {key.detail}"), key_line
        elif path:
            if key == path[0]:
                buf.skip_ws()
                found = True
                inner = yield from _iter_object(buf, path[1:])
                if len(path) > 1 and not inner:
                    found = False
            else:
                buf.skip_ws()
                buf.skip_value(None)  # never decoded: any size or depth costs one chunk of memory
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
            return found
        raise JsonStreamError(f"expected ',' or '}}', got {sep or 'end of file'!r}", buf.line)
