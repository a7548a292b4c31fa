"""Small inputs for tests and benchmarks of the shard stage: manifest tables and ffmpeg-made videos."""
from __future__ import annotations

import subprocess
from pathlib import Path

from lfvila.video.decode import ffmpeg_exe, file_url

# Colours of the known-content video: second k shows PALETTE[k % len(PALETTE)].
PALETTE = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255),
           (255, 255, 255), (0, 0, 0)]


def write_longform(path: Path, rows: list[dict]) -> None:
    """Write ``longform.parquet`` rows (manifest contract: key, split, source, video_id, start, end,
    n_clips, sentences [{clip_id, start, end, text}]); start/end/n_clips default from the sentences."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lfvila.manifest.tables import LONGFORM_SCHEMA

    full = []
    for r in rows:
        s = r["sentences"]
        full.append({"source": "test", "split": "train", "video_duration": None, "start": min(x["start"] for x in s),
                     "end": max(x["end"] for x in s), "n_clips": len(s), **r})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(full, schema=LONGFORM_SCHEMA), path)


def sentences_every(start: float, end: float, step: float, video_id: str, text: str = "a sentence") -> list[dict]:
    """Consecutive sentences of ``step`` seconds covering [start, end), HD-VILA-style clip ids."""
    out = []
    t, n = start, 1
    while t < end - 1e-9:
        e = min(t + step, end)
        out.append({"clip_id": f"{video_id}.{n}.mp4", "start": round(t, 6), "end": round(e, 6), "text": f"{text} {n}"})
        t, n = e, n + 1
    return out


def make_colour_video(path: Path, seconds: int, fps: int = 25, size: str = "160x120",
                      codec: list[str] | None = None, noise: int = 0) -> Path:
    """A video whose second k is one flat colour, PALETTE[k % 8]: frame content tells its time.

    Frames are made at 25 fps and resampled to ``fps`` (at 1 fps: one frame per second, at t = k).
    ``noise`` > 0 adds that much temporal noise (mean colour kept within a few levels) so the file
    has realistic size per second, e.g. to measure how many bytes a partial download fetches.
    """
    n = seconds
    inputs = []
    for k in range(n):
        r, g, b = PALETTE[k % len(PALETTE)]
        inputs += ["-f", "lavfi", "-i", f"color=c=0x{r:02x}{g:02x}{b:02x}:s={size}:r=25:d=1"]
    graph = "".join(f"[{k}:v]" for k in range(n)) + f"concat=n={n}:v=1:a=0,fps={fps}" + (f",noise=alls={noise}:allf=t" if noise else "") + "[v]"
    codec = codec or ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", str(fps)]
    _ffmpeg([*inputs, "-filter_complex", graph, "-map", "[v]", *codec, file_url(path)])
    return Path(path)


def make_testsrc_video(path: Path, seconds: float, size: str = "1280x720", fps: int = 30) -> Path:
    """A synthetic H.264 video (testsrc2 pattern), e.g. the 720p benchmark input."""
    _ffmpeg(["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fps}", "-t", f"{seconds}", "-c:v", "libx264",
             "-preset", "veryfast", "-pix_fmt", "yuv420p", file_url(path)])
    return Path(path)


def cut_clip(src: Path, dst: Path, start: float, end: float) -> Path:
    """Cut [start, end) of ``src`` into ``dst`` with an accurate (re-encoding) seek, as a pre-cut clip."""
    _ffmpeg(["-ss", f"{start}", "-to", f"{end}", "-i", file_url(src), "-c:v", "libx264", "-preset", "ultrafast",
             "-pix_fmt", "yuv420p", file_url(dst)])
    return Path(dst)


def _ffmpeg(args: list[str]) -> None:
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args]
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, capture_output=True)
