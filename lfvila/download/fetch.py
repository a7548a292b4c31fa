"""One video's download into a work folder, and the fixed vocabulary of failure reasons.

Two downloaders: plain HTTP (``urllib``) for URLs naming a video file, because it gives exact
control over the stall timeout, the size limit (``Content-Length`` and bytes read) and
``Retry-After``; yt-dlp's Python API for everything else (YouTube, sites, pages). Both write only
inside ``work_dir``; the caller probes the result and renames it into place.
"""
from __future__ import annotations

import email.utils
import http.client
import socket
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from lfvila.download.config import DownloadConfig

# Reasons a video can fail with. Permanent ones are not retried by a plain rerun (only with
# --retry-failed); transient ones are retried within a run (with backoff) and by every rerun.
NOT_FOUND, FORBIDDEN, UNAVAILABLE, PRIVATE, REMOVED, GEO_BLOCKED = (
    "not_found", "forbidden", "unavailable", "private", "removed", "geo_blocked")
RATE_LIMITED, TIMEOUT, STALLED, TRUNCATED, TOO_LARGE = "rate_limited", "timeout", "stalled", "truncated", "too_large"
NO_VIDEO_STREAM, HTTP_ERROR, EXTRACTOR_ERROR = "no_video_stream", "http_error", "extractor_error"
UNSAFE_ID, NO_URL, CONNECTION_ERROR, WRITE_ERROR = "unsafe_id", "no_url", "connection_error", "write_error"
CUT_FAILED, OFFSET_UNMEASURED = "cut_failed", "offset_unmeasured"
WORKER_LOST = "worker_lost"
REASONS = {
    NOT_FOUND: "HTTP 404 / the site says the video does not exist",
    FORBIDDEN: "HTTP 403",
    UNAVAILABLE: "the site says the video is unavailable (YouTube 'Video unavailable')",
    PRIVATE: "a private video",
    REMOVED: "removed by the uploader or the site (HTTP 410, terminated account)",
    GEO_BLOCKED: "not available from this country (HTTP 451)",
    RATE_LIMITED: "HTTP 429 on every attempt (Retry-After honoured)",
    TIMEOUT: "connect timeout or the whole download took longer than download.timeout_s",
    STALLED: "no byte received for download.stall_timeout_s",
    TRUNCATED: "the connection closed before Content-Length bytes arrived",
    TOO_LARGE: "larger than download.max_bytes",
    NO_VIDEO_STREAM: "the file downloaded has no decodable video stream (not a video)",
    HTTP_ERROR: "another HTTP status (5xx after all attempts, other 4xx)",
    EXTRACTOR_ERROR: "yt-dlp could not extract the video (unsupported URL, site change)",
    UNSAFE_ID: "the video_id cannot be a file name (path separator, '..', control characters, ...)",
    NO_URL: "the source gives no URL for the video and no download.url_template is set",
    CONNECTION_ERROR: "connection refused / reset / DNS failure",
    WRITE_ERROR: "the file could not be written (disk full, permissions)",
    CUT_FAILED: "download.sections: runs: ffmpeg could not cut a section from the URL",
    OFFSET_UNMEASURED: "download.sections: runs: a section's start could not be located in the source",
    WORKER_LOST: "--engine ray: the video's task failed after Ray's retries (a node lost); a rerun retries it",
}
PERMANENT = frozenset({NOT_FOUND, FORBIDDEN, UNAVAILABLE, PRIVATE, REMOVED, GEO_BLOCKED, TOO_LARGE,
                       NO_VIDEO_STREAM, UNSAFE_ID, NO_URL})
# Retried inside one run, after a backoff; the others end the video's attempts at once.
RETRY_IN_RUN = frozenset({RATE_LIMITED, TIMEOUT, STALLED, TRUNCATED, HTTP_ERROR, CONNECTION_ERROR})

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".mpg", ".mpeg", ".ogv", ".flv", ".3gp", ".wmv", ".m4v", ".ts")
_CONTENT_TYPES = {"video/mp4": ".mp4", "video/webm": ".webm", "video/x-matroska": ".mkv", "video/quicktime": ".mov"}
USER_AGENT = "lfvila-download"


class FetchError(Exception):
    def __init__(self, reason: str, detail: str, retry_after: float | None = None):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.retry_after = reason, detail, retry_after


@dataclass
class Fetched:
    path: Path  # the video file inside work_dir
    bytes: int
    format: str  # HTTP: the Content-Type; yt-dlp: its format id(s)
    subtitles: dict[str, Path] = field(default_factory=dict)  # lang -> .vtt inside work_dir


def choose_backend(url: str, backend: str) -> str:
    if backend != "auto":
        return backend
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and parts.path.lower().endswith(VIDEO_SUFFIXES):
        return "http"
    return "ytdlp"


def host_of(url: str) -> str:
    return urlsplit(url).netloc.lower()


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent/unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _status_reason(code: int) -> str:
    if code in (404,):
        return NOT_FOUND
    if code == 410:
        return REMOVED
    if code in (401, 403):
        return FORBIDDEN
    if code == 451:
        return GEO_BLOCKED
    if code == 429:
        return RATE_LIMITED
    return HTTP_ERROR


def _open(url: str, cfg: DownloadConfig, headers: dict[str, str] | None = None):
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **(headers or {})})
    try:
        return urllib.request.urlopen(request, timeout=cfg.stall_timeout_s)
    except urllib.error.HTTPError as e:
        retry_after = parse_retry_after(e.headers.get("Retry-After")) if e.headers else None
        e.close()
        reason = _status_reason(e.code)
        if reason == HTTP_ERROR and 400 <= e.code < 500:
            raise FetchError(HTTP_ERROR, f"HTTP {e.code} {e.reason}", None) from None
        raise FetchError(reason, f"HTTP {e.code} {e.reason}", retry_after) from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, (socket.timeout, TimeoutError)):
            raise FetchError(TIMEOUT, f"connect: {e.reason}") from None
        raise FetchError(CONNECTION_ERROR, str(e.reason)) from None
    except (socket.timeout, TimeoutError) as e:
        raise FetchError(TIMEOUT, f"waiting for the response: {e}") from None
    except (ConnectionError, http.client.HTTPException) as e:
        raise FetchError(CONNECTION_ERROR, f"{type(e).__name__}: {e}") from None


def http_download(url: str, dest: Path, cfg: DownloadConfig, on_bytes=None) -> tuple[int, str]:
    """Stream ``url`` into ``dest``; returns (bytes, content type). Raises FetchError."""
    deadline = time.monotonic() + cfg.timeout_s
    with _open(url, cfg) as response:
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        if expected is not None and expected > cfg.max_bytes:
            raise FetchError(TOO_LARGE, f"Content-Length {expected} > max_bytes {cfg.max_bytes}")
        ctype = (response.headers.get("Content-Type") or "").split(";")[0].strip()
        got = 0
        try:
            with open(dest, "wb") as out:
                while True:
                    if time.monotonic() > deadline:
                        raise FetchError(TIMEOUT, f"not finished after {cfg.timeout_s:g} s ({got} bytes)")
                    chunk = response.read1(cfg.chunk_bytes) if hasattr(response, "read1") else response.read(cfg.chunk_bytes)
                    if not chunk:
                        break
                    got += len(chunk)
                    if got > cfg.max_bytes:
                        raise FetchError(TOO_LARGE, f"more than max_bytes {cfg.max_bytes} bytes")
                    out.write(chunk)
                    if on_bytes is not None:
                        on_bytes(len(chunk))
        except (socket.timeout, TimeoutError):
            raise FetchError(STALLED, f"no data for {cfg.stall_timeout_s:g} s after {got} bytes") from None
        except http.client.IncompleteRead as e:
            raise FetchError(TRUNCATED, f"connection closed after {got + len(e.partial)} of {expected} bytes") from None
        except (ConnectionError, http.client.HTTPException) as e:
            raise FetchError(TRUNCATED, f"{type(e).__name__} after {got} bytes: {e}") from None
        except OSError as e:
            raise FetchError(WRITE_ERROR, str(e)) from None
    if expected is not None and got < expected:
        raise FetchError(TRUNCATED, f"connection closed after {got} of {expected} bytes")
    return got, ctype


def fetch_http(url: str, work_dir: Path, stem: str, cfg: DownloadConfig, subtitle_urls: dict[str, str],
               on_bytes=None) -> Fetched:
    suffix = Path(urlsplit(url).path).suffix.lower()
    path = work_dir / f"{stem}{suffix if suffix in VIDEO_SUFFIXES else '.mp4'}"
    size, ctype = http_download(url, path, cfg, on_bytes)
    if suffix not in VIDEO_SUFFIXES and ctype in _CONTENT_TYPES and _CONTENT_TYPES[ctype] != path.suffix:
        path = path.rename(path.with_suffix(_CONTENT_TYPES[ctype]))
    return Fetched(path, size, ctype or "application/octet-stream", fetch_subtitles(subtitle_urls, work_dir, stem, cfg))


def fetch_subtitles(subtitle_urls: dict[str, str], work_dir: Path, stem: str, cfg: DownloadConfig) -> dict[str, Path]:
    subtitles = {}
    for lang, sub_url in subtitle_urls.items():
        sub_path = work_dir / f"{stem}.{lang}.vtt"
        try:
            http_download(sub_url, sub_path, cfg)
        except FetchError:
            sub_path.unlink(missing_ok=True)  # a video without captions is still a downloaded video
            continue
        subtitles[lang] = sub_path
    return subtitles


def fetch_sections(url: str, section_dir: Path, video_id: str, spans: list[tuple[float, float]],
                   cfg: DownloadConfig, headers: dict[str, str] | None = None, suffix: str | None = None
                   ) -> tuple[int, float]:
    """Cut ``spans`` of ``url`` into ``section_dir`` (NNN.<ext> + sections.json); (bytes, seconds covered).
    ``headers`` go with every request (those yt-dlp gives for a resolved format)."""
    from lfvila.download.sections import SectionError, cut_section, write_sections_json

    # One GET for the status (404, 429 + Retry-After, ...) before ffmpeg reads the file by ranges.
    with _open(url, cfg, headers) as response:
        length = response.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > cfg.max_bytes:
            raise FetchError(TOO_LARGE, f"Content-Length {length} > max_bytes {cfg.max_bytes}")
    suffix = (suffix or Path(urlsplit(url).path).suffix).lower()
    suffix = suffix if suffix in (".mp4", ".mkv", ".webm", ".mov") else ".mkv"
    entries = []
    for i, (lo, hi) in enumerate(spans):
        try:
            entries.append(cut_section(url, lo, hi, section_dir, f"{i:03d}{suffix}", timeout_s=cfg.timeout_s,
                                       headers=headers))
        except SectionError as e:
            reason = {"cut_failed": CUT_FAILED, "offset_unmeasured": OFFSET_UNMEASURED}.get(e.reason, NO_VIDEO_STREAM)
            raise FetchError(reason, f"section {lo:.3f}-{hi:.3f} s: {e.detail}") from None
    write_sections_json(section_dir, video_id, entries)
    size = sum((section_dir / e["file"]).stat().st_size for e in entries)
    return size, sum(e["end"] - e["start"] for e in entries)


def _retry_after_of(exc: BaseException | None) -> float | None:
    """``Retry-After`` of the HTTP response behind a yt-dlp error (its HTTPError carries the response)."""
    for _ in range(6):  # DownloadError -> exc_info -> ExtractorError.cause -> HTTPError, at most
        if exc is None:
            return None
        headers = getattr(getattr(exc, "response", None), "headers", None)
        if headers is not None:
            return parse_retry_after(headers.get("Retry-After"))
        exc = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__
    return None


@contextmanager
def _ytdlp_errors():
    """yt-dlp's exceptions as FetchError (reason from the message, Retry-After from the response)."""
    import yt_dlp

    from lfvila.download.ytdlp import classify_error

    try:
        yield
    except FetchError:
        raise
    except yt_dlp.utils.DownloadError as e:
        cause = e.exc_info[1] if getattr(e, "exc_info", None) else None
        if isinstance(cause, FetchError):
            raise cause from None
        if isinstance(cause, yt_dlp.utils.GeoRestrictedError):
            raise FetchError(GEO_BLOCKED, str(e)[:500]) from None
        raise FetchError(classify_error(str(e)), str(e)[:500], _retry_after_of(cause)) from None
    except Exception as e:  # yt-dlp raises many types; each becomes an extractor_error row, not a crash
        raise FetchError(EXTRACTOR_ERROR, f"{type(e).__name__}: {e}"[:500]) from None


def fetch_ytdlp(url: str, work_dir: Path, stem: str, cfg: DownloadConfig, on_bytes=None) -> Fetched:
    import yt_dlp

    from lfvila.download.ytdlp import ytdlp_options
    from lfvila.video.decode import ffmpeg_exe

    deadline = time.monotonic() + cfg.timeout_s
    seen = {}

    def hook(d: dict) -> None:
        if time.monotonic() > deadline:
            raise FetchError(TIMEOUT, f"not finished after {cfg.timeout_s:g} s")
        done = d.get("downloaded_bytes") or 0
        name = d.get("filename", "")
        if on_bytes is not None and done > seen.get(name, 0):
            on_bytes(done - seen.get(name, 0))
        seen[name] = max(done, seen.get(name, 0))

    opts = ytdlp_options(cfg, work_dir, stem, ffmpeg_exe(), hook)
    with _ytdlp_errors(), yt_dlp.YoutubeDL(opts) as ydl:
        info = ydl.extract_info(url, download=True)
    videos = [p for p in work_dir.iterdir() if p.is_file() and p.name.startswith(stem + ".")
              and p.suffix.lower() in VIDEO_SUFFIXES and p.stem == stem]
    if not videos:
        if info and (info.get("filesize") or info.get("filesize_approx") or 0) > cfg.max_bytes:
            raise FetchError(TOO_LARGE, f"yt-dlp skipped it: larger than max_bytes {cfg.max_bytes}")
        raise FetchError(EXTRACTOR_ERROR, "yt-dlp finished without writing a video file")
    path = videos[0]
    return Fetched(path, path.stat().st_size, str((info or {}).get("format_id") or "?"), _captions_in(work_dir, stem))


@dataclass
class MediaURL:
    """The direct URL of one format of a page (what ffmpeg can read by byte ranges)."""
    url: str
    headers: dict[str, str]
    format: str  # yt-dlp's format id
    ext: str  # its container: the sections are written with the same


def resolve_media_url(url: str, work_dir: Path, stem: str, cfg: DownloadConfig) -> tuple[MediaURL, dict[str, Path]]:
    """For ``download.sections: runs`` on YouTube and other sites: yt-dlp resolves the direct http(s)
    URL of the video-only format the sections are cut from, downloading nothing but the captions
    (into ``work_dir`` as ``<stem>.<lang>.vtt``, returned as lang -> path)."""
    import yt_dlp

    from lfvila.download.ytdlp import resolve_options
    from lfvila.video.decode import ffmpeg_exe

    with _ytdlp_errors(), yt_dlp.YoutubeDL(resolve_options(cfg, work_dir, stem, ffmpeg_exe())) as ydl:
        info = ydl.extract_info(url, download=True)  # with skip_download: only the captions are written
    chosen = (info.get("requested_formats") or [info])[0] if info else {}
    if not chosen.get("url"):
        raise FetchError(NO_VIDEO_STREAM, "yt-dlp found no video format with a direct http(s) URL")
    media = MediaURL(chosen["url"], dict(chosen.get("http_headers") or {}), str(chosen.get("format_id") or "?"),
                     str(chosen.get("ext") or "mkv"))
    return media, _captions_in(work_dir, stem)


def _captions_in(work_dir: Path, stem: str) -> dict[str, Path]:
    return {p.name[len(stem) + 1:-4]: p for p in work_dir.glob("*.vtt") if p.name.startswith(stem + ".")}


def probe_video(path: Path) -> tuple[float | None, str]:
    """(duration in seconds or None, "container/codec WxH") of a file's first video stream.

    Raises FetchError(no_video_stream) when the file cannot be opened or holds no video stream."""
    import av

    from lfvila.video.decode import file_url

    try:
        with av.open(file_url(path)) as container:  # a file:, never a URL made of the file name
            streams = container.streams.video
            if not streams:
                raise FetchError(NO_VIDEO_STREAM, "no video stream")
            stream = streams[0]
            duration = None
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / 1e6
            # Decoding one frame proves the stream is a real video, not a header.
            if next(container.decode(stream), None) is None:
                raise FetchError(NO_VIDEO_STREAM, "no decodable frame")
            desc = f"{container.format.name.split(',')[0]}/{stream.codec_context.name} {stream.width}x{stream.height}"
            return duration, desc
    except FetchError:
        raise
    except Exception as e:  # PyAV raises av.error.* subclasses of OSError/ValueError
        detail = f"{type(e).__name__}: {e}".replace(str(path), path.name)
        raise FetchError(NO_VIDEO_STREAM, detail[:300]) from None
