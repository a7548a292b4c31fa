"""Shard URLs -> grouped tar samples, with failures as records instead of exceptions.

Opening uses webdataset's ``gopen`` (local paths, ``file:``, ``pipe:CMD``, ``http(s)://`` through
curl, ...); members are read by :func:`iter_tar_members`, a minimal streaming ustar/pax/GNU
reader that reads 1 MiB at a time into one reused buffer and slices members out of it
(webdataset's ``tar_file_iterator`` goes through ``tarfile``'s stream mode, measured here at
~300 us per member, more than decoding the JPEGs a sample needs; BENCHMARKS.md). Grouping
members into samples is done here so a shard that breaks part-way ends in a counted record
instead of an exception. Every item this module yields is either a sample dict (``__key__``, ``__url__``, ``json``, ``NNNN.jpg``, ...) or an
error record ``{"__error__": reason, "__url__": url, "__key__": key_or_None, "__detail__": text}``.

Which shards a (rank, worker) reads is decided here too: :func:`worker_shards` is a pure function of
(seed, pass, epoch, global worker id), so streams are reproducible and never overlap.
"""
from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from itertools import count

from webdataset.gopen import gopen
from webdataset.shardlists import expand_urls
from webdataset.tariterators import base_plus_ext

BLOCK = 512
ZERO_BLOCK = b"\0" * BLOCK
REGULAR_TYPES = (b"0", b"\0", b"7")


class TarFormatError(Exception):
    """The byte stream is not (or stops being) a valid tar archive."""


def _octal(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 for large numbers
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0]
    return int(text, 8) if text.strip() else 0  # int() itself ignores surrounding spaces


def _pax_path(data: bytes) -> str | None:
    """The ``path`` record of a pax extended header ("LEN path=VALUE\n" records)."""
    pos = 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1:pos + length - 1].partition(b"=")
        if key == b"path":
            return value.decode("utf-8", "surrogateescape")
        pos += length
    return None


class _BufferedBlocks:
    """Tar blocks of a byte stream, read in large chunks into one reused buffer.

    A long-form sample has ~200 members, most of them frames the sample does not use; one read
    call per header and per payload cost more than decoding the frames that are used (measured in
    BENCHMARKS.md). Here a read fills ``chunk_bytes`` at a time into a buffer allocated once
    (no page faults on fresh memory per read), and members are sliced out of it. Works the same for
    local files, ``pipe:`` commands and downloads.
    """

    def __init__(self, stream, chunk_bytes: int = 1 << 20):
        self.stream = stream
        self.readinto = getattr(stream, "readinto", None)  # webdataset's Pipe has only read()
        self.buffer = bytearray(chunk_bytes)
        self.view = memoryview(self.buffer)
        self.start = self.end = 0  # unread bytes are buffer[start:end]

    def _fill(self, n: int) -> bool:
        """Make ``n`` unread bytes available; False when the stream ends first."""
        if self.end - self.start >= n:
            return True
        rest = bytes(self.view[self.start:self.end])
        if n > len(self.buffer):  # a member larger than the chunk: grow (a memoryview pins the size)
            self.buffer = bytearray(max(n, 2 * len(self.buffer)))
            self.view = memoryview(self.buffer)
        self.view[:len(rest)] = rest
        self.start, self.end = 0, len(rest)
        while self.end < n:
            if self.readinto is not None:
                got = self.readinto(self.view[self.end:])
            else:
                data = self.stream.read(len(self.buffer) - self.end)
                got = len(data)
                self.view[self.end:self.end + got] = data
            if not got:
                return False
            self.end += got
        return True

    def header(self) -> bytes:
        """The next 512-byte block, or what is left of the stream when fewer remain."""
        self._fill(BLOCK)
        start = self.start
        self.start = min(start + BLOCK, self.end)
        return bytes(self.view[start:self.start])

    def payload(self, size: int) -> bytes:
        """The member's ``size`` data bytes; its padding to the next block is consumed too."""
        padded = size + (-size % BLOCK)
        if not self._fill(padded):
            raise TarFormatError("unexpected end of data in a member")
        start = self.start
        self.start += padded
        return bytes(self.view[start:start + size])


def iter_tar_members(stream, chunk_bytes: int = 1 << 20) -> Iterator[tuple[str, bytes]]:
    """(name, data) of each regular file of a tar byte stream, in order.

    Handles ustar (with prefix), GNU long names and pax ``path`` records; other member types are
    skipped. Raises TarFormatError on a bad header checksum or a stream that ends inside a member,
    and on an empty stream (a failed ``pipe:`` command or download yields no bytes at all).
    """
    return _iter_members(_BufferedBlocks(stream, chunk_bytes))


def _iter_members(blocks) -> Iterator[tuple[str, bytes]]:
    long_name: str | None = None
    first = True
    while True:
        header = blocks.header()
        if not header:
            if first:
                raise TarFormatError("empty file")
            return  # no end-of-archive blocks: tolerated, as tarfile does
        first = False
        if len(header) < BLOCK:
            raise TarFormatError("unexpected end of data in a header")
        if header == ZERO_BLOCK:
            return
        checksum_field = header[148:156]
        try:
            stored_sum = _octal(checksum_field)
            size = _octal(header[124:136])
        except ValueError:
            raise TarFormatError("invalid header") from None
        # The checksum counts its own 8-byte field as spaces (8 * 32 = 256).
        if stored_sum != sum(header) - sum(checksum_field) + 256:
            raise TarFormatError("invalid header checksum")
        data = blocks.payload(size)
        kind = header[156:157]
        if kind == b"L":
            long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            continue
        if kind == b"x":
            long_name = _pax_path(data) or long_name
            continue
        name = long_name
        long_name = None
        if kind not in REGULAR_TYPES:
            continue
        if name is None:
            name = header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            if header[257:262] == b"ustar" and header[345:346] != b"\0":
                prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                name = f"{prefix}/{name}"
        yield name, data


def split_member_name(name: str) -> tuple[str | None, str | None]:
    """(key, extension) as webdataset's ``base_plus_ext``: the key ends at the first dot of the
    base name (``dir/KEY.0001.jpg`` -> ``dir/KEY``, ``0001.jpg``). A string split instead of
    webdataset's regular expression (a few us per member); odd names go to the regex itself."""
    base = name.rfind("/") + 1
    dot = name.find(".", base)
    if dot <= base:
        return base_plus_ext(name)
    return name[:dot], name[dot + 1:]


def expand_shards(spec: str | list[str]) -> list[str]:
    """A brace pattern (``a-{000..009}.tar``, several joined by ``::``) or a list -> URLs."""
    urls = expand_urls(spec) if isinstance(spec, str) else [u for s in spec for u in expand_urls(s)]
    return [u for u in urls if u]


def fingerprint(urls: list[str]) -> str:
    """A short digest of the shard list, stored with the loader state to detect a changed corpus."""
    return hashlib.sha1("\n".join(urls).encode()).hexdigest()[:16]


def _rng(*parts) -> random.Random:
    # random.Random seeded from a string is stable across processes and Python runs (unlike hash()).
    return random.Random("/".join(str(p) for p in parts))


def epoch_order(urls: list[str], seed: int, pass_index: int, epoch: int, shuffle: bool) -> list[str]:
    """The shard order of one epoch, identical on every rank and worker."""
    order = list(urls)
    if shuffle:
        _rng("epoch", seed, pass_index, epoch).shuffle(order)
    return order


def worker_shards(urls: list[str], *, seed: int, pass_index: int, worker: int, n_workers: int,
                  mode: str, shuffle: bool) -> Iterator[str]:
    """The shard URLs global worker ``worker`` of ``n_workers`` reads, in order.

    mode "epoch": one epoch; "repeat": epochs forever (each reshuffled); "resampled": shards drawn
    with replacement forever. In "epoch"/"repeat" the workers take disjoint slices of each epoch's
    order, so one epoch covers every shard exactly once across the job.
    """
    if mode == "resampled":
        rng = _rng("resampled", seed, pass_index, worker)
        while True:
            yield urls[rng.randrange(len(urls))]
    epochs = range(1) if mode == "epoch" else count()
    for epoch in epochs:
        yield from epoch_order(urls, seed, pass_index, epoch, shuffle)[worker::n_workers]


def _error(reason: str, url: str, key: str | None, detail) -> dict:
    return {"__error__": reason, "__url__": url, "__key__": key, "__detail__": str(detail)[:300]}


def read_shard(url: str) -> Iterator[dict]:
    """Samples of one tar shard, in member order; failures become error records.

    A shard that cannot be opened or is not a tar yields one ``shard_open_error`` record; a shard
    that breaks part-way (truncated download, corrupt header) yields its complete samples, then one
    ``truncated_tar`` record for the sample being read when it broke.
    """
    try:
        stream = gopen(url, "rb")
    except Exception as exc:  # gopen raises many types (OSError, ValueError, IOError from pipes)
        yield _error("shard_open_error", url, None, exc)
        return
    current: dict | None = None
    failure: dict | None = None
    close_errors: list[Exception] = []
    n_members = 0
    try:
        try:
            for name, data in iter_tar_members(stream):
                n_members += 1
                key, suffix = split_member_name(name)
                if key is None:
                    continue
                suffix = suffix.lower()
                if current is not None and key != current["__key__"]:
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": key, "__url__": url}
                if suffix in current:
                    yield _error("duplicate_member", url, key, f"{name} appears twice")
                    current = None
                    continue
                current[suffix] = data
        except Exception as exc:  # TarFormatError, pipe errors, network errors...
            reason = "truncated_tar" if n_members else "shard_open_error"
            failure = _error(reason, url, current["__key__"] if current else None, exc)
            current = None
    finally:
        # No yield in here: a consumer that stops early closes this generator, and the stream
        # (a pipe's process included) must be released without producing more items.
        try:
            stream.close()
        except Exception as exc:  # a pipe: command that exited non-zero reports it on close
            close_errors.append(exc)
    if failure is not None:
        yield failure
    elif current is not None:
        yield current
    if failure is None:
        for exc in close_errors:
            yield _error("shard_read_error", url, None, exc)
