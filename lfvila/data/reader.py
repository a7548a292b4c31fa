"""Shard URLs -> grouped tar samples, with failures as records instead of exceptions.

Opening uses webdataset's ``gopen`` (local paths, ``file:``, ``pipe:CMD``, ``http(s)://`` through
curl, ...) and its key/extension split; members are read by :func:`iter_tar_members`, a minimal
streaming ustar/pax/GNU reader: webdataset's ``tar_file_iterator`` goes through ``tarfile``'s
stream mode, measured here at ~300 us per member, more than decoding the JPEGs a sample needs
(docs/bench-loader.md). Grouping members into samples is done here so a shard that breaks part-way
ends in a counted record instead of an exception. Every item this
module yields is either a sample dict (``__key__``, ``__url__``, ``json``, ``NNNN.jpg``, ...) or an
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
REGULAR_TYPES = (b"0", b"\0", b"7")


class TarFormatError(Exception):
    """The byte stream is not (or stops being) a valid tar archive."""


def _read_exact(stream, n: int) -> bytes:
    """``n`` bytes, or fewer only at end of stream (pipes and sockets return short reads)."""
    data = stream.read(n)
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = stream.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _octal(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 for large numbers
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


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


def iter_tar_members(stream) -> Iterator[tuple[str, bytes]]:
    """(name, data) of each regular file of a tar byte stream, in order.

    Handles ustar (with prefix), GNU long names and pax ``path`` records; other member types are
    skipped. Raises TarFormatError on a bad header checksum or a stream that ends inside a member,
    and on an empty stream (a failed ``pipe:`` command or download yields no bytes at all).
    """
    long_name: str | None = None
    first = True
    while True:
        header = _read_exact(stream, BLOCK)
        if not header:
            if first:
                raise TarFormatError("empty file")
            return  # no end-of-archive blocks: tolerated, as tarfile does
        first = False
        if len(header) < BLOCK:
            raise TarFormatError("unexpected end of data in a header")
        if header == b"\0" * BLOCK:
            return
        try:
            stored_sum = _octal(header[148:156])
        except ValueError:
            raise TarFormatError("invalid header") from None
        # The checksum counts its own 8-byte field as spaces (8 * 32 = 256).
        if stored_sum != sum(header) - sum(header[148:156]) + 256:
            raise TarFormatError("invalid header checksum")
        size = _octal(header[124:136])
        data = _read_exact(stream, size)
        padding = -size % BLOCK
        if len(data) < size or len(_read_exact(stream, padding)) < padding:
            raise TarFormatError("unexpected end of data in a member")
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
                key, suffix = base_plus_ext(name)
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
