"""Moving a loader batch to the device and normalising its frames there."""
from __future__ import annotations

from typing import Any

import torch


def prepare_batch(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Copy the batch's tensors to ``device``; ``video`` travels as uint8 and is normalised there.

    video: uint8 ``(B, 3, T, H, W)`` -> float ``(B, 3, T, H, W)`` (ImageNet mean/std), so the
    host-to-device copy moves a quarter of the bytes of a float batch.
    """
    from lfvila.data.transforms import normalize_video

    non_blocking = device.type == "cuda"
    out = {k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v
           for k, v in batch.items()}
    out["video"] = normalize_video(out["video"])
    return out


def batch_size(batch: dict[str, Any]) -> int:
    return int(batch["video"].shape[0])
