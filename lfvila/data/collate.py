"""Rendered samples -> the batch dict.

Batch contract (docs/loader.md): ``video`` uint8 ``(B, 3, T, H, W)`` (channels_last_3d
memory: RGB stays interleaved as decoded), ``text_ids`` and ``text_mask`` long ``(B, M, L)``,
``sentence_mask`` bool ``(B, M)``, ``keys``; stage 2 adds ``mlm_ids`` and ``mlm_labels``
``(B, M, L)`` (-100 where not masked). With ``resize_on: device`` (the default) ``video`` is a
list of B uint8 ``(3, T, h_i, w_i)``: each sample's decoded frames (sizes may differ), and
``crop`` (a :class:`DeviceCrop`) says what ``batch_to_device`` still does to them; with
``resize_on: loader`` it is one tensor at the crop size.

The jobs around it have their own modules: decoding frames (``frames.py``), the batch buffers
they are decoded into (``buffers.py``), tokenization and MLM masking (``tokenize.py``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lfvila.data.buffers import storage_view
from lfvila.data.config import DataConfig
from lfvila.data.sampling import SamplePlan
from lfvila.data.tokenize import Tokenizer, mask_tokens


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
        video = storage_view(first.untyped_storage(), first.storage_offset(), (b, *first.shape)).permute(0, 4, 1, 2, 3)
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
