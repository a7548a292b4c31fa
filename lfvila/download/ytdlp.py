"""Every yt-dlp / YouTube-specific choice of ``lfvila download``, in one place.

``ytdlp_options`` is the whole option dict given to ``yt_dlp.YoutubeDL`` (unit-tested without the
network); ``classify_error`` maps yt-dlp's error messages to the download reason vocabulary. YouTube
itself could not be reached where this was written: the options follow yt-dlp's documented API
(``yt_dlp/YoutubeDL.py`` docstring) and the message patterns are yt-dlp's and YouTube's own wording;
the downloader path itself is exercised on loopback through yt-dlp's generic extractor.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Callable

from lfvila.download.config import DownloadConfig


class _Logger:
    """yt-dlp's messages go to Python logging (its errors also come back as exceptions, then rows)."""

    def __init__(self) -> None:
        self.log = logging.getLogger("lfvila.download.ytdlp")

    def debug(self, msg: str) -> None:
        self.log.debug(msg)

    def info(self, msg: str) -> None:
        self.log.debug(msg)

    def warning(self, msg: str) -> None:
        self.log.debug(msg)

    def error(self, msg: str) -> None:
        self.log.debug(msg)


def format_selector(max_height: int) -> str:
    """Best video at most ``max_height`` high, mp4/m4a preferred so the merge needs no re-encode.

    Tried left to right: separate mp4 video + m4a audio; a single mp4 file; any separate video +
    audio; any single file under the cap; finally the smallest available video (videos with no
    format under the cap are still fetched rather than lost).
    """
    h = int(max_height)
    return (f"bv*[height<={h}][ext=mp4]+ba[ext=m4a]/b[height<={h}][ext=mp4]/"
            f"bv*[height<={h}]+ba/b[height<={h}]/wv*+ba/w")


def ytdlp_options(cfg: DownloadConfig, work_dir: Path, file_stem: str, ffmpeg: str,
                  progress_hook: Callable[[dict], None] | None = None) -> dict:
    """Options for one video downloaded into ``work_dir`` as ``<file_stem>.<ext>`` (+ ``.<lang>.vtt``)."""
    langs = list(cfg.subtitles)
    # '%' starts a yt-dlp output-template field: escape it so the id is taken literally.
    stem = file_stem.replace("%", "%%")
    return {
        "format": format_selector(cfg.max_height),
        "format_sort": [f"res:{int(cfg.max_height)}", "ext:mp4:m4a"],
        "merge_output_format": "mp4",
        "outtmpl": {"default": str(work_dir / f"{stem}.%(ext)s"), "subtitle": str(work_dir / f"{stem}.%(ext)s")},
        "paths": {"home": str(work_dir), "temp": str(work_dir)},
        "restrictfilenames": False,
        "windowsfilenames": False,
        "writesubtitles": bool(langs),
        "writeautomaticsub": bool(langs),  # YouTube's auto captions when no manual track exists
        "subtitleslangs": langs,
        "subtitlesformat": "vtt",
        "ffmpeg_location": ffmpeg,
        "noplaylist": True,
        "max_filesize": int(cfg.max_bytes),
        "socket_timeout": float(cfg.stall_timeout_s),
        "retries": 0,  # lfvila's own loop retries, with backoff and the per-host pacing
        "fragment_retries": 3,
        "extractor_retries": 0,
        "overwrites": True,
        "continuedl": False,
        "noprogress": True,
        "quiet": True,
        "no_warnings": True,
        "logger": _Logger(),
        "progress_hooks": [progress_hook] if progress_hook is not None else [],
    }


def section_format_selector(max_height: int) -> str:
    """For ``download.sections: runs``: the best video-only format at most ``max_height`` high that
    has a direct http(s) URL (ffmpeg cuts it by byte ranges; DASH/HLS fragment lists cannot be),
    mp4 first; then a single file with audio; finally the smallest such video (as format_selector)."""
    h, direct = int(max_height), "[protocol~='^https?$']"
    return (f"bv[height<={h}][ext=mp4]{direct}/bv[height<={h}]{direct}/b[height<={h}]{direct}/"
            f"wv{direct}/w{direct}")


def resolve_options(cfg: DownloadConfig, work_dir: Path, file_stem: str, ffmpeg: str) -> dict:
    """Options to resolve (not download) the format the sections are cut from, writing only the
    captions: those of ``ytdlp_options`` with the section format and ``skip_download``."""
    return {**ytdlp_options(cfg, work_dir, file_stem, ffmpeg), "format": section_format_selector(cfg.max_height),
            "skip_download": True}


# (pattern, reason): first match wins; patterns are yt-dlp's / YouTube's wording, lower-cased.
_PATTERNS = [
    (r"private video|sign in if you've been granted access", "private"),
    (r"removed|terminated|account associated with this video has been|no longer available", "removed"),
    (r"available in your country|not available from your location|geo.?restrict|blocked it in your country", "geo_blocked"),
    (r"http error 429|too many requests|rate.?limit", "rate_limited"),
    (r"http error 404|not found", "not_found"),
    (r"http error 403|forbidden", "forbidden"),
    (r"http error 5\d\d", "http_error"),
    (r"requested format is not available|no video formats", "no_video_stream"),
    (r"video unavailable|is not available|unavailable", "unavailable"),
    (r"larger than max-filesize|max.?filesize", "too_large"),
    (r"timed out|timeout", "timeout"),
]


def classify_error(message: str) -> str:
    """The download reason for a yt-dlp error message (``extractor_error`` when nothing matches)."""
    text = message.lower()
    for pattern, reason in _PATTERNS:
        if re.search(pattern, text):
            return reason
    return "extractor_error"
