"""Sample plans -> batch tensors: JPEG decoding, tokenization, stage-2 masking.

Batch contract (docs/loader.md): ``video`` uint8 ``(B, 3, T, H, W)`` (channels_last_3d
memory: RGB stays interleaved as decoded), ``text_ids`` and ``text_mask`` long ``(B, M, L)``,
``sentence_mask`` bool ``(B, M)``, ``keys``; stage 2 adds ``mlm_ids`` and ``mlm_labels``
``(B, M, L)`` (-100 where not masked). With ``resize_on: device`` (the default) ``video`` is a
list of B uint8 ``(3, T, h_i, w_i)``: each sample's decoded frames (sizes may differ), and
``crop`` (a :class:`DeviceCrop`) says what ``batch_to_device`` still does to them; with
``resize_on: loader`` it is one tensor at the crop size.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import simplejpeg
import torch
from torch.utils.data import get_worker_info

from lfvila.data.config import DataConfig
from lfvila.data.sampling import SamplePlan, SkipSample
from lfvila.data.transforms import box_to_pixels, dct_scale, resize_crop_frames, resize_crop_into
from lfvila.video.h264 import decode_selected

IGNORE_INDEX = -100  # label of tokens MLM does not predict (torch cross-entropy's ignore_index)


def _dct_sizing(frame_hw: tuple[int, int], factor: int) -> dict:
    # Pin the decoded size to exactly 1/factor: simplejpeg picks the smallest scale meeting both
    # the minimum factor and the minimum size.
    if factor == 1:
        return {}
    return {"min_factor": factor, "min_height": math.ceil(frame_hw[0] / factor),
            "min_width": math.ceil(frame_hw[1] / factor)}


def _decoded_hw(jpeg: bytes, frame_hw: tuple[int, int], factor: int) -> tuple[int, int]:
    """The decoded size of a sample's frame at DCT downscale ``factor``, from its JPEG header,
    which must give the JSON's ``frame_hw``: buffers are sized from the result, so a header
    claiming 65500x65500 is a skipped sample, not a 6 TB allocation (the JSON's size is bounded
    by ``data.max_frame_side``)."""
    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(jpeg)
        if (height, width) != tuple(frame_hw):
            raise SkipSample("frame_size_mismatch", f"frame 0: the JPEG header says {height}x{width}, "
                                                    f"the JSON {frame_hw[0]}x{frame_hw[1]}")
        if factor != 1:
            height, width, _, _ = simplejpeg.decode_jpeg_header(jpeg, **_dct_sizing(frame_hw, factor))
    except (ValueError, TypeError, OSError) as exc:
        raise SkipSample("corrupt_jpeg", f"frame 0: {exc}") from None
    return height, width


def _decode_into(data: bytes, index: int, out: np.ndarray, hw: tuple[int, int], sizing: dict, fast: bool) -> None:
    """Decode one JPEG into ``out`` (a contiguous array of at least ``hw`` x 3 bytes)."""
    try:
        decoded = simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=fast, fastupsample=fast,
                                         buffer=out, **sizing)
    except (ValueError, TypeError, OSError) as exc:
        # simplejpeg also raises ValueError when a (larger) frame does not fit the buffer.
        reason = "frame_size_mismatch" if "buffer" in str(exc).lower() else "corrupt_jpeg"
        raise SkipSample(reason, f"frame {index}: {exc}") from None
    if decoded.shape != (*hw, 3):
        raise SkipSample("frame_size_mismatch", f"frame {index}: {decoded.shape[:2]} != {hw}")


def decode_frames(jpegs: list[bytes], frame_hw: tuple[int, int], factor: int = 1, fast: bool = False) -> torch.Tensor:
    """Decode JPEGs to uint8 ``(N, H, W, 3)``, downscaled by ``factor`` in the DCT (see dct_scale).

    Raises SkipSample("corrupt_jpeg") for undecodable data and ("frame_size_mismatch") when a
    frame's size is not ``frame_hw`` (checked on the first frame's header before allocating).
    """
    sizing = _dct_sizing(frame_hw, factor)
    hw = _decoded_hw(jpegs[0], frame_hw, factor)
    # Decode straight into one (N, h, w, 3) array: no per-frame arrays to stack afterwards.
    frames = np.empty((len(jpegs), *hw, 3), dtype=np.uint8)
    for i, data in enumerate(jpegs):
        _decode_into(data, i, frames[i], hw, sizing, fast)
    return torch.from_numpy(frames)


def decode_h264_frames(plan: SamplePlan) -> Iterator[tuple[int, np.ndarray]]:
    """(index into the plan's distinct frames, RGB uint8 ``(H, W, 3)``) of an H.264 plan, in time
    order; raises SkipSample("corrupt_video") when its packets do not decode as the JSON says."""
    h264 = plan.h264
    slot = {frame: j for j, frame in enumerate(h264.wanted)}
    try:
        for frame, rgb in decode_selected(h264.packets, h264.packet_frames, slot.keys(), plan.frame_hw):
            yield slot[frame], rgb
    except ValueError as exc:
        raise SkipSample("corrupt_video", str(exc)[:200]) from None


def decoded_geometry(plan: SamplePlan, cfg: DataConfig) -> tuple[int, tuple[int, int]]:
    """(DCT downscale factor, decoded frame size) of ``plan``'s frames, from the first JPEG's header.
    H.264 frames decode at their stored size (factor 1; the decoder checks it against the JSON)."""
    if plan.h264 is not None:
        return 1, plan.frame_hw
    factor = dct_scale(plan.frame_hw, plan.box, cfg.crop)
    return factor, _decoded_hw(plan.jpegs[0], plan.frame_hw, factor)


def render_frames(plan: SamplePlan, cfg: DataConfig, out: np.ndarray, factor: int,
                  hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """``resize_on: device``: the sample's T frames decoded, uncropped, straight into ``out``
    uint8 ``(T, h, w, 3)`` (its own region of the batch buffer, sized ``hw``); returns the crop
    box (top, left, height, width) in pixels of the decoded frames. Repeated frames are copies."""
    if plan.h264 is not None:
        first_slot = {}
        for t, source in enumerate(plan.frame_ids):
            first_slot.setdefault(source, t)
        for source, rgb in decode_h264_frames(plan):
            np.copyto(out[first_slot[source]], rgb)
        for t, source in enumerate(plan.frame_ids):
            if first_slot[source] != t:
                np.copyto(out[t], out[first_slot[source]])
        return box_to_pixels(plan.box, hw)
    sizing = _dct_sizing(plan.frame_hw, factor)
    first_slot: dict[int, int] = {}  # jpeg index -> the slot it was decoded into
    for t, source in enumerate(plan.frame_ids):
        if source in first_slot:
            np.copyto(out[t], out[first_slot[source]])
            continue
        _decode_into(plan.jpegs[source], source, out[t], hw, sizing, cfg.jpeg_fast)
        first_slot[source] = t
    return box_to_pixels(plan.box, hw)


def render_video(plan: SamplePlan, cfg: DataConfig, out: torch.Tensor | None = None) -> torch.Tensor:
    """The sample's clip frames as uint8 ``(T, H, W, 3)``: decoded, cropped, resized, flipped.

    Written into ``out`` (a ``(T, H, W, 3)`` slot of the batch buffer) when given, so each frame
    is written once, by its resize (repeats, where clips are short, are copies).
    """
    if plan.h264 is not None:
        frames = torch.from_numpy(np.empty((len(plan.h264.wanted), *plan.frame_hw, 3), dtype=np.uint8))
        for source, rgb in decode_h264_frames(plan):
            frames[source] = torch.from_numpy(rgb)  # (N, h, w, 3)
    else:
        factor = dct_scale(plan.frame_hw, plan.box, cfg.crop)
        frames = decode_frames(plan.jpegs, plan.frame_hw, factor, cfg.jpeg_fast)  # (N, h, w, 3)
    if out is None:
        out = torch.empty((len(plan.frame_ids), *cfg.crop, 3), dtype=torch.uint8)
    if cfg.antialias:
        distinct = resize_crop_frames(frames, plan.box, cfg.crop, plan.flip, antialias=True)  # (N, 3, H, W)
        return torch.index_select(distinct.permute(0, 2, 3, 1), 0, torch.as_tensor(plan.frame_ids), out=out)
    resize_crop_into(frames.numpy(), plan.frame_ids, plan.box, plan.flip, out.numpy())
    return out


def new_video_buffer(cfg: DataConfig, frame_hw: tuple[int, int] | None = None) -> torch.Tensor:
    """An empty batch of frames, uint8 ``(B, T, H, W, 3)``; H x W is ``frame_hw`` (default: the crop).

    In a DataLoader worker it is allocated in shared memory, as torch's default_collate does, so
    handing the batch to the main process sends a handle instead of copying ~94 MB.
    """
    shape = (cfg.batch_size, cfg.n_frames, *(frame_hw or cfg.crop), 3)
    return _view(_new_storage(math.prod(shape)), 0, shape)


def _new_storage(nbytes: int) -> torch.UntypedStorage:
    if get_worker_info() is None:
        return torch.UntypedStorage(nbytes)
    return torch.UntypedStorage._new_shared(nbytes)


def _view(storage: torch.UntypedStorage, offset: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Contiguous uint8 ``shape`` at byte ``offset`` of ``storage``."""
    return torch.empty(0, dtype=torch.uint8).set_(storage, offset, shape)


def storage_users(storage: torch.UntypedStorage) -> int | None:
    """How many tensors/storage objects hold ``storage`` (this one included); None when this torch
    build cannot tell (then buffers are never reused)."""
    use_count = getattr(torch._C, "_storage_Use_Count", None)
    return None if use_count is None else use_count(storage._cdata)


class BatchBuffers:
    """A small ring of batch frame buffers that are reused once the consumer has dropped them.

    Writing into a freshly allocated ~94 MB buffer costs a page fault per 4 KiB page; on the
    benchmark VM that was ~30 % of the loader's per-sample work (BENCHMARKS.md). A buffer is
    only reused when nothing else can still read it; otherwise a fresh one is allocated, so a
    consumer that keeps batches (a list of them, a prefetching trainer) is never overwritten:

    - in the process that consumes the batches (``num_workers=0``) a buffer is free when no
      tensor other than this ring's holds its storage (torch's storage use count);
    - in a DataLoader worker the batch reaches the main process through shared memory, where
      :class:`StreamingLoader` watches it the same way and clears this slot's entry of the shared
      ``release_flags`` (int8, one per slot of every local worker) once the batch is dropped (or
      copied into pinned memory). Without flags a worker never reuses a buffer.
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
                    self.storages[slot] = storage = _new_storage(nbytes)
                return slot, storage
        if len(self.storages) < self.size:
            self.storages.append(_new_storage(nbytes))
            return len(self.storages) - 1, self.storages[-1]
        return -1, _new_storage(nbytes)

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
        return _view(self.storage, offset, shape)

    def _ensure(self, nbytes: int) -> None:
        if self.storage is not None and self.storage.nbytes() >= nbytes:
            return
        old, (self.slot, self.storage) = self.storage, self.buffers.take(nbytes)
        if old is not None and self.regions:  # samples already rendered move along (rare: see reserve)
            used = sum(math.prod(shape) for _, shape in self.regions)
            _view(self.storage, 0, (used,)).copy_(_view(old, 0, (used,)))

    def hand_over(self, n_samples: int) -> tuple[list[torch.Tensor], int | None]:
        """(the ``(T, h, w, 3)`` frames of the first ``n_samples`` regions, the release-flag index the
        consumer clears) and start a new batch. A region past them belongs to a sample that failed
        while being rendered."""
        frames = [_view(self.storage, offset, shape) for offset, shape in self.regions[:n_samples]]
        release = self.buffers.lend(self.slot)
        self.slot, self.storage, self.regions = -1, None, []
        return frames, release


def render_geometry(plan: SamplePlan, cfg: DataConfig) -> tuple[int, tuple[int, int]]:
    """(DCT downscale factor, H x W the sample takes in the batch buffer): the crop with
    ``resize_on: loader``, the decoded frame size with ``resize_on: device``. Reads one JPEG header
    (raises SkipSample("corrupt_jpeg") when it is unreadable)."""
    if cfg.resize_on == "loader":
        return 1, cfg.crop  # render_video picks its own factor
    return decoded_geometry(plan, cfg)


def render_sample(plan: SamplePlan, cfg: DataConfig, canvas: BatchCanvas, index: int,
                  geometry: tuple[int, tuple[int, int]]) -> tuple[int, int, int, int] | None:
    """Render ``plan`` into row ``index`` of the batch: cropped/resized/flipped (``resize_on:
    loader``, returns None) or decoded only (``resize_on: device``, returns its pixel crop box).
    ``geometry`` is :func:`render_geometry`'s."""
    factor, hw = geometry
    if cfg.resize_on == "loader":
        render_video(plan, cfg, out=canvas.row(index, hw))
        return None
    return render_frames(plan, cfg, canvas.row(index, hw).numpy(), factor, hw)


@dataclass(frozen=True)
class DeviceCrop:
    """What ``resize_on: device`` leaves to the device for a batch's ``video``: per sample a crop
    box (top, left, height, width) in pixels of its decoded frames and a horizontal flip; the
    output size and resampling. Plain Python values: they travel with the batch for free and
    ``crop_resize_normalize`` needs them on the host (slicing)."""

    boxes: tuple[tuple[int, int, int, int], ...]
    flips: tuple[bool, ...]
    size: tuple[int, int]
    antialias: bool = False


class Tokenizer:
    """BERT uncased WordPiece from a local directory: ``[CLS] ... [SEP]`` padded/truncated to L."""

    def __init__(self, bert_dir: str, max_tokens: int):
        from transformers import BertTokenizerFast

        from lfvila.text import resolve_bert_dir

        # Our batches are a few dozen sentences: tokenizers' thread pool gains nothing here and,
        # once used, makes forked DataLoader workers warn and fall back to one thread anyway.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.tokenizer = BertTokenizerFast.from_pretrained(str(resolve_bert_dir(bert_dir)))
        self.max_tokens = max_tokens
        self.special_ids = np.array(sorted(self.tokenizer.all_special_ids), dtype=np.int64)
        self.mask_id = self.tokenizer.mask_token_id
        self.vocab_size = len(self.tokenizer)
        # The Rust tokenizer underneath, set up once to truncate and pad to L: the same ids as
        # ``self.tokenizer(texts, padding="max_length", truncation=True, max_length=L)`` at half
        # the CPU time (the Python wrapper re-applies its settings on every call; BENCHMARKS.md).
        from tokenizers import Tokenizer as RustTokenizer

        self.encoder = RustTokenizer.from_str(self.tokenizer.backend_tokenizer.to_str())
        self.encoder.enable_truncation(max_length=max_tokens)
        self.encoder.enable_padding(length=max_tokens, pad_id=self.tokenizer.pad_token_id,
                                    pad_token=self.tokenizer.pad_token)

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """``texts`` -> ids, mask int64 ``(len(texts), L)``."""
        encodings = self.encoder.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64).reshape(len(texts), self.max_tokens)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64).reshape(len(texts), self.max_tokens)
        return ids, mask


def mask_tokens(ids: np.ndarray, mask: np.ndarray, tokenizer: Tokenizer, probability: float,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """BERT MLM masking of one sample's ``(M, L)`` ids: ``probability`` of the real, non-special
    tokens are chosen; of those 80 % become [MASK], 10 % a random token, 10 % stay. Returns
    (masked ids, labels with IGNORE_INDEX where not chosen)."""
    candidates = (mask == 1) & ~np.isin(ids, tokenizer.special_ids)
    chosen = candidates & (rng.random(ids.shape) < probability)
    labels = np.where(chosen, ids, IGNORE_INDEX)
    action = rng.random(ids.shape)
    random_tokens = rng.integers(0, tokenizer.vocab_size, ids.shape)
    masked = np.where(chosen & (action < 0.8), tokenizer.mask_id, ids)
    masked = np.where(chosen & (action >= 0.8) & (action < 0.9), random_tokens, masked)
    return masked, labels


def collate(plans: list[SamplePlan], frames: list[torch.Tensor], cfg: DataConfig, tokenizer: Tokenizer,
            stage: int, boxes: list[tuple[int, int, int, int] | None] | None = None) -> dict:
    """The batch dict of ``plans`` whose frames were rendered into ``frames`` (one ``(T, h, w, 3)``
    per plan, consecutive in one buffer: :class:`BatchCanvas`); ``boxes`` are what
    :func:`render_sample` returned (``resize_on: device``: the pixel crop boxes).

    Frames are viewed as ``(3, T, h, w)`` without a copy, i.e. in torch's channels_last_3d memory
    format: de-interleaving RGB on the host costs more than decoding (measured in BENCHMARKS.md);
    ``batch_to_device`` returns the video contiguous. ``resize_on: loader``: ``video`` is one
    ``(B, 3, T, H, W)`` tensor (the regions are back to back); ``resize_on: device``: a list of B
    ``(3, T, h_i, w_i)`` tensors, as frame sizes may differ between samples.
    """
    b, m, length = len(plans), cfg.text_slots, cfg.max_tokens
    if cfg.resize_on == "loader":
        first = frames[0]  # the batch's B regions, back to back: one (B, T, H, W, 3) view
        video = _view(first.untyped_storage(), first.storage_offset(), (b, *first.shape)).permute(0, 4, 1, 2, 3)
    else:
        video = [f.permute(3, 0, 1, 2) for f in frames]  # (3, T, h, w) each
    texts = [t for p in plans for t in p.texts]
    flat_ids, flat_mask = tokenizer(texts)  # (sum of n_i, L)
    ids = np.zeros((b, m, length), dtype=np.int64)  # padded sentences: all-zero ids and mask
    mask = np.zeros((b, m, length), dtype=np.int64)
    sentence_mask = np.zeros((b, m), dtype=bool)
    row = 0
    for i, p in enumerate(plans):
        n = len(p.texts)
        ids[i, :n], mask[i, :n], sentence_mask[i, :n] = flat_ids[row:row + n], flat_mask[row:row + n], True
        row += n
    batch = {
        "video": video,
        "text_ids": torch.from_numpy(ids),
        "text_mask": torch.from_numpy(mask),
        "sentence_mask": torch.from_numpy(sentence_mask),
        "keys": [p.key for p in plans],
    }
    if cfg.resize_on == "device":
        batch["crop"] = DeviceCrop(tuple(boxes), tuple(p.flip for p in plans), cfg.crop, cfg.antialias)
    if stage == 2:
        masked = [mask_tokens(ids[i], mask[i], tokenizer, cfg.mlm_probability,
                              np.random.default_rng(list(p.mlm_seed))) for i, p in enumerate(plans)]
        batch["mlm_ids"] = torch.from_numpy(np.stack([x for x, _ in masked]))
        batch["mlm_labels"] = torch.from_numpy(np.stack([y for _, y in masked]))
    return batch
