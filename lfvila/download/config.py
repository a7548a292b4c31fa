"""The ``download:`` section of a corpus recipe."""
from __future__ import annotations

from dataclasses import dataclass, field

BACKENDS = ("auto", "http", "ytdlp")
SECTION_MODES = ("full", "runs")


@dataclass
class DownloadConfig:
    # URL per video, overriding the source's own mapping (mirrors, tests); "{video_id}" is replaced
    # by the URL-quoted id, e.g. "http://127.0.0.1:8000/{video_id}.mp4".
    url_template: str | None = None
    # auto: plain HTTP for URLs naming a video file (path ending in a video extension), yt-dlp
    # for everything else (YouTube pages, other sites); http / ytdlp force one downloader.
    backend: str = "auto"
    max_height: int = 720  # HD-VILA's videos are 720p; yt-dlp picks the best format at most this high
    subtitles: list[str] = field(default_factory=lambda: ["en"])  # caption languages, manual then auto-generated
    # Plain-HTTP backend only: where a video's caption file lives ("{video_id}", "{lang}"); None: no captions.
    subtitle_url_template: str | None = None
    max_bytes: int = 8 * 1024**3  # a larger file is a too_large failure (checked on Content-Length and while reading)
    timeout_s: float = 3600.0  # whole download of one video, all bytes
    stall_timeout_s: float = 60.0  # no byte received for this long: stalled (also the connect timeout)
    max_attempts: int = 4  # per video and run, for transient failures (rate_limited, timeout, http 5xx, ...)
    backoff_s: float = 2.0  # first retry delay; doubled each attempt, capped by max_backoff_s
    max_backoff_s: float = 300.0  # also caps a server's Retry-After
    host_interval_s: float = 0.0  # minimum seconds between two request starts to the same host
    chunk_bytes: int = 1 << 20
    # full: whole videos. runs: only the time ranges of the long-form runs of --manifest CORPUS (each
    # widened by section_margin_s, ranges at most section_merge_gap_s apart merged), cut by ffmpeg
    # with HTTP range requests into the sections layout VIDEOS/<video_id>/ (direct video URLs only).
    sections: str = "full"
    section_margin_s: float = 2.0
    section_merge_gap_s: float = 10.0

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"download.backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.url_template is not None and "{video_id}" not in self.url_template:
            raise ValueError("download.url_template must contain {video_id}")
        if self.subtitle_url_template is not None and "{video_id}" not in self.subtitle_url_template:
            raise ValueError("download.subtitle_url_template must contain {video_id}")
        if self.max_height <= 0:
            raise ValueError("download.max_height must be positive")
        if self.max_bytes <= 0:
            raise ValueError("download.max_bytes must be positive")
        for name in ("timeout_s", "stall_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"download.{name} must be positive")
        if self.max_attempts < 1:
            raise ValueError("download.max_attempts must be >= 1")
        for name in ("backoff_s", "max_backoff_s", "host_interval_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"download.{name} must be >= 0")
        if self.sections not in SECTION_MODES:
            raise ValueError(f"download.sections must be one of {SECTION_MODES}, got {self.sections!r}")
        if self.section_margin_s < 0 or self.section_merge_gap_s < 0:
            raise ValueError("download.section_margin_s and section_merge_gap_s must be >= 0")
        if self.chunk_bytes <= 0:
            raise ValueError("download.chunk_bytes must be positive")
        for lang in self.subtitles:
            if not isinstance(lang, str) or not lang.replace("-", "").isalnum():
                raise ValueError(f"download.subtitles: {lang!r} is not a language code")
