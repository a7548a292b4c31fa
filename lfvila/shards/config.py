"""Config of the video and shard stages: how frames are taken from a video and how samples are packed."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class VideoConfig:
    """How one long-form video becomes frames (see docs/shards.md, "Frame selection")."""

    fps: float = 3.0  # LF-VILA trains on 3 fps frames
    frame_height: int = 240  # LF-VILA's validation transform starts from 240x428; width keeps the aspect ratio
    jpeg_quality: int = 90
    # ffmpeg threads per decoder. One: a build runs one decoder per core, so extra decoder threads
    # only contend (measured in BENCHMARKS.md).
    decoder_threads: int = 1
    # A sample's decoders are killed after timeout_s + timeout_per_video_s * (span seconds); the
    # sample is then rejected as decode_timeout. ffmpeg decodes 10-100x faster than real time, so
    # the per-second term is generous; the constant covers probing and slow storage.
    timeout_s: float = 60.0
    timeout_per_video_s: float = 1.0
    # ffmpeg conceals corrupt data and goes on; a sample whose decoders print more error lines than
    # this is rejected as decode_error (concealed damage shows as smeared frames: not training data).
    max_decode_errors: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.fps <= 60:
            raise ValueError(f"video.fps must be in (0, 60], got {self.fps}")
        if self.frame_height < 16 or self.frame_height % 2:
            raise ValueError(f"video.frame_height must be an even number >= 16, got {self.frame_height}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"video.jpeg_quality must be in [1, 100], got {self.jpeg_quality}")
        if self.decoder_threads < 0:
            raise ValueError(f"video.decoder_threads must be >= 0 (0 = ffmpeg's choice), got {self.decoder_threads}")
        if self.max_decode_errors < 0:
            raise ValueError(f"video.max_decode_errors must be >= 0, got {self.max_decode_errors}")
        if self.timeout_s <= 0:
            raise ValueError(f"video.timeout_s must be > 0, got {self.timeout_s}")
        if self.timeout_per_video_s < 0:
            raise ValueError(f"video.timeout_per_video_s must be >= 0, got {self.timeout_per_video_s}")


@dataclass
class ShardConfig:
    """How samples are packed into tar shards.

    samples_per_shard: 100 by default. An LF-VILA long-form video is about 1-2 minutes, i.e. 200-400
    frames of ~15-25 kB at 240p, so a shard is a few hundred MB: large enough for sequential reads
    from object stores and few files per corpus (LF-VILA-8M: ~85k shards), small enough that one
    shard task is a few minutes of one core and a lost task is cheap to redo.
    """

    samples_per_shard: int = 100

    def __post_init__(self) -> None:
        if self.samples_per_shard < 1:
            raise ValueError(f"shards.samples_per_shard must be >= 1, got {self.samples_per_shard}")
