"""Which shards each (rank, worker) reads: shard specs -> URL lists, epoch orders, per-worker streams.

As webdataset's ``shardlists.py``, the one home of shard assignment. Every function is pure: the
shards a global worker reads follow from (seed, pass, epoch, global worker id, number of global
workers) alone, so streams are reproducible on any machine, never overlap within an epoch, and
replay exactly on resume (``data/loader.py``). The loader's global worker id is
``rank * num_workers + local worker``.
"""
from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from itertools import count

from webdataset.shardlists import expand_urls


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
