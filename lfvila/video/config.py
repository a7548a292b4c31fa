"""Config of the video stage: how frames are taken from a long-form video (fps, size, JPEG or H.264
encoding, decoder threads and timeouts)."""
from __future__ import annotations

from dataclasses import dataclass


H264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
H264_TUNES = ("", "fastdecode", "film", "animation", "grain", "stillimage")


@dataclass
class VideoConfig:
    """How one long-form video becomes frames (see docs/shards.md, "Frame selection")."""

    fps: float = 3.0  # LF-VILA trains on 3 fps frames
    frame_height: int = 240  # LF-VILA's validation transform starts from 240x428; width keeps the aspect ratio
    jpeg_quality: int = 90
    # shards.frames: h264 (lfvila/video/h264.py): libx264 quality (CRF), keyframe interval in frames,
    # preset and tune. Chosen by measurement (BENCHMARKS.md, "H.264 frames"): LF-VILA samples every
    # ~5th frame of a clip, so any interval over ~5 frames decodes nearly the whole 4-clip window;
    # 12 (4 s at 3 fps) costs the loader about what 6 does at 10 % fewer bytes. x264's fastdecode
    # tune (no CABAC, no deblocking) halved decoding CPU for ~10 % more bytes.
    h264_crf: int = 23
    h264_gop: int = 12
    h264_preset: str = "medium"
    h264_tune: str = "fastdecode"
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
        if not 0 <= self.h264_crf <= 51:
            raise ValueError(f"video.h264_crf must be in [0, 51], got {self.h264_crf}")
        if self.h264_gop < 1:
            raise ValueError(f"video.h264_gop must be >= 1 (1 = every frame a keyframe), got {self.h264_gop}")
        if self.h264_preset not in H264_PRESETS:
            raise ValueError(f"video.h264_preset must be one of {', '.join(H264_PRESETS)}, got {self.h264_preset!r}")
        if self.h264_tune not in H264_TUNES:
            raise ValueError(f"video.h264_tune must be one of {', '.join(map(repr, H264_TUNES))}, got {self.h264_tune!r}")
        if self.decoder_threads < 0:
            raise ValueError(f"video.decoder_threads must be >= 0 (0 = ffmpeg's choice), got {self.decoder_threads}")
        if self.max_decode_errors < 0:
            raise ValueError(f"video.max_decode_errors must be >= 0, got {self.max_decode_errors}")
        if self.timeout_s <= 0:
            raise ValueError(f"video.timeout_s must be > 0, got {self.timeout_s}")
        if self.timeout_per_video_s < 0:
            raise ValueError(f"video.timeout_per_video_s must be >= 0, got {self.timeout_per_video_s}")
