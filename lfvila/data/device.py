"""The device half of a loader batch: copy it to the training device and finish its video there.

Frames cross to the device as uint8 (4x fewer bytes than float32) and are normalised there; with
``resize_on: device`` (the default) they are also cropped, resized and flipped there, which takes
that work off the loader workers (~40 % of the JPEG decoding it follows, BENCHMARKS.md).
"""
from __future__ import annotations

from typing import Any

import torch

from lfvila.data.collate import DeviceCrop
from lfvila.data.transforms import crop_resize_normalize, normalize_video


def batch_to_device(batch: dict[str, Any], device: torch.device | str,
                    dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """A loader batch as the model takes it, on ``device``.

    ``video`` becomes contiguous ``dtype`` ``(B, 3, T, H, W)`` at the crop size, normalised with
    ImageNet mean/std; with ``resize_on: device`` the loader's ``video`` is B decoded ``(3, T, h, w)``
    tensors and its ``crop`` (a :class:`DeviceCrop`) is applied and removed. Other tensors are
    copied (non-blocking to a GPU).
    """
    device = torch.device(device)
    non_blocking = device.type == "cuda"
    out = {k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v
           for k, v in batch.items() if k not in ("crop", "video")}
    crop: DeviceCrop | None = batch.get("crop")
    if crop is None:  # (B, 3, T, H, W) at the crop size
        out["video"] = normalize_video(batch["video"].to(device, non_blocking=non_blocking), dtype=dtype)
    else:  # B decoded (3, T, h_i, w_i)
        videos = [v.to(device, non_blocking=non_blocking) for v in batch["video"]]
        out["video"] = crop_resize_normalize(videos, crop.boxes, crop.flips, crop.size, crop.antialias, dtype)
    return out
