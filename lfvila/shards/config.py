"""Config of the video and shard stages (owned by the shard stage; extended there)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class VideoConfig:
    fps: float = 3.0  # LF-VILA trains on 3 fps frames
    frame_height: int = 240  # LF-VILA's validation transform starts from 240x428
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        if self.fps <= 0:
            raise ValueError(f"video.fps must be > 0, got {self.fps}")


@dataclass
class ShardConfig:
    samples_per_shard: int = 100
