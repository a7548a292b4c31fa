"""Config of the manifest stage (owned by the manifest stage; extended there)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ManifestConfig:
    min_clips: int = 4  # LF-VILA keeps runs of at least 4 consecutive clips
    val_fraction: float = 0.01

    def __post_init__(self) -> None:
        if self.min_clips < 1:
            raise ValueError(f"manifest.min_clips must be >= 1, got {self.min_clips}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"manifest.val_fraction must be in [0, 1), got {self.val_fraction}")
