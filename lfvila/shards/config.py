"""Config of the shard stage: how samples are packed into shards (how frames are taken from a video:
``lfvila.video.config.VideoConfig``)."""
from __future__ import annotations

from dataclasses import dataclass


FRAME_FORMATS = ("jpeg", "h264")


@dataclass
class ShardConfig:
    """How samples are packed into tar shards.

    samples_per_shard: 100 by default. An LF-VILA long-form video is about 1-2 minutes, i.e. 200-400
    frames of ~15-25 kB at 240p, so a shard is a few hundred MB: large enough for sequential reads
    from object stores and few files per corpus (LF-VILA-8M: ~85k shards), small enough that one
    shard task is a few minutes of one core and a lost task is cheap to redo.
    """

    samples_per_shard: int = 100
    # How a sample's frames are stored: "jpeg" (one KEY.NNNN.jpg member per frame) or "h264" (one
    # KEY.h264 member: the frames as one H.264 stream, video.h264_*; docs/shards.md).
    frames: str = "jpeg"
    # Also close a shard before a sample that would take its estimated bytes past this (None: by
    # count only). Estimated at plan time from the frames each sample stores (lfvila/shards/plan.py):
    # shards are about this size on average, not exactly.
    target_bytes: int | None = None
    # Bytes per stored frame for that estimate (None: the figure measured for shards.frames at 240 px,
    # scaled by the frame area).
    estimated_frame_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.target_bytes is not None and self.target_bytes < 1:
            raise ValueError(f"shards.target_bytes must be >= 1 or null, got {self.target_bytes}")
        if self.estimated_frame_bytes is not None and self.estimated_frame_bytes < 1:
            raise ValueError(f"shards.estimated_frame_bytes must be >= 1 or null, got {self.estimated_frame_bytes}")
        if self.samples_per_shard < 1:
            raise ValueError(f"shards.samples_per_shard must be >= 1, got {self.samples_per_shard}")
        if self.frames not in FRAME_FORMATS:
            raise ValueError(f"shards.frames must be one of {', '.join(FRAME_FORMATS)}, got {self.frames!r}")
