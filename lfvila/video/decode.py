"""Decode frames on a fixed time grid with an ffmpeg subprocess.

Why ffmpeg as a subprocess (measured in BENCHMARKS.md): it decoded a 720p H.264 span with the
least CPU of ffmpeg, PyAV and decord, it can be killed when it hangs (a C-level hang inside PyAV or
decord would take the worker with it), its memory is its own, and it honours rotation metadata.

Time grid. A long-form video starting at ``grid_start`` is cut into slots of ``1/fps`` seconds;
slot ``n`` covers ``[grid_start + n/fps, grid_start + (n+1)/fps)`` and its frame is the source frame
on screen at the slot's midpoint ``grid_start + (n + 0.5)/fps``: the last frame whose presentation
time is strictly before the midpoint (a frame starting exactly at it belongs to the next slot). ffmpeg's ``fps`` filter with ``round=near`` implements exactly this
rule: it rounds each input timestamp to the nearest output tick and keeps, per tick, the latest
frame rounded to at most that tick. Selecting by presentation time makes variable frame rate work.
Frames from the keyframe before the span start are fed to it (no accurate seek), so the first
slot is right even when the frame on screen started before the span.
"""
from __future__ import annotations

import math
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np

FFMPEG_ENV = "LFVILA_FFMPEG"
_POINTER = re.compile(r" @ 0x[0-9a-f]+")
_NO_STREAM = ("matches no streams", "does not contain any stream", "Output file is empty")


def ffmpeg_exe() -> str:
    """The ffmpeg binary: ``$LFVILA_FFMPEG`` if set, else imageio-ffmpeg's bundled build."""
    exe = os.environ.get(FFMPEG_ENV)
    if exe:
        found = shutil.which(exe)
        if found is None:
            raise FileNotFoundError(f"{FFMPEG_ENV}={exe!r} is not an executable")
        return found
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def file_url(path: str | os.PathLike) -> str:
    """``path`` as ffmpeg's (and PyAV's) ``file:`` URL of its absolute path: the only safe way to name a local file.

    ffmpeg reads every input and output name as a URL: a file named ``concat:x.mp4`` (or ``subfile,,...``,
    ``pipe:0``, ``http:...``) in the working directory would make it read something else, and a name
    starting with ``-`` can be taken for an option. ``file:`` + an absolute path is always the file itself
    (ffmpeg does not percent-decode it). The path is made absolute without resolving symlinks or ``..``.
    """
    return "file:" + os.path.join(os.getcwd(), os.fspath(path))


class YuvFrame(NamedTuple):
    """One frame as full-range BT.601 YUV 4:2:0 planes: y (H, W), u and v (H/2, W/2), uint8."""

    y: np.ndarray
    u: np.ndarray
    v: np.ndarray

    def to_jpeg(self, quality: int) -> bytes:
        """JFIF bytes (4:2:0), encoded from the planes as they are (deterministic, libjpeg-turbo)."""
        import simplejpeg

        return simplejpeg.encode_jpeg_yuv_planes(self.y, self.u, self.v, quality=quality)


@dataclass
class SegmentResult:
    """What one decoder run produced: frames received, and why it stopped."""

    frames: int = 0
    returncode: int | None = None
    timed_out: bool = False
    error_lines: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        """ffmpeg exited with an error (not counting our own early stop)."""
        return self.timed_out or (self.returncode not in (0, None))

    def reason(self) -> str:
        """Reject reason when nothing was decoded: a fixed vocabulary (docs/shards.md)."""
        if self.timed_out:
            return "decode_timeout"
        text = "\n".join(self.error_lines)
        if any(s in text for s in _NO_STREAM):
            return "no_video_stream"
        if self.failed or self.error_lines:
            return "unreadable"
        return "span_past_end"

    def detail(self) -> str:
        """First error lines, with memory addresses removed so the text is the same on every run."""
        return " | ".join(self.error_lines[:3])[:500]


# The widest display aspect ratio (width / height after SAR and rotation) a video may have, and its
# inverse the narrowest. Real videos lie well inside (ultra-wide 32:9 is 3.6, a phone's 9:16 is
# 0.56); beyond it the sample aspect ratio is garbage or hostile and the frames are not training data.
MAX_ASPECT_RATIO = 8.0


def _scaled_width(height: int, dar: float) -> int:
    """The output width ffmpeg's scale expression gives a ``dar`` video at ``height`` (even, >= 2)."""
    return 2 * max(1, math.trunc(height * dar / 2 + 0.5))


def width_range(height: int) -> tuple[int, int]:
    """Output widths allowed at frame height ``height``: those of aspect ratios 1:MAX .. MAX:1.

    A sample whose first decoded frame is outside is rejected (``aspect_ratio_out_of_range``).
    """
    return _scaled_width(height, 1 / MAX_ASPECT_RATIO), _scaled_width(height, MAX_ASPECT_RATIO)


def _ffmpeg_command(path: Path, seek: float, shift: float, duration: float, fps: float, height: int,
                    width: int | None, threads: int, input_seek: bool) -> list[str]:
    import ffmpeg  # ffmpeg-python: builds the filter graph with correct escaping

    if input_seek:
        # Keyframe seek: ffmpeg jumps to the keyframe before `seek` and passes every frame from
        # there on, with timestamps relative to `seek` (negative before it). The frames before
        # `seek` are not dropped (as an accurate seek would): the frame on screen at the first
        # slot's midpoint may have started before `seek` (low frame rate, static screen captures),
        # and the fps filter needs it to choose. `-t` would count from the keyframe: trim instead.
        stream = ffmpeg.input(file_url(path), ss=f"{seek:.6f}", noaccurate_seek=None, threads=threads)["v:0"]
        stream = stream.filter("trim", end=f"{duration:.6f}")
    else:
        # Fallback for files whose index makes seeking fail: decode from the start.
        stream = ffmpeg.input(file_url(path), threads=threads)["v:0"]
        stream = stream.filter("trim", end=f"{seek + duration:.6f}")
        shift -= seek
    if shift != 0:
        # Move the timeline so that slot 0 begins at 0; pre-cut clips can start up to half a
        # slot after their first slot's start, and a negative seek is not possible.
        stream = stream.filter("setpts", f"PTS+({shift:.6f})/TB")
    stream = stream.filter("fps", fps=f"{fps:g}", start_time=0, round="near")
    # dar = display aspect ratio after ffmpeg's automatic rotation: honours rotation and SAR.
    # A width beyond the allowed range is capped just past it (a 400:1 sample aspect ratio would ask for
    # 32000x240): ffmpeg never scales to a huge frame, and the caller still sees the frame is too wide.
    w = str(width) if width is not None else f"min(2*max(1,trunc({height}*dar/2+0.5)),{width_range(height)[1] + 2})"
    # Output full-range BT.601 YUV 4:2:0, which is what a JPEG (JFIF) stores: the planes go to the
    # JPEG encoder as they are, with no RGB round trip (measured: ~30 % less ffmpeg CPU per output
    # frame than RGB, half the bytes through the pipe, and no colour conversion in libjpeg).
    stream = stream.filter("scale", w=w, h=height, flags="bicubic", out_range="full", out_color_matrix="bt601")
    stream = stream.filter("format", "yuv420p").filter("setsar", 1)
    args = stream.output("pipe:", format="yuv4mpegpipe").compile(cmd="ffmpeg")
    return [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", *args[1:]]


class SegmentDecoder:
    """Stream ``count`` grid slots of one file as YUV frames; never holds more than one frame.

    ``file_start`` is the time in the file where slot 0 begins (it may be slightly negative for a
    pre-cut clip: then the first frame fills the gap). Iterate to get ``(slot, YuvFrame)``;
    afterwards ``result`` tells how it ended. The process is killed at ``deadline`` (time.monotonic()).
    """

    def __init__(self, path: Path, file_start: float, count: int, fps: float, height: int,
                 width: int | None, threads: int, deadline: float):
        self.path, self.count, self.deadline = path, count, deadline
        seek = max(file_start, 0.0)
        shift = seek - file_start
        # Read a quarter slot past the last needed slot so ffmpeg's EOF rounding emits it.
        duration = (count + 0.25) / fps - shift
        # Input seeking first; decoding from the start as the fallback (and for seek 0: some files
        # give nothing after even `-ss 0`).
        modes = (True, False) if seek > 0 else (False,)
        self.commands = [_ffmpeg_command(path, seek, shift, duration, fps, height, width, threads, input_seek=m)
                         for m in modes]
        self.result = SegmentResult()

    def __iter__(self) -> Iterator[tuple[int, YuvFrame]]:
        for command in self.commands:
            # Some files (a broken index, e.g. a Matroska file without cues) give no frame and no
            # error after an input seek; decoding them from the start is the only way in.
            self.result = SegmentResult()
            yield from self._run(command)
            if self.result.frames or self.result.failed:
                return

    def _run(self, command: list[str]) -> Iterator[tuple[int, YuvFrame]]:
        with tempfile.TemporaryFile() as errfile:
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=errfile)
            _enlarge_pipe(proc.stdout.fileno())
            stopped_early = ended = False
            try:
                for frame in _read_y4m_frames(proc.stdout, self.deadline):
                    yield self.result.frames, frame
                    self.result.frames += 1
                    if self.result.frames >= self.count:
                        stopped_early = True
                        break
                ended = True
            except TimeoutError:
                self.result.timed_out = True
            finally:
                # Killed unless it ended by itself: stopped early, timed out, or abandoned by the caller
                # (the generator closed, e.g. a sample rejected at its first frame) or an exception.
                if stopped_early or not ended:
                    proc.kill()
                proc.stdout.close()
                try:
                    proc.wait(timeout=max(1.0, self.deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    self.result.timed_out = True
            self.result.returncode = 0 if stopped_early else proc.returncode
            errfile.seek(0)
            # ffmpeg names the input by its URL; details name the path as given, as they did before file: URLs.
            text = errfile.read(65536).decode("utf-8", "replace").replace(file_url(self.path), str(self.path))
            self.result.error_lines = [_POINTER.sub("", line).strip() for line in text.splitlines() if line.strip()]


def _enlarge_pipe(fd: int) -> None:
    """Let a whole frame fit in the pipe (Linux; 64 kB by default).

    With a small pipe ffmpeg blocks several times per frame until Python drains it, and on a loaded
    machine every such hand-over waits for a scheduler slot: measured, it cost more wall time than
    the decoding itself. 1 MiB is Linux's default limit for unprivileged processes.
    """
    try:
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 20)
    except (ImportError, AttributeError, OSError):
        pass


def _read_y4m_frames(pipe, deadline: float) -> Iterator[YuvFrame]:
    """Parse a YUV4MPEG2 stream (a header line, then ``FRAME\n`` + Y, U, V planes per frame) from a pipe.

    Each frame is read straight into its own buffer (one copy, from the kernel); header lines are
    read in small pieces so that nothing of the next frame is read ahead.
    """
    fd = pipe.fileno()
    pending = bytearray()  # bytes read past the current header line

    def wait_readable() -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            raise TimeoutError

    def line() -> bytes | None:
        nonlocal pending
        while b"\n" not in pending:
            wait_readable()
            chunk = os.read(fd, 64)
            if not chunk:
                return None
            pending += chunk
        end = pending.index(b"\n") + 1
        text, pending = bytes(pending[:end]), pending[end:]
        return text

    header = line()
    if header is None:
        return
    fields = {f[:1]: f[1:] for f in header.split()[1:]}
    if not header.startswith(b"YUV4MPEG2 ") or not fields.get(b"C", b"420").startswith(b"420"):
        raise ValueError(f"unexpected stream header {header!r} from ffmpeg")
    width, height = int(fields[b"W"]), int(fields[b"H"])
    luma, chroma = width * height, (width // 2) * (height // 2)
    while True:
        marker = line()
        if marker is None:
            return
        if not marker.startswith(b"FRAME"):
            raise ValueError(f"unexpected frame header {marker[:32]!r} from ffmpeg")
        buf = bytearray(luma + 2 * chroma)
        filled = min(len(pending), len(buf))
        buf[:filled] = pending[:filled]
        pending = pending[filled:]
        view = memoryview(buf)
        while filled < len(buf):
            wait_readable()
            n = os.readv(fd, [view[filled:]])
            if n == 0:
                return  # truncated last frame: ffmpeg died mid-frame
            filled += n
        planes = np.frombuffer(buf, dtype=np.uint8)
        yield YuvFrame(planes[:luma].reshape(height, width),
                       planes[luma:luma + chroma].reshape(height // 2, width // 2),
                       planes[luma + chroma:].reshape(height // 2, width // 2))


def slot_at_or_after(t: float, grid_start: float, fps: float) -> int:
    """Index of the first grid slot whose midpoint time is at or after ``t`` (never negative)."""
    # 1e-6 s tolerance: times come from text with millisecond precision.
    return max(0, math.ceil((t - grid_start) * fps - 0.5 - 1e-6))


def slot_time(n: int, grid_start: float, fps: float) -> float:
    """Midpoint time (seconds in the source video) of slot ``n``: the time its frame shows."""
    return grid_start + (n + 0.5) / fps
