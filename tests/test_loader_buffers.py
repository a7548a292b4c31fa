"""Batch buffers are reused only after the consumer dropped the batch: kept batches stay intact."""
from __future__ import annotations

from itertools import islice

import pytest
import torch

from lfvila.data import DataConfig, build_loader
from lfvila.testing import write_synthetic_shards


def cfg_for(paths, bert_dir, num_workers: int) -> DataConfig:
    return DataConfig(train_shards=paths, batch_size=2, num_workers=num_workers, crop=(24, 40), max_tokens=16,
                      shuffle_buffer=4, resampled=True, bert_dir=str(bert_dir), pin_memory=False)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_kept_batches_are_never_overwritten_and_dropped_buffers_are_reused(tmp_path, bert_dir, num_workers):
    paths = write_synthetic_shards(tmp_path, n_samples=8, samples_per_shard=2, n_sentences=(2, 6))
    cfg = cfg_for(paths, bert_dir, num_workers)
    n_batches = 12
    # Reference: each video copied the moment it arrives, then dropped (buffers get reused).
    copies, pointers = [], []
    for batch in islice(build_loader(cfg, "train"), n_batches):
        copies.append(batch["video"].clone())
        pointers.append(batch["video"].data_ptr())
        del batch
    # More batches than buffers in the ring, so dropping them must have led to reuse.
    assert len(set(pointers)) < n_batches
    # Kept: every batch held in a list until the end must still hold its own frames.
    kept = [batch["video"] for batch in islice(build_loader(cfg, "train"), n_batches)]
    assert len({v.data_ptr() for v in kept}) == n_batches
    for video, copy in zip(kept, copies):
        assert torch.equal(video, copy)
    # Views outlive their batch dict: a slice of each video is kept, the rest dropped.
    views = [batch["video"][:1, :, :2] for batch in islice(build_loader(cfg, "train"), n_batches)]
    for view, copy in zip(views, copies):
        assert torch.equal(view, copy[:1, :, :2])


def test_canvas_grows_keeping_the_rows_already_rendered(bert_dir):
    """A sample with larger frames than the batch's buffer (after a skipped sample's replacement)
    moves the rows rendered so far into a larger buffer, zero padded; the batch shape is the
    largest frame size of its samples."""
    from lfvila.data.collate import BatchBuffers, BatchCanvas

    cfg = DataConfig(batch_size=3, n_sentences=1, frames_per_sentence=2, bert_dir=str(bert_dir))
    canvas = BatchCanvas(BatchBuffers(cfg, 2))
    canvas.reserve([(4, 6)])
    canvas.row(0, (4, 6))[:, :4, :6] = 7
    canvas.row(1, (5, 8))[:, :5, :8] = 9  # grows to (5, 8)
    frames, _ = canvas.hand_over()
    assert frames.shape == (3, 2, 5, 8, 3)
    assert (frames[0, :, :4, :6] == 7).all() and (frames[0, :, 4:] == 0).all() and (frames[0, :, :, 6:] == 0).all()
    assert (frames[1] == 9).all()
