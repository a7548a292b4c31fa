"""The batch buffer protocol: frames are rendered into reused, shared-memory batch buffers.

Writing into a freshly allocated ~94 MB buffer costs a page fault per 4 KiB page; on the
benchmark VM that was ~30 % of the loader's per-sample work (BENCHMARKS.md), so each stream keeps
a small ring of buffers (:class:`BatchBuffers`) and fills one batch at a time (:class:`BatchCanvas`).

Invariants (what makes reuse safe):

1. A buffer is written only while no consumer can read it. In the consuming process
   (``num_workers=0``) that is when no tensor but the ring's holds its storage (torch's storage
   use count, :func:`storage_users`). In a DataLoader worker the batch reaches the main process
   through shared memory; its slot's entry of the shared int8 ``release_flags`` is 1 from the
   moment the worker lends it (:meth:`BatchBuffers.lend`) until the main process, which watches
   the storage the same way (:class:`BufferReleases`), sees the batch dropped (or copied into
   pinned memory) and clears it.
2. When the use count cannot be read (a torch build without ``_storage_Use_Count``), or a worker
   has no flags, nothing is reused: every batch gets a fresh buffer.
3. A consumer that keeps batches (a list of them, a prefetching trainer) therefore only costs
   fresh allocations, never an overwritten batch; a ring slot that is still held is skipped.
4. Flags are indexed ``worker * buffers_per_worker(cfg) + slot``: each local worker owns its range.
"""
from __future__ import annotations

import math

import torch
from torch.utils.data import get_worker_info

from lfvila.data.config import DataConfig

# Batch buffers each stream reuses: the consumer holds the current batch while the next is made,
# a worker has up to prefetch_factor batches in flight, plus slack for batches the main process
# has not yet seen released. Each is one batch (~94 MB by default).
IN_PROCESS_BUFFERS = 3


def buffers_per_worker(cfg: DataConfig) -> int:
    return cfg.prefetch_factor + 3


def new_video_buffer(cfg: DataConfig, frame_hw: tuple[int, int] | None = None) -> torch.Tensor:
    """An empty batch of frames, uint8 ``(B, T, H, W, 3)``; H x W is ``frame_hw`` (default: the crop).

    In a DataLoader worker it is allocated in shared memory, as torch's default_collate does, so
    handing the batch to the main process sends a handle instead of copying ~94 MB.
    """
    shape = (cfg.batch_size, cfg.n_frames, *(frame_hw or cfg.crop), 3)
    return storage_view(new_storage(math.prod(shape)), 0, shape)


def new_storage(nbytes: int) -> torch.UntypedStorage:
    if get_worker_info() is None:
        return torch.UntypedStorage(nbytes)
    return torch.UntypedStorage._new_shared(nbytes)


def storage_view(storage: torch.UntypedStorage, offset: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Contiguous uint8 ``shape`` at byte ``offset`` of ``storage``."""
    return torch.empty(0, dtype=torch.uint8).set_(storage, offset, shape)


def storage_users(storage: torch.UntypedStorage) -> int | None:
    """How many tensors/storage objects hold ``storage`` (this one included); None when this torch
    build cannot tell (then buffers are never reused)."""
    use_count = getattr(torch._C, "_storage_Use_Count", None)
    return None if use_count is None else use_count(storage._cdata)


class BatchBuffers:
    """A stream's small ring of batch frame buffers, reused once the consumer has dropped them
    (the invariants are the module's); ``release_flags`` are the shared flags of
    :class:`BufferReleases`, this stream's slots starting at ``first_slot``.
    """

    def __init__(self, cfg: DataConfig, size: int, release_flags: torch.Tensor | None = None, first_slot: int = 0):
        self.cfg = cfg
        self.in_worker = get_worker_info() is not None
        self.flags = release_flags.numpy() if release_flags is not None else None
        self.first_slot = first_slot
        self.can_reuse = storage_users(torch.UntypedStorage(1)) is not None and (
            not self.in_worker or self.flags is not None)
        self.size = size if self.can_reuse else 0
        self.storages: list[torch.UntypedStorage] = []

    def take(self, nbytes: int) -> tuple[int, torch.UntypedStorage]:
        """(slot or -1 for an unpooled buffer, a storage of at least ``nbytes`` to render into).
        A free buffer too small is replaced."""
        for slot, storage in enumerate(self.storages):
            if self._free(slot, storage):
                if storage.nbytes() < nbytes:
                    self.storages[slot] = storage = new_storage(nbytes)
                return slot, storage
        if len(self.storages) < self.size:
            self.storages.append(new_storage(nbytes))
            return len(self.storages) - 1, self.storages[-1]
        return -1, new_storage(nbytes)

    def _free(self, slot: int, storage: torch.UntypedStorage) -> bool:
        if storage_users(storage) != 1:  # a batch (or a view of it) of this process still holds it
            return False
        return not self.in_worker or self.flags[self.first_slot + slot] == 0

    def lend(self, slot: int) -> int | None:
        """Mark ``slot``'s buffer as handed to the consumer; returns the release-flag index the
        consumer clears when done (None for in-process or unpooled buffers)."""
        if slot < 0 or not self.in_worker:
            return None
        self.flags[self.first_slot + slot] = 1
        return self.first_slot + slot


class BatchCanvas:
    """The frames of the batch being filled, in one buffer taken from the ring: sample i's frames
    are one contiguous uint8 ``(T, h_i, w_i, 3)`` region right after sample i-1's.

    With ``resize_on: loader`` every region is the crop size, so the buffer is one contiguous
    ``(B, T, H, W, 3)`` batch. With ``resize_on: device`` each region has its sample's decoded frame
    size: frames are decoded straight into place, whatever their width, and nothing is padded.
    """

    def __init__(self, buffers: BatchBuffers):
        self.buffers = buffers
        self.cfg = buffers.cfg
        self.slot, self.storage = -1, None
        self.regions: list[tuple[int, tuple[int, ...]]] = []  # (byte offset, (T, h, w, 3)) per sample

    def reserve(self, sizes: list[tuple[int, int]]) -> None:
        """Make room for a batch of samples of at most these frame sizes (the loader passes a whole
        chunk's sizes before rendering it, so the buffer is taken once, large enough)."""
        if sizes:
            self._ensure(self.cfg.batch_size * self.cfg.n_frames * max(h * w for h, w in sizes) * 3)

    def row(self, index: int, hw: tuple[int, int]) -> torch.Tensor:
        """Sample ``index``'s ``(T, h, w, 3)`` region (samples are rendered in order; a sample that
        failed is replaced by the next one at the same index)."""
        del self.regions[index:]
        offset = sum(math.prod(shape) for _, shape in self.regions)
        shape = (self.cfg.n_frames, *hw, 3)
        self._ensure(offset + math.prod(shape))
        self.regions.append((offset, shape))
        return storage_view(self.storage, offset, shape)

    def _ensure(self, nbytes: int) -> None:
        if self.storage is not None and self.storage.nbytes() >= nbytes:
            return
        old, (self.slot, self.storage) = self.storage, self.buffers.take(nbytes)
        if old is not None and self.regions:  # samples already rendered move along (rare: see reserve)
            used = sum(math.prod(shape) for _, shape in self.regions)
            storage_view(self.storage, 0, (used,)).copy_(storage_view(old, 0, (used,)))

    def hand_over(self, n_samples: int) -> tuple[list[torch.Tensor], int | None]:
        """(the ``(T, h, w, 3)`` frames of the first ``n_samples`` regions, the release-flag index the
        consumer clears) and start a new batch. A region past them belongs to a sample that failed
        while being rendered."""
        frames = [storage_view(self.storage, offset, shape) for offset, shape in self.regions[:n_samples]]
        release = self.buffers.lend(self.slot)
        self.slot, self.storage, self.regions = -1, None, []
        return frames, release


class BufferReleases:
    """The main process's half of the protocol (invariant 1): which worker buffers it may still be
    reading, and the shared flags it clears once their batches are dropped.

    ``flags`` is None without workers (the ring then watches the use count itself).
    """

    def __init__(self, cfg: DataConfig, n_workers: int):
        self.flags = (torch.zeros(n_workers * buffers_per_worker(cfg), dtype=torch.int8).share_memory_()
                      if cfg.num_workers > 0 else None)
        # Release flag index -> the worker buffer's storage as mapped here (kept, so the next batch
        # in that buffer reuses the mapping), and the flags whose batch may still be in use.
        self.mapped: dict[int, torch.UntypedStorage] = {}
        self.in_use: set[int] = set()

    def sweep(self) -> None:
        """Clear the flags of buffers whose batches nothing here holds any more."""
        for index in [i for i in self.in_use if storage_users(self.mapped[i]) == 1]:  # only `mapped` holds it
            self.flags[index] = 0
            self.in_use.discard(index)

    def received(self, release: int | None, batch: dict, pinned: bool) -> None:
        """A batch arrived from a worker, lent under flag ``release`` (None: not a pooled buffer)."""
        if release is None:
            return
        if "video" in batch and not pinned:  # a pinned batch is a copy: the buffer is free now
            video = batch["video"]  # one tensor, or one per sample (all views of one buffer)
            self.mapped[release] = (video[0] if isinstance(video, list) else video).untyped_storage()
            del video
            self.in_use.add(release)
        else:
            self.flags[release] = 0
