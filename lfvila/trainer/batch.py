"""Batch helpers of the trainer (moving a batch to the device is ``lfvila.data.batch_to_device``)."""
from __future__ import annotations

from typing import Any


def batch_size(batch: dict[str, Any]) -> int:
    return len(batch["keys"])
