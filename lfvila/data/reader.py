"""Shard URLs -> grouped tar samples, with failures as records instead of exceptions.

Opening (:func:`open_shard`) uses webdataset's ``gopen`` (local paths, ``file:``, ``pipe:CMD``, other
schemes) and urllib for ``http(s)://``, with connect, stall and total timeouts; members are read by
:func:`iter_tar_members`, a minimal streaming ustar/pax/GNU reader. Grouping members into samples is done here so a shard that breaks part-way ends in a
counted record instead of an exception. Every item :func:`read_shard` yields is a sample dict or
an error record ``{"__error__": reason, "__url__": url, "__key__": key_or_None, "__detail__": text}``.
A sample dict is either

* read member by member: ``__key__``, ``__url__``, ``json`` as bytes, ``NNNN.jpg`` (and any other
  member) as memoryviews; or
* read by offsets (local shards in the shard stage's layout, see below): ``__key__``, ``__url__``,
  ``json`` as bytes, ``__meta__`` (the parsed JSON) and ``__frames__`` (a :class:`SampleFrames`:
  ``len()`` frames; ``[i]`` or ``take(indices)`` read and check frames, raising FrameMemberError
  for a frame whose header is not what the JSON's ``frame_bytes`` promised).

Why the reader looks the way it does: a long-form sample is ~208 members (its JSON and every
frame at 3 fps) of which the planner keeps 32, so per-member costs decide the loader's speed
(goal: well under the ~11 ms of decoding the 32 JPEGs). Where a first Python reader's time went,
and what replaced it:

* page faults, ~4 us per fresh 4 KiB page here: copying every member out (and the allocator
  handing the freed 2.8 MB back to the kernel after each sample) faulted ~320 pages per sample.
  Members are now memoryviews, never copies; the planner copies the few frames it keeps, so
  plans never pin shard memory.
* the kernel's copy into the read buffer (~0.4 ms per sample). Streams are read into 4 MiB
  chunks taken from a pool of idle ones (``_Chunk``), page-aligned, with each stream byte at its
  in-page offset: a read landing 1-31 bytes past its source's in-page offset, as it does into a
  malloc'd ``bytearray``, ran ~6x slower. Local shards in the shard stage's layout skip the
  chunks altogether (read by offsets, below). Local shards used to be memory-mapped instead of
  read; a shard truncated while mapped killed the process with SIGBUS, so they are not any more
  (the cost of that change, measured with bench/loader_throughput.py: BENCHMARKS.md).
* per-header Python work: two ``sum()`` over 512 bytes for the checksum, octal parsing,
  copies. The walk over headers is now one ``int()`` per member; the checksums of up to 240
  headers are checked in one numpy gather.
* one generator step per member: members come in one list per chunk or scan.
* walking ~208 headers at all, when 32 frames are kept: the shard stage writes ``KEY.json`` first
  with ``frame_bytes`` (each frame's data length), so every frame's offset follows from the JSON.
  A local shard's sample in that layout is checked at its ends (a few ``pread`` calls) and
  jumped over (:func:`_sample_by_offsets`); the frames a plan keeps are read with ``pread`` and
  checked then. Anything that does not add up (other member order, no or a wrong ``frame_bytes``, pax or
  long-name headers) reads that sample member by member: a lying JSON costs speed, never samples.

How much each change saved, measured: BENCHMARKS.md, "Tar reader: where the time per sample went".

Which shards a (rank, worker) reads is decided in :mod:`lfvila.data.shardlists`.
"""
from __future__ import annotations

import json
import mmap
import os
import stat
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from webdataset.gopen import gopen

from lfvila.data.config import DataConfig
from webdataset.tariterators import base_plus_ext

BLOCK = 512
PAGE = 4096
ZERO_BLOCK = b"\0" * BLOCK
# Header fields (POSIX ustar): name [0:100], size [124:136], chksum [148:156], typeflag [156],
# magic [257:263], prefix [345:500].
SIZE, CHKSUM, TYPEFLAG, MAGIC, PREFIX = 124, 148, 156, 257, 345
CHUNK_BYTES = 4 << 20  # read size; 4 MiB ran faster than 1 or 2 MiB here (fewer per-chunk steps)
# A member larger than this is a damaged header, not a member: a stream's member is read whole
# into one buffer, so this bounds the reader's memory (the shard stage's members are frames of
# ~10-60 KB and a JSON of ~10-100 KB).
MAX_MEMBER_BYTES = 64 << 20
REGULAR_TYPES = (ord("0"), 0, ord("7"))
LONG_NAME_TYPE, PAX_TYPE = ord("L"), ord("x")
OCTAL_PLACES = 8 ** np.arange(5, -1, -1)  # of a 6-digit octal number
# A frame header's name, size, checksum (less its last byte), typeflag and first prefix byte.
USUAL_FIELDS = np.r_[0:100, SIZE:SIZE + 12, CHKSUM:CHKSUM + 7, TYPEFLAG, PREFIX]


class TarFormatError(Exception):
    """The byte stream is not (or stops being) a valid tar archive (at stream ``offset``, where
    known). ``member``: the name in the bad header when the rest of it (checksum) is intact, so
    that the sample it belongs to is known; ``pax``: the bad header is a pax extended header,
    which belongs to the member after it."""

    def __init__(self, message: str, offset: int | None = None, member: str | None = None, pax: bool = False):
        super().__init__(message)
        self.offset, self.member, self.pax = offset, member, pax


class TarEndMissing(TarFormatError):
    """The stream ends at a member boundary without the end-of-archive block every tar writer
    puts there: it was cut, and whatever followed is lost (tarfile tolerates this silently)."""


class ShardTimeout(Exception):
    """An http(s) shard did not arrive in time (connect, stall or total timeout)."""


@dataclass(frozen=True)
class HttpTimeouts:
    """Limits on reading one ``http(s)://`` shard, in seconds (``data.http_*_timeout_s``)."""

    connect_s: float  # to connect and receive the response headers
    stall_s: float  # with no byte received
    total_s: float  # for the whole shard

    @classmethod
    def of(cls, cfg: DataConfig) -> HttpTimeouts:
        return cls(cfg.http_connect_timeout_s, cfg.http_stall_timeout_s, cfg.http_total_timeout_s)


class _HTTPShard:
    """A shard streamed over http(s) with urllib, every read bounded by the stall timeout and the
    time left of the total one (webdataset's ``gopen`` ran curl without either: a server that
    stalled mid-body blocked the loader for good). Raises ShardTimeout."""

    def __init__(self, url: str, timeouts: HttpTimeouts):
        self.url, self.timeouts = url, timeouts
        self.deadline = time.monotonic() + timeouts.total_s
        try:
            self.response = urllib.request.urlopen(url, timeout=min(timeouts.connect_s, timeouts.total_s))
        except (TimeoutError, urllib.error.URLError) as exc:
            if isinstance(exc, TimeoutError) or isinstance(getattr(exc, "reason", None), TimeoutError):
                raise ShardTimeout(f"no response within {timeouts.connect_s:g} s (data.http_connect_timeout_s)") \
                    from None
            raise
        # The response's socket, to bound each read by what is left of the total timeout too.
        self.sock = getattr(getattr(getattr(self.response, "fp", None), "raw", None), "_sock", None)

    def readinto(self, buffer) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise ShardTimeout(f"not read within {self.timeouts.total_s:g} s (data.http_total_timeout_s)")
        timeout = min(self.timeouts.stall_s, left)
        if self.sock is not None:
            self.sock.settimeout(timeout)
        try:
            data = self.response.read1(len(buffer))  # one socket read at most: each is bounded
        except TimeoutError:
            if timeout == self.timeouts.stall_s:
                raise ShardTimeout(f"no data for {timeout:g} s (data.http_stall_timeout_s)") from None
            raise ShardTimeout(f"not read within {self.timeouts.total_s:g} s (data.http_total_timeout_s)") from None
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        self.response.close()


def open_shard(url: str, timeouts: HttpTimeouts):
    """A binary stream of shard ``url``: ``http(s)://`` with :class:`_HTTPShard`, anything else
    with webdataset's ``gopen`` (local paths, ``file:``, ``pipe:CMD``, other schemes)."""
    if url.startswith(("http://", "https://")):
        return _HTTPShard(url, timeouts)
    return gopen(url, "rb")


def _octal(field: bytes) -> int:
    """A numeric header field: octal digits up to the first NUL (spaces allowed), or GNU base-256."""
    try:
        return int(field.partition(b"\0")[0], 8)  # the usual spelling; int() ignores surrounding spaces
    except ValueError:
        pass
    if field[:1] and field[0] & 0x80:  # GNU base-256 for large numbers
        return int.from_bytes(field[1:], "big")
    if field.partition(b"\0")[0].strip():
        raise ValueError(f"not a number: {field!r}")
    return 0


def _pax_path(data: bytes) -> str | None:
    """The ``path`` record of a pax extended header ("LEN KEY=VALUE\n" records, LEN counting the
    whole record). A record whose length does not cover itself and end in a newline inside the
    header is a TarFormatError: a length of 0 or less would never advance."""
    pos, path = 0, None
    while pos < len(data) and data[pos:].strip(b"\0"):  # trailing NULs are padding, as tarfile reads them
        space = data.find(b" ", pos, pos + 21)
        digits = data[pos:space]
        if space < 0 or not digits.isdigit():  # bytes.isdigit: ASCII digits only (no sign, no "_")
            raise TarFormatError(f"invalid pax record at byte {pos} of its header")
        end = pos + int(digits)
        if end <= space + 1 or end > len(data) or data[end - 1] != 0x0A:
            raise TarFormatError(f"invalid pax record length {int(digits)} at byte {pos} of its header")
        key, _, value = data[space + 1:end - 1].partition(b"=")
        if key == b"path":
            path = value.decode("utf-8", "surrogateescape")
        pos = end
    return path


def _usual_checksums(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(usual, sums)`` of headers ``rows`` (n, 512): ``sums`` (n,) their checksums, ``usual``
    (n,) where the checksum field holds it as tarfile and GNU tar spell it ("%06o\\0").

    The checksum is the byte sum of the header with its own 8-byte field read as spaces, stored
    in octal; all rows at once (per header in Python it cost more than the rest of a scan)."""
    field = rows[:, CHKSUM:CHKSUM + 8]  # (n, 8)
    sums = rows.sum(1, dtype=np.int64) - field.sum(1, dtype=np.int64) + 8 * ord(" ")  # (n,)
    digits = field[:, :6].astype(np.int64) - ord("0")  # (n, 6)
    usual = (digits >= 0).all(1) & (digits < 8).all(1) & (field[:, 6] == 0) & (digits @ OCTAL_PLACES == sums)
    return usual, sums


def _bad_checksums(rows: np.ndarray) -> Iterator[tuple[int, str]]:
    """(row, problem) of each header in ``rows`` (n, 512) whose checksum does not match, in order."""
    usual, sums = _usual_checksums(rows)
    for i in np.flatnonzero(~usual).tolist():
        try:  # the general parse, for other spellings
            if _octal(rows[i, CHKSUM:CHKSUM + 8].tobytes()) == sums[i]:
                continue
            yield i, "invalid header checksum"
        except ValueError:
            yield i, "invalid header"


class _Chunk:
    """A page-aligned read buffer; idle once no member (a memoryview slice of it) is alive."""

    __slots__ = ("buffer", "view", "blocks")

    def __init__(self, size: int):
        # Private: Python's default for anonymous maps is MAP_SHARED, which forked DataLoader
        # workers would share (through the idle chunks their parent left behind).
        self.buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
        self.open()

    def open(self) -> None:
        self.view = memoryview(self.buffer)  # members are slices of it
        self.blocks = np.frombuffer(self.buffer, np.uint8).reshape(-1, BLOCK)  # (size / 512, 512)

    def close(self) -> None:
        """Drop this reader's own views; slices handed out keep the buffer export they share."""
        self.view.release()
        self.view = self.blocks = None

    def idle(self) -> bool:
        # A closed chunk still has a buffer export while any member slice of it lives, and mmap
        # refuses to resize while exports exist: resizing to the same size asks just that.
        try:
            self.buffer.resize(len(self.buffer))
        except (BufferError, SystemError):  # SystemError: no mremap (macOS): never reused
            return False
        return True


# At most this many headers per scan: its (n, 512) gather stays under glibc's 128 KiB mmap
# threshold (bigger temporaries were mapped and unmapped, page faults each time).
MAX_HEADERS_PER_SCAN = 240
MAX_SPARE_BYTES = 16 << 20  # idle chunks kept for the next reads: a sample or two's worth
MAX_WATCHED_CHUNKS = 64  # retired chunks watched until idle (a sample's members pin its chunks)
_retired: list[_Chunk] = []  # in retirement order, this process's
_retired_lock = threading.Lock()  # readers may run in threads


def _take_chunk(size: int) -> _Chunk:
    """An idle retired chunk of at least ``size`` bytes, or a new one; frees surplus idle chunks."""
    found, spare_bytes = None, 0
    with _retired_lock:
        for chunk in list(_retired):
            if not chunk.idle():
                continue
            if found is None and len(chunk.buffer) >= size:
                found = chunk
            elif spare_bytes + len(chunk.buffer) <= MAX_SPARE_BYTES:
                spare_bytes += len(chunk.buffer)
                continue
            _retired.remove(chunk)  # found, or surplus: freed
    if found is None:
        return _Chunk(size)
    found.open()
    return found


def _retire(chunk: _Chunk) -> None:
    chunk.close()
    with _retired_lock:
        _retired.append(chunk)
        del _retired[:-MAX_WATCHED_CHUNKS]


class _ShardDescriptor:
    """A descriptor of a local shard, for ``pread``: kept open while a sample read by offsets may
    still read frames (after read_shard has closed its stream); closed once the last sample is
    dropped."""

    __slots__ = ("fd",)

    def __init__(self, fd: int):
        self.fd = os.dup(fd)

    def __del__(self):
        if hasattr(self, "fd"):  # not when dup() failed
            os.close(self.fd)

    @classmethod
    def of(cls, stream) -> _ShardDescriptor | None:
        """A descriptor of ``stream`` if it is a regular file read from its start, else None."""
        try:
            fd = stream.fileno()
            if stream.tell() != 0 or not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            return cls(fd)
        except (AttributeError, OSError, ValueError):  # pipes, BytesIO (UnsupportedOperation)
            return None


# Bytes a checksum field may hold (octal digits, spaces, NULs): a cheap first filter when looking
# for the next header in damaged data.
_CHECKSUM_BYTES = np.frombuffer(b"01234567 \0", np.uint8)


def _first_header(rows: np.ndarray) -> int | None:
    """The first of ``rows`` (n, 512) that is a valid tar header (checksum and size), or None."""
    field = rows[:, CHKSUM:CHKSUM + 8]  # (n, 8)
    digits = (field >= ord("0")) & (field <= ord("7"))
    candidates = np.flatnonzero(np.isin(field, _CHECKSUM_BYTES).all(1) & digits.any(1))
    if not len(candidates):
        return None
    _, sums = _usual_checksums(rows[candidates])
    for row, total in zip(candidates.tolist(), sums.tolist()):
        header = rows[row].tobytes()
        try:
            if _octal(header[CHKSUM:CHKSUM + 8]) == total and 0 <= _octal(header[SIZE:SIZE + 12]) <= MAX_MEMBER_BYTES:
                return row
        except ValueError:
            continue
    return None


class _StreamWindow:
    """The unread bytes of a stream, ``chunk.buffer[start:end]``, read a chunk at a time; stream
    byte ``base + i`` is at index ``i`` of the chunk.

    On refill the unread rest moves to an idle chunk from the pool (a member handed out stays
    valid while anyone holds it; fresh memory would fault on first touch). ``base`` is a multiple
    of the page size, so stream byte ``o`` sits at a chunk index congruent to ``o`` modulo the
    page size: tar headers (at multiples of 512 in the stream) are then rows of ``chunk.blocks``,
    and the kernel copies page cache pages onto buffer pages at the same in-page offset (see the
    module docstring).

    A regular file read from its start (``shard`` set) can also be read anywhere with ``pread``
    (:meth:`peek`) and skipped ahead (:meth:`skip_to`): samples read by offsets never pass through
    the chunks. Nothing is memory-mapped: a file truncated or overwritten while it is read gives
    short reads or wrong bytes (counted), never a SIGBUS.
    """

    def __init__(self, stream, chunk_bytes: int):
        self.stream = stream
        self.readinto = getattr(stream, "readinto", None)  # webdataset's Pipe has only read()
        self.chunk_size = -(-chunk_bytes // PAGE) * PAGE + PAGE  # + a page for the rest's offset
        self.shard = _ShardDescriptor.of(stream)
        self.size = os.fstat(self.shard.fd).st_size if self.shard else None  # at open; may shrink later
        self.chunk = _take_chunk(self.chunk_size)
        self.base = self.start = self.end = 0

    @property
    def offset(self) -> int:
        """The stream offset of the first unread byte."""
        return self.base + self.start

    def release(self) -> None:
        _retire(self.chunk)

    def fill(self, n: int) -> bool:
        """Make ``n`` unread bytes available; False when the stream ends first."""
        rest = self.end - self.start
        if rest >= n:
            return True
        to = self.start % PAGE
        old, self.chunk = self.chunk, _take_chunk(max(self.chunk_size, -(-(to + n) // PAGE) * PAGE))
        self.chunk.buffer[to:to + rest] = old.view[self.start:self.end]
        _retire(old)
        self.base += self.start - to
        self.start, self.end = to, to + rest
        buffer, view = self.chunk.buffer, self.chunk.view
        while self.end - self.start < n:
            if self.readinto is not None:
                got = self.readinto(view[self.end:])
            else:
                data = self.stream.read(len(buffer) - self.end)
                got = len(data)
                buffer[self.end:self.end + got] = data
            if not got:
                return False
            self.end += got
        return True

    def peek(self, offset: int, n: int) -> bytes:
        """Up to ``n`` bytes at stream ``offset`` of a local shard (short at its end), from the
        chunk when it holds them, else with ``pread``."""
        i = offset - self.base
        if self.start <= i and i + n <= self.end:
            return self.chunk.buffer[i:i + n]
        return os.pread(self.shard.fd, n, offset)

    def skip_to(self, offset: int) -> None:
        """Consume up to stream ``offset`` (at or after :attr:`offset`); past the bytes read so far
        the stream is repositioned (local shards only)."""
        if offset - self.base <= self.end:
            self.start = offset - self.base
            return
        self.stream.seek(offset)
        # An empty window at ``offset``: the next fill() takes a fresh chunk and keeps base's alignment.
        self.base = offset - offset % PAGE
        self.start = self.end = offset % PAGE

    def resync(self, offset: int) -> int:
        """Consume up to the first block at or after stream ``offset`` (a multiple of 512) that is a
        valid tar header, or to the end of the stream; returns the stream offset reached."""
        self.skip_to(offset)
        while self.fill(BLOCK):
            first = self.start // BLOCK
            found = _first_header(self.chunk.blocks[first:self.end // BLOCK])
            if found is not None:
                self.start = (first + found) * BLOCK
                return self.offset
            self.start = self.end // BLOCK * BLOCK
        self.start = self.end  # less than a block left: not a tar member either
        return self.offset

    def scan(self) -> tuple[list[tuple[int, int, int]], int, Exception | None]:
        """Headers of the members that lie wholly in the window, checked; consumes them.

        Returns ``(members, need, error)``: ``members`` are (header index, typeflag, size);
        ``need`` is how many unread bytes the next member needs (0 at the end-of-archive block);
        ``error`` is a TarFormatError to raise once ``members`` are handled, and then ``start`` is
        the index of the header it is about.
        """
        buf, at, end = self.chunk.buffer, self.start, self.end
        offsets, sizes = [], []  # of the headers read; the last one's member may be incomplete
        add_offset, add_size = offsets.append, sizes.append
        need, error = BLOCK, None
        while at + BLOCK <= end and len(offsets) < MAX_HEADERS_PER_SCAN:
            if buf[at + CHKSUM] == 0 and buf[at:at + BLOCK] == ZERO_BLOCK:
                need = 0
                break
            try:  # _octal inlined for the usual spelling (a call per member costs)
                size = int(buf[at + SIZE:at + SIZE + 12].partition(b"\0")[0], 8)
            except ValueError:
                try:
                    size = _octal(buf[at + SIZE:at + SIZE + 12])
                except ValueError:
                    error = TarFormatError("invalid header")
                    break
            if not 0 <= size <= MAX_MEMBER_BYTES:  # int() takes a sign: a negative size never advances
                header = self.chunk.blocks[at // BLOCK:at // BLOCK + 1]  # (1, 512)
                intact = next(_bad_checksums(header), None) is None
                name = buf[at:buf.find(b"\0", at, at + 100) % (at + 101)].decode("utf-8", "surrogateescape")
                error = TarFormatError(f"invalid header: member size {size}", member=name if intact else None)
                break
            add_offset(at)
            next_at = at + BLOCK + ((size + BLOCK - 1) & -BLOCK)  # data padded to whole blocks
            if next_at > end:  # its header is checked below; its data comes after the next fill
                need = next_at - at
                break
            add_size(size)
            at = next_at
        rows = self.chunk.blocks[[o // BLOCK for o in offsets]]  # (n, 512)
        for i, problem in _bad_checksums(rows):
            at = offsets[i]
            del offsets[i:], sizes[i:]
            error = TarFormatError(problem)
            break
        del offsets[len(sizes):]  # the incomplete member's header
        self.start = at
        return list(zip(offsets, rows[:len(sizes), TYPEFLAG].tolist(), sizes)), need, error


class _Damage:
    """A damaged stretch of a tar that the reader skipped: from the header at stream ``offset``
    (``error`` says what is wrong with it) to the next valid header (or the end) at ``resumed``."""

    __slots__ = ("offset", "resumed", "error")

    def __init__(self, offset: int, resumed: int, error: TarFormatError):
        self.offset, self.resumed, self.error = offset, resumed, error

    def __str__(self) -> str:
        return f"{self.error} at byte {self.offset}; {self.resumed - self.offset} bytes skipped to the next valid header"


def count_json_members(path: str) -> int:
    """Regular-file members named ``*.json`` in the local tar ``path``, reading headers only (each
    member's data is jumped over with ``pread``, as tarfile seeks over it), with the checks the
    reader makes: a bad checksum, size or pax record, or a file ending inside a member, is a
    TarFormatError (tarfile looped forever on a negative size and stopped counting silently at a
    bad pax record)."""
    count, at, long_name = 0, 0, None
    with open(path, "rb") as f:
        fd, end = f.fileno(), os.fstat(f.fileno()).st_size
        while True:
            header = os.pread(fd, BLOCK, at)
            if header == ZERO_BLOCK:  # the end-of-archive block
                return count
            problem = None
            try:
                size, checksum = _octal(header[SIZE:SIZE + 12]), _octal(header[CHKSUM:CHKSUM + 8])
            except ValueError:
                size = checksum = -1
            if len(header) < BLOCK:
                problem = "unexpected end of data in a header" if header else \
                    "empty file" if not at else "no end-of-archive block (cut at a member boundary)"
            elif checksum != sum(header) - sum(header[CHKSUM:CHKSUM + 8]) + 8 * ord(" "):
                problem = "invalid header checksum"
            elif not 0 <= size <= MAX_MEMBER_BYTES:
                problem = f"invalid header: member size {size}"
            elif at + BLOCK + size > end:
                problem = "unexpected end of data in a member"
            kind = header[TYPEFLAG] if problem is None else None
            try:
                if kind in REGULAR_TYPES:
                    name = long_name or header[:100].partition(b"\0")[0].decode("utf-8", "surrogateescape")
                    count += name.endswith(".json")
                    long_name = None
                elif kind == LONG_NAME_TYPE:
                    long_name = os.pread(fd, size, at + BLOCK).rstrip(b"\0").decode("utf-8", "surrogateescape")
                elif kind == PAX_TYPE:
                    long_name = _pax_path(os.pread(fd, size, at + BLOCK)) or long_name
                else:
                    long_name = None
            except TarFormatError as exc:
                problem = str(exc)
            if problem is not None:
                raise TarFormatError(f"{problem} (header at byte {at})", offset=at)
            at += BLOCK + ((size + BLOCK - 1) & -BLOCK)


def iter_tar_members(stream, chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[str, memoryview]]:
    """(name, data) of each regular file of a tar byte stream, in order.

    ``data`` is a read-only-by-convention memoryview into a read chunk; ``bytes(data)`` for a copy
    (holding it keeps its whole chunk alive). Handles ustar (with prefix), GNU long names and pax
    ``path`` records; other member types are skipped. Raises TarFormatError on a bad header
    (checksum, size, pax record) or a stream that ends inside a member, and on an empty stream (a
    failed ``pipe:`` command or download yields no bytes at all).
    """
    for batch in _member_batches(stream, chunk_bytes):
        yield from batch


def _member_batches(stream, chunk_bytes: int = CHUNK_BYTES, url: str | None = None,
                    resync: bool = False) -> Iterator[list[tuple[str, memoryview]] | dict | _Damage]:
    """iter_tar_members' members, one list per chunk read (cheaper than a generator step each).

    With ``url`` (read_shard's use) and a local shard, a sample laid out as the shard stage
    writes it comes whole instead, as a sample dict read by offsets (see :func:`_sample_by_offsets`):
    that is tried wherever a scan starts and, after a sample read member by member, at the next
    sample's ``KEY.json``. With ``resync``, a bad header is not the end: a :class:`_Damage` comes
    instead of the TarFormatError and reading goes on at the next valid header.
    """
    window = _StreamWindow(stream, chunk_bytes)
    by_offsets = url is not None and window.shard is not None
    try:
        long_name: str | None = None
        need = BLOCK
        first = True
        last_name = ""  # of the last regular member yielded: a sample read by offsets must start a key
        tried_at = -1  # stream offset where reading by offsets last failed: read member by member from there
        while need:
            if by_offsets and window.offset != tried_at and long_name is None:
                found = _sample_by_offsets(window, last_name, url)
                if found is not None:
                    sample, next_at = found
                    window.skip_to(next_at)
                    first, last_name = False, ""
                    yield sample
                    continue
                tried_at = window.offset
            if not window.fill(need):
                if need > BLOCK:
                    raise TarFormatError("unexpected end of data in a member")
                if window.end > window.start:
                    raise TarFormatError("unexpected end of data in a header")
                if first:
                    raise TarFormatError("empty file")
                raise TarEndMissing("the tar ends at a member boundary without its end-of-archive block: "
                                    "cut there, the members after it are lost")
            first = False
            headers, need, error = window.scan()
            buf, view, base = window.chunk.buffer, window.chunk.view, window.base
            batch = []
            add = batch.append
            for at, kind, size in headers:
                data = at + BLOCK
                if kind in REGULAR_TYPES:
                    if long_name is None:
                        # find() gives -1 without a NUL, and -1 % (at + 101) is at + 100: all 100 bytes.
                        name = buf[at:buf.find(b"\0", at, at + 100) % (at + 101)].decode("utf-8", "surrogateescape")
                        if buf[at + PREFIX] != 0 and buf[at + MAGIC:at + MAGIC + 5] == b"ustar":
                            prefix = buf[at + PREFIX:buf.find(b"\0", at + PREFIX, at + 500) % (at + 501)]
                            name = f"{prefix.decode('utf-8', 'surrogateescape')}/{name}"
                        elif by_offsets and name.endswith(".json") and base + at != tried_at \
                                and _starts_key(name, batch[-1][0] if batch else last_name):
                            # The next sample may be readable by offsets: stop here and try.
                            window.start, need, error = at, BLOCK, None
                            break
                    else:
                        name, long_name = long_name, None
                    add((name, view[data:data + size]))  # see _Chunk.idle
                elif kind == LONG_NAME_TYPE:
                    long_name = buf[data:data + size].rstrip(b"\0").decode("utf-8", "surrogateescape")
                elif kind == PAX_TYPE:
                    try:
                        long_name = _pax_path(buf[data:data + size]) or long_name
                    except TarFormatError as exc:  # the members before it still come out
                        exc.pax = True
                        window.start, need, error = at, BLOCK, exc
                        break
                else:
                    long_name = None
            del buf, view
            if batch:
                last_name = batch[-1][0]
            yield batch
            if error is not None:
                if not resync or window.offset == 0:  # no valid header at all: not a tar
                    raise error
                damaged_at = window.offset
                resumed = window.resync(damaged_at + BLOCK)
                long_name, need = None, BLOCK
                yield _Damage(damaged_at, resumed, error)
    finally:
        window.release()


def _starts_key(json_name: str, last_name: str) -> bool:
    """``KEY.json`` has a key of its own (no dot in it) that the member before it did not have."""
    key = json_name[:-5]
    base = key.rfind("/") + 1
    return len(key) > base and "." not in key[base:] and not last_name.startswith(key + ".")


class FrameMemberError(Exception):
    """A frame member of a sample read by offsets is not what its ``frame_bytes`` promised."""


def _plain_header(buf, at: int, end: int) -> tuple[str, int] | None:
    """(name, size) of the single-block regular-file header at ``at`` (checksum checked), else None."""
    if at + BLOCK > end:
        return None
    header = buf[at:at + BLOCK]
    if header[TYPEFLAG] not in REGULAR_TYPES or (header[PREFIX] and header[MAGIC:MAGIC + 5] == b"ustar"):
        return None
    try:
        size, checksum = _octal(header[SIZE:SIZE + 12]), _octal(header[CHKSUM:CHKSUM + 8])
    except ValueError:
        return None
    if not 0 <= size <= MAX_MEMBER_BYTES:
        return None
    if checksum != sum(header) - sum(header[CHKSUM:CHKSUM + 8]) + 8 * ord(" "):
        return None
    return header[:100].partition(b"\0")[0].decode("utf-8", "surrogateescape"), size


def _names_frame(name: str, key: str, index: int) -> bool:
    """``name`` is ``KEY.N.jpg`` with N = ``index`` zero-padded any way (as the planner takes
    names); the shard stage pads every index of a sample to 4 digits, or to the width of its
    last index past 9,999 frames."""
    digits = name[len(key) + 1:-4]
    return name.startswith(f"{key}.") and name.endswith(".jpg") and digits.isdecimal() and int(digits) == index


class SampleFrames:
    """The frames of a sample read by offsets: ``len()`` is the number of frames; ``frames[i]``
    (or :meth:`take` for several) reads frame i with its header, checks the header (checksum, name
    ``KEY.NNNN.jpg``, size) and returns the data as bytes, or raises FrameMemberError. Only the
    frames asked for are ever read. Names as the shard stage writes them are checked fastest.

    Frames are read with ``pread``. When shards were mapped, reading frames from the mapping was
    measured slower: the first touch of each mapped page faults (~4-5 us per fault here, ~1 per
    frame) and unmapping pages costs too; the kernel's copy of the ~15% of a sample's bytes that a
    plan keeps is cheaper."""

    __slots__ = ("key", "sizes", "shard", "header_offsets")

    def __init__(self, key: str, sizes: list[int], shard: _ShardDescriptor, header_offsets: list[int]):
        self.key = key
        self.sizes = sizes  # frame_bytes
        self.shard = shard
        self.header_offsets = header_offsets  # frame i's header is at this offset of the shard

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, index: int) -> bytes:
        if not 0 <= index < len(self.sizes):
            raise IndexError(f"frame {index} of {len(self.sizes)}")
        return self.take([index])[0]

    def take(self, indices: list[int]) -> list[bytes]:
        """The data of frames ``indices`` (each in range), their headers checked all at once."""
        sizes = [self.sizes[i] for i in indices]
        fd, offsets = self.shard.fd, self.header_offsets
        # Header and data in two reads, so the data lands in the bytes object the plan keeps
        # (one read of both and a copy out of it measured the same).
        header_bytes = b"".join([os.pread(fd, BLOCK, offsets[i]) for i in indices])
        datas = [os.pread(fd, size, offsets[i] + BLOCK) for i, size in zip(indices, sizes)]
        if len(header_bytes) != BLOCK * len(indices) or list(map(len, datas)) != sizes:  # the file shrank in place
            raise FrameMemberError("a frame lies past the end of the shard")
        headers = np.frombuffer(header_bytes, np.uint8).reshape(-1, BLOCK)
        checksums = headers.sum(1, dtype=np.uint32) - headers[:, CHKSUM:CHKSUM + 8].sum(1, dtype=np.uint32) \
            + 8 * ord(" ")  # (n,)
        # The headers as tarfile (and the shard stage) spell them, compared at once; any other
        # spelling gets the general parse.
        key, digits = self.key.encode("utf-8", "surrogateescape"), max(4, len(str(len(self.sizes) - 1)))
        spelled = b"".join([(b"%s.%0*d.jpg" % (key, digits, i)).ljust(100, b"\0")[:100]
                            + b"%011o\0%06o\0" % (size, checksum) + b"0\0"
                            for i, size, checksum in zip(indices, sizes, checksums.tolist())])
        found = headers[:, USUAL_FIELDS].tobytes()
        if found != spelled:
            row = len(USUAL_FIELDS)
            for j, i in enumerate(indices):
                if found[j * row:(j + 1) * row] == spelled[j * row:(j + 1) * row]:
                    continue
                header = _plain_header(header_bytes, j * BLOCK, (j + 1) * BLOCK)
                if header is not None and _names_frame(header[0], self.key, i) and \
                        -(-header[1] // BLOCK) == -(-sizes[j] // BLOCK):  # frame_bytes off inside the padding:
                    datas[j] = os.pread(fd, header[1], offsets[i] + BLOCK)  # the header rules
                    continue
                raise FrameMemberError(f"frame {i}: expected a {sizes[j]}-byte {self.key}.{i:04d}.jpg, "
                                       f"found {header or 'an invalid header'}")
        return datas


def _sample_by_offsets(window: _StreamWindow, last_name: str, url: str) -> tuple[dict, int] | None:
    """The sample whose ``KEY.json`` header is at the window's offset in a local shard, read by
    offsets, and the stream offset where the member after it starts; None when the layout does not
    allow that (then it is read member by member).

    The shard stage writes ``KEY.json`` first, with ``frame_bytes`` (each frame's data length),
    then ``KEY.0000.jpg``, ``KEY.0001.jpg``, ... with single-block headers, so frame i's header is
    at ``json_end + sum_{j<i} (512 + n_j rounded up to 512)``. Checked before jumping there: the
    JSON's header, that ``frame_bytes`` is a list of non-negative ints as long as ``frame_times``,
    the LAST frame's header (checksum, name, size), and that the block after it is a header of
    another key's member, the end-of-archive block or the end of the file. The frames in between
    are checked only when the planner takes one (SampleFrames). Everything is read with ``pread``
    (or from the window's chunk when it holds it): a few small reads per sample.
    """
    at, end = window.offset, window.size
    block = window.peek(at, BLOCK)
    name_end = block.find(b"\0", 0, 100) % 101  # as in _member_batches
    if block[name_end - 5:name_end] != b".json":  # most scans start inside a sample: no header checks
        return None
    header = _plain_header(block, 0, len(block))
    if header is None or not header[0].endswith(".json") or not _starts_key(header[0], last_name):
        return None
    name, json_size = header
    key = name[:-5]
    json_at = at + BLOCK
    if json_at + json_size > end:
        return None
    json_bytes = window.peek(json_at, json_size)
    if len(json_bytes) != json_size:  # the file shrank since it was opened
        return None
    try:
        meta = json.loads(json_bytes)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    sizes = meta.get("frame_bytes") if isinstance(meta, dict) else None
    times = meta.get("frame_times") if isinstance(meta, dict) else None
    if not (isinstance(sizes, list) and isinstance(times, list) and len(sizes) == len(times)
            and set(map(type, sizes)) <= {int}):  # exact type: no bools
        return None
    if sizes and min(sizes) < 0:
        return None
    first_frame = json_at + (-json_size % BLOCK) + json_size
    header_offsets = []  # of each frame (a plain loop: numpy's per-call costs were more)
    next_at = first_frame
    for size in sizes:
        header_offsets.append(next_at)
        next_at += BLOCK + ((size + BLOCK - 1) & -BLOCK)  # header + data padded to whole blocks
    if next_at > end:
        return None
    if sizes:
        last = _plain_header(window.peek(header_offsets[-1], BLOCK), 0, BLOCK)
        if last is None or last[1] != sizes[-1] or not _names_frame(last[0], key, len(sizes) - 1):
            return None
    following = window.peek(next_at, BLOCK) if next_at < end else ZERO_BLOCK
    if following != ZERO_BLOCK:
        following = _plain_header(following, 0, len(following))
        if following is None or following[0].startswith(key + "."):
            return None
    frames = SampleFrames(key, sizes, window.shard, header_offsets)
    return {"__key__": key, "__url__": url, "json": json_bytes, "__meta__": meta, "__frames__": frames}, next_at


def split_member_name(name: str) -> tuple[str | None, str | None]:
    """(key, extension) as webdataset's ``base_plus_ext``: the key ends at the first dot of the
    base name (``dir/KEY.0001.jpg`` -> ``dir/KEY``, ``0001.jpg``). A string split instead of
    webdataset's regular expression (a few us per member); odd names go to the regex itself."""
    base = name.rfind("/") + 1
    dot = name.find(".", base)
    if dot <= base:
        return base_plus_ext(name)
    return name[:dot], name[dot + 1:]


def _error(reason: str, url: str, key: str | None, detail) -> dict:
    return {"__error__": reason, "__url__": url, "__key__": key, "__detail__": str(detail)[:300]}


def read_shard(url: str, timeouts: HttpTimeouts | None = None) -> Iterator[dict]:
    """Samples of one tar shard, in member order; failures become error records.

    A key seen earlier in the same shard is not yielded again: each repeat is one
    ``duplicate_key`` record (whichever copy is intact, the first one is the one used).
    """
    seen: set[str] = set()
    items = _shard_items(url, timeouts or HttpTimeouts.of(DataConfig()))
    try:
        for item in items:
            key = item["__key__"]
            if "__error__" not in item:
                if key in seen:
                    item = _error("duplicate_key", url, key, "the key appears again later in the shard")
                seen.add(key)
            yield item
    finally:  # a consumer that stops early: the stream is released now, not when collected
        items.close()


def _shard_items(url: str, timeouts: HttpTimeouts) -> Iterator[dict]:
    """read_shard's items before repeated keys are filtered out.

    A shard that cannot be opened or is not a tar yields one ``shard_open_error`` record; a shard
    that breaks part-way (truncated download, corrupt header) yields its complete samples, then one
    ``truncated_tar`` record for the sample being read when it broke; an http(s) shard that times
    out (see :class:`HttpTimeouts`) likewise ends in one ``shard_timeout`` record. A bad header
    (checksum, size, pax record) is one ``bad_tar_header`` record and reading goes on at the next
    valid header. The record stands for the sample the header's name gives when its checksum
    holds, else for the sample being read when it was met (which may have been complete); a bad
    pax record drops no sample by itself. A sample whose headers all lay in the damaged bytes
    cannot be seen, so it is not counted; the record's detail says how many bytes were skipped. Samples of a local shard
    may come read by offsets (see the module docstring); a corrupt header among the frames such
    a sample jumped over surfaces only if a plan takes that frame (FrameMemberError), and the rest
    of the shard is still read.
    """
    try:
        stream = open_shard(url, timeouts)
    except Exception as exc:  # gopen raises many types (OSError, ValueError, IOError from pipes)
        yield _error("shard_timeout" if isinstance(exc, ShardTimeout) else "shard_open_error", url, None, exc)
        return
    current: dict | None = None
    failure: dict | None = None
    close_errors: list[Exception] = []
    n_members = 0
    try:
        try:
            member_prefix, prefix_len = "", 0  # "KEY." of ``current``
            cut: str | None = None  # the key of a sample cut by damage: its members after it are dropped too
            for batch in _member_batches(stream, url=url, resync=True):
                if type(batch) is _Damage:
                    error = batch.error
                    if error.pax:  # a bad pax record: the member it describes keeps its plain name
                        yield _error("bad_tar_header", url, None, batch)
                        continue
                    # A header whose checksum holds names its member: its sample is cut (``current``,
                    # when it is that one, else complete as far as the tar shows). Otherwise the
                    # damaged header may be any member of ``current`` (complete or not: it cannot
                    # be told) or of a sample that follows (counted by its own reason then).
                    named = split_member_name(error.member)[0] if error.member is not None else None
                    if current is not None and named is not None and named != current["__key__"]:
                        yield current
                    elif current is not None:
                        named = current["__key__"]
                    cut, current = named, None
                    yield _error("bad_tar_header", url, cut, batch)
                    continue
                if type(batch) is dict:  # a whole sample, read by offsets
                    n_members += 1
                    if current is not None:
                        yield current
                        current = None
                    if batch["__key__"] != cut:
                        yield batch
                    cut = None
                    continue
                n_members += len(batch)
                for name, data in batch:
                    if current is not None and name.startswith(member_prefix) \
                            and "/" not in (suffix := name[prefix_len:]):
                        pass  # another member of ``current``: what split_member_name gives, cheaper
                    else:
                        key, suffix = split_member_name(name)
                        if key is None or key == cut:
                            continue
                        cut = None
                        if current is not None and key != current["__key__"]:
                            yield current
                            current = None
                        if current is None:
                            current = {"__key__": key, "__url__": url}
                            member_prefix = key + "."
                            prefix_len = len(member_prefix)
                    suffix = suffix.lower()
                    if suffix in current:
                        yield _error("duplicate_member", url, current["__key__"], f"{name} appears twice")
                        current = None
                        continue
                    # Frames stay views into the read chunks: the planner copies the few
                    # it keeps; anything else (the JSON) goes to consumers that want bytes.
                    current[suffix] = data if suffix.endswith(".jpg") else bytes(data)
        except Exception as exc:  # TarFormatError, pipe errors, network errors...
            reason = "shard_timeout" if isinstance(exc, ShardTimeout) else \
                "truncated_tar" if n_members else "shard_open_error"
            if isinstance(exc, TarEndMissing):  # cut between members: ``current`` is as complete as the tar shows
                failure = _error(reason, url, None, exc)
            else:
                failure = _error(reason, url, current["__key__"] if current else None, exc)
                current = None
    finally:
        # No yield in here: a consumer that stops early closes this generator, and the stream
        # (a pipe's process included) must be released without producing more items.
        try:
            stream.close()
        except Exception as exc:  # a pipe: command that exited non-zero reports it on close
            close_errors.append(exc)
    if current is not None:  # with a failure, only after TarEndMissing
        yield current
    if failure is not None:
        yield failure
    if failure is None:
        for exc in close_errors:
            yield _error("shard_read_error", url, None, exc)
