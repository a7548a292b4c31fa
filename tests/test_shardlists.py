"""Shard assignment (lfvila.data.shardlists): pure functions of the seed, pass, epoch and global worker."""
from __future__ import annotations

from collections import Counter
from itertools import islice

import pytest

from lfvila.data.shardlists import epoch_order, expand_shards, fingerprint, worker_shards

URLS = expand_shards("/data/train-{000000..000010}.tar")


def test_brace_specs_and_lists_expand_to_the_same_urls():
    assert len(URLS) == 11 and URLS[0] == "/data/train-000000.tar" and URLS[-1] == "/data/train-000010.tar"
    assert expand_shards("/a-{0..1}.tar::/b.tar") == ["/a-0.tar", "/a-1.tar", "/b.tar"]
    assert expand_shards(["/a-{0..1}.tar", "/b.tar"]) == ["/a-0.tar", "/a-1.tar", "/b.tar"]


def test_fingerprint_changes_with_the_shard_list_and_its_order():
    assert fingerprint(URLS) == fingerprint(list(URLS))
    assert len({fingerprint(URLS), fingerprint(URLS[:-1]), fingerprint(URLS[::-1])}) == 3


@pytest.mark.parametrize("n_workers", [1, 3, 4, 11, 12])
def test_one_epoch_covers_every_shard_once_across_workers(n_workers):
    read = [u for w in range(n_workers)
            for u in worker_shards(URLS, seed=7, pass_index=0, worker=w, n_workers=n_workers, mode="epoch",
                                   shuffle=True)]
    assert Counter(read) == Counter(URLS)


def test_epochs_reshuffle_reproducibly_and_the_same_on_every_worker():
    orders = [epoch_order(URLS, 7, 0, epoch, shuffle=True) for epoch in range(3)]
    assert all(sorted(o) == URLS for o in orders) and len({tuple(o) for o in orders}) == 3
    assert orders[1] == epoch_order(URLS, 7, 0, 1, shuffle=True)  # a stable seed, not hash()
    assert epoch_order(URLS, 8, 0, 1, shuffle=True) != orders[1]
    assert epoch_order(URLS, 7, 0, 1, shuffle=False) == URLS
    # repeat mode: worker 1 of 2 reads its slice of epoch 0, then of epoch 1, ...
    stream = list(islice(worker_shards(URLS, seed=7, pass_index=0, worker=1, n_workers=2, mode="repeat",
                                       shuffle=True), 10))
    assert stream == (orders[0][1::2] + orders[1][1::2])[:10]


def test_resampled_streams_draw_with_replacement_per_worker():
    def draw(worker):
        return list(islice(worker_shards(URLS, seed=7, pass_index=0, worker=worker, n_workers=2,
                                         mode="resampled", shuffle=True), 50))

    assert draw(0) == draw(0) and draw(0) != draw(1)
    assert set(draw(0)) <= set(URLS) and len(set(draw(0))) < 50
