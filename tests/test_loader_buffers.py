"""Batch buffers are reused only after the consumer dropped the batch: kept batches stay intact."""
from __future__ import annotations

from itertools import islice

import pytest
import torch

from lfvila.data import DataConfig, build_loader
from lfvila.testing import write_synthetic_shards


def cfg_for(paths, bert_dir, num_workers: int, resize_on: str) -> DataConfig:
    return DataConfig(train_shards=paths, batch_size=2, num_workers=num_workers, crop=(24, 40), max_tokens=16,
                      shuffle_buffer=4, resampled=True, bert_dir=str(bert_dir), pin_memory=False,
                      resize_on=resize_on)


def per_sample(video) -> list[torch.Tensor]:
    """A batch's frames one tensor per sample: a list already (resize_on: device) or a 5D tensor."""
    return list(video) if isinstance(video, list) else list(video.unbind(0))


@pytest.mark.parametrize("resize_on", ["device", "loader"])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_kept_batches_are_never_overwritten_and_dropped_buffers_are_reused(tmp_path, bert_dir, num_workers,
                                                                           resize_on):
    paths = write_synthetic_shards(tmp_path, n_samples=8, samples_per_shard=2, n_sentences=(2, 6))
    cfg = cfg_for(paths, bert_dir, num_workers, resize_on)
    n_batches = 12
    # Reference: each video copied the moment it arrives, then dropped (buffers get reused).
    copies, pointers = [], []
    for batch in islice(build_loader(cfg, "train"), n_batches):
        copies.append([f.clone() for f in per_sample(batch["video"])])
        pointers.append(per_sample(batch["video"])[0].data_ptr())
        del batch
    # More batches than buffers in the ring, so dropping them must have led to reuse.
    assert len(set(pointers)) < n_batches
    # Kept: every batch held in a list until the end must still hold its own frames.
    kept = [batch["video"] for batch in islice(build_loader(cfg, "train"), n_batches)]
    assert len({per_sample(v)[0].data_ptr() for v in kept}) == n_batches
    for video, copy in zip(kept, copies):
        assert all(torch.equal(a, b) for a, b in zip(per_sample(video), copy, strict=True))
    # Views outlive their batch dict: a slice of each batch's first sample is kept, the rest dropped.
    views = [per_sample(batch["video"])[0][:, :2] for batch in islice(build_loader(cfg, "train"), n_batches)]
    for view, copy in zip(views, copies):
        assert torch.equal(view, copy[0][:, :2])


def test_canvas_packs_samples_and_grows_keeping_those_rendered(bert_dir):
    """Each sample's frames are one contiguous region after the previous sample's; a sample that
    does not fit the reserved buffer (a skipped sample's larger replacement) moves the samples
    rendered so far into a larger buffer."""
    from lfvila.data.buffers import BatchBuffers, BatchCanvas

    cfg = DataConfig(batch_size=3, n_sentences=1, frames_per_sentence=2, bert_dir=str(bert_dir))
    canvas = BatchCanvas(BatchBuffers(cfg, 2))
    canvas.reserve([(4, 6)])  # room for 3 samples of 4x6 frames
    canvas.row(0, (4, 6))[:] = 7
    canvas.row(1, (4, 6))[:] = 8
    canvas.row(1, (5, 8))[:] = 9  # sample 1 failed; its replacement is larger: the buffer grows
    canvas.row(2, (2, 3))[:] = 5
    frames, _ = canvas.hand_over(3)
    assert [tuple(f.shape) for f in frames] == [(2, 4, 6, 3), (2, 5, 8, 3), (2, 2, 3, 3)]
    assert [int(f.unique().item()) for f in frames] == [7, 9, 5]
    ends = [f.storage_offset() + f.numel() for f in frames]
    assert [f.storage_offset() for f in frames] == [0, *ends[:-1]]  # back to back in one storage
    assert len({f.untyped_storage().data_ptr() for f in frames}) == 1
