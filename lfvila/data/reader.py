"""Shard URLs -> grouped tar samples, with failures as records instead of exceptions.

Opening uses webdataset's ``gopen`` (local paths, ``file:``, ``pipe:CMD``, ``http(s)://`` through
curl, ...) and its streaming ``tar_file_iterator``; grouping members into samples is done here so
a shard that breaks part-way ends in a counted record instead of an exception. Every item this
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
from webdataset.tariterators import base_plus_ext, tar_file_iterator


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
            for member in tar_file_iterator(stream):
                n_members += 1
                key, suffix = base_plus_ext(member["fname"])
                if key is None:
                    continue
                suffix = suffix.lower()
                if current is not None and key != current["__key__"]:
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": key, "__url__": url}
                if suffix in current:
                    yield _error("duplicate_member", url, key, f"{member['fname']} appears twice")
                    current = None
                    continue
                current[suffix] = member["data"]
        except Exception as exc:  # tarfile.ReadError, EOFError, zlib errors, pipe errors...
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
