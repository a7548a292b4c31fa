"""The embedded demo sample: HD-VILA-format metadata plus synthetic videos rendered with ffmpeg.

``lfvila/resources/sample/`` (``manifests/sample/`` in the checkout) holds two committed files made by :func:`generate_scenes`:

- ``hdvila_sample.jsonl``: HD-VILA-100M metadata lines (``video_id``, ``url``, ``clip`` with
  ``clip_id`` ``<vid>.<n>.mp4``, ``span`` ``["HH:MM:SS.mmm", ...]`` and ``text``);
- ``scenes.jsonl``: what the renderer draws, one line per video: its length and, per clip,
  the background colour, a shape and how it moves.

Clip *n*'s sentence says what clip *n* shows ("a square moves to the right on a red
background"), and no two clips of a video share a colour, so a tiny model trained for a few
minutes on CPU can learn paragraph-to-video retrieval and clip-to-sentence alignment: the
demo's figures beating chance shows the chain (sources, merge, frame times, loader, model,
losses) is right. Between clips the video shows a neutral grey grid.

A few quirks of the real release are kept on purpose so the merge rule and the rejects are
exercised: a clip missing from the metadata (its footage is in the video) splitting a run in
two, a split leaving a run too short to keep, a video with only three clips, a clip with empty
text, a duplicated clip entry, a video whose download is missing and one whose file ends
before its last clip does.

:func:`render_demo_videos` renders one H.264 video per ``video_id`` into ``OUT/videos/<vid>.mp4``
(in parallel, deterministic, atomic: temporary name then rename; videos already rendered are
skipped) and returns the ``hdvila:PATH`` source string for ``lfvila build``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

from lfvila.atomic import AtomicPath, atomic_write_bytes
from lfvila.resources import resource_path
from lfvila.video.decode import ffmpeg_exe, file_url  # $LFVILA_FFMPEG or imageio-ffmpeg's build

log = logging.getLogger(__name__)

# Packaged with lfvila (lfvila/resources/sample/; manifests/sample/ in the checkout links there).
SAMPLE_DIR = resource_path("sample")
METADATA_NAME = "hdvila_sample.jsonl"
SCENES_NAME = "scenes.jsonl"
# Bumped whenever the drawing changes, so stale renders are redone.
RENDER_VERSION = 1

# Background colours (RGB hex). Eight, well apart, none of them grey (the gap colour).
COLOURS = {
    "red": "0xDC2828",
    "green": "0x28B43C",
    "blue": "0x2846DC",
    "yellow": "0xE6DC28",
    "purple": "0x8C32C8",
    "orange": "0xF08C1E",
    "pink": "0xF596C8",
    "cyan": "0x32D2DC",
}
# Shapes are white on dark backgrounds and black on light ones, so they stay visible.
LIGHT_COLOURS = frozenset({"yellow", "orange", "pink", "cyan"})
GAP_COLOUR = "0x808080"
GRID_COLOUR = "0x6E6E6E"
SHAPES = ("square", "horizontal bar", "vertical bar")
MOTIONS = ("moves to the right", "moves down", "stays still")
TEMPLATES = (
    "the screen turns {colour} and a {shape} {motion}.",
    "a {shape} {motion} on {a_colour} background.",
    "everything is {colour} while a {shape} {motion}.",
)


@dataclass(frozen=True)
class ClipScene:
    """One HD-VILA clip: its number, span (seconds) and what the video shows during it."""

    n: int
    start: float
    end: float
    colour: str
    shape: str
    motion: str
    text: str
    # False: the footage is in the video but the metadata does not list the clip.
    listed: bool = True
    # True: the metadata lists this clip twice (a duplicate entry the manifest must reject).
    duplicated: bool = False


@dataclass(frozen=True)
class VideoScene:
    """One source video: ``duration`` is the rendered length, which may end before the last clip."""

    video_id: str
    duration: float
    clips: tuple[ClipScene, ...]
    # True: listed in the metadata but never rendered, like a YouTube video that is gone.
    missing_file: bool = False
    quirk: str = ""


@dataclass
class RenderedSample:
    """What :func:`render_demo_videos` made: ``sources`` for ``lfvila build --source`` and the videos."""

    sources: list[str]
    videos_dir: Path
    rendered: list[str] = field(default_factory=list)  # video_ids rendered by this call
    skipped: list[str] = field(default_factory=list)  # already complete, left alone
    missing: list[str] = field(default_factory=list)  # listed in the metadata, deliberately not rendered


# ---------------------------------------------------------------------------------------------
# Generating the committed sources


def _video_id(rng: random.Random) -> str:
    # YouTube ids: 11 characters of [A-Za-z0-9_-], as in HD-VILA.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
    return "".join(rng.choice(alphabet) for _ in range(11))


def _colour_sequence(rng: random.Random, n: int) -> list[str]:
    """``n`` colours, all distinct within each window of 8 (so any 4 consecutive clips differ)."""
    names = list(COLOURS)
    out: list[str] = []
    while len(out) < n:
        block = names[:]
        rng.shuffle(block)
        if out and block[0] == out[-1]:
            block[0], block[-1] = block[-1], block[0]
        out.extend(block)
    return out[:n]


def _clips(rng: random.Random, n_clips: int, t0: float) -> tuple[list[ClipScene], float]:
    """Clips 1..n with spans of 2-4 s separated by 0.3-1.5 s gaps; returns them and the end time."""
    clips = []
    t = t0
    for n, colour in enumerate(_colour_sequence(rng, n_clips), start=1):
        start = round(t, 3)
        end = round(start + rng.uniform(2.0, 4.0), 3)
        shape, motion = rng.choice(SHAPES), rng.choice(MOTIONS)
        a_colour = ("an " if colour[0] in "aeiou" else "a ") + colour
        text = rng.choice(TEMPLATES).format(colour=colour, a_colour=a_colour, shape=shape, motion=motion)
        clips.append(ClipScene(n, start, end, colour, shape, motion, text))
        t = end + rng.uniform(0.3, 1.5)
    return clips, t


class _Quirk(NamedTuple):
    """A deliberately odd video: what it exercises, its clip count and what is changed."""

    description: str
    n_clips: int
    clip: int = 0  # the clip number changed by ``clip_changes`` (0: none)
    clip_changes: tuple[tuple[str, object], ...] = ()
    missing_file: bool = False
    cut_end_s: float = 0.0  # the file ends this long before the last clip's span does


# Quirk videos, by position in the generated list.
_QUIRKS = {
    3: _Quirk("clip 6 missing from the metadata: runs 1-5 and 7-10 become two long videos", 10,
              6, (("listed", False),)),
    11: _Quirk("clip 5 missing: run 1-4 is kept, run 6-7 is too short and left out by the merge", 7,
               5, (("listed", False),)),
    19: _Quirk("only 3 clips: too short for a long video, left out by the merge", 3),
    27: _Quirk("clip 5 has empty text: rejected, leaving runs 1-4 and 6-9", 9, 5, (("text", ""),)),
    35: _Quirk("clip 2 listed twice: the duplicate entry is rejected", 5, 2, (("duplicated", True),)),
    43: _Quirk("listed in the metadata but the video file is missing", 5, missing_file=True),
    51: _Quirk("the file ends 1.5 s before the last clip's span does (a truncated download)", 6, cut_end_s=1.5),
}


def generate_scenes(n_videos: int = 100, seed: int = 0) -> list[VideoScene]:
    """The demo sample: ``n_videos`` videos of 4-8 clips, with the quirk videos of ``_QUIRKS``."""
    rng = random.Random(seed)
    scenes = []
    for i in range(n_videos):
        video_id = _video_id(rng)
        n_clips = rng.randint(4, 8)  # drawn for quirk videos too, so the other videos do not change
        quirk = _QUIRKS.get(i) or _Quirk("", n_clips)
        clips, t_end = _clips(rng, quirk.n_clips, t0=rng.uniform(0.5, 2.0))
        duration = round(t_end + rng.uniform(0.0, 1.0), 3)
        clips = [ClipScene(**{**asdict(c), **dict(quirk.clip_changes)}) if c.n == quirk.clip else c for c in clips]
        if quirk.cut_end_s:
            duration = round(clips[-1].end - quirk.cut_end_s, 3)
        scenes.append(VideoScene(video_id, duration, tuple(clips), quirk.missing_file, quirk.description))
    return scenes


def format_timestamp(seconds: float) -> str:
    """HD-VILA span format ``HH:MM:SS.mmm``."""
    ms = int(round(seconds * 1000))
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def metadata_record(scene: VideoScene) -> dict:
    """The HD-VILA metadata line of one video (clips not ``listed`` are left out)."""
    entries = []
    for c in scene.clips:
        if not c.listed:
            continue
        entry = {"clip_id": f"{scene.video_id}.{c.n}.mp4",
                 "span": [format_timestamp(c.start), format_timestamp(c.end)], "text": c.text}
        entries.extend([entry, dict(entry)] if c.duplicated else [entry])
    return {"video_id": scene.video_id, "url": f"https://www.youtube.com/watch?v={scene.video_id}",
            "clip": entries}


def _jsonl(records: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=False) + "\n" for r in records).encode()


def sample_files(scenes: list[VideoScene]) -> dict[str, bytes]:
    """The bytes of ``hdvila_sample.jsonl`` and ``scenes.jsonl`` for these scenes."""
    return {
        METADATA_NAME: _jsonl([metadata_record(s) for s in scenes]),
        SCENES_NAME: _jsonl([asdict(s) for s in scenes]),
    }


def write_sample_sources(sample_dir: Path = SAMPLE_DIR, n_videos: int = 100, seed: int = 0) -> None:
    """Regenerate the committed sample files (a test checks the committed ones match)."""
    sample_dir.mkdir(parents=True, exist_ok=True)
    for name, data in sample_files(generate_scenes(n_videos, seed)).items():
        atomic_write_bytes(sample_dir / name, data)


def load_scenes(path: Path) -> list[VideoScene]:
    """Read ``scenes.jsonl``."""
    scenes = []
    for line in path.read_text().splitlines():
        d = json.loads(line)
        d["clips"] = tuple(ClipScene(**c) for c in d["clips"])
        scenes.append(VideoScene(**d))
    return scenes


# ---------------------------------------------------------------------------------------------
# Rendering


def _shape_box(shape: str, width: int, height: int) -> tuple[int, int]:
    """(w, h) in pixels of a shape, even so yuv420p chroma stays aligned."""
    even = lambda v: max(2, int(v) // 2 * 2)  # noqa: E731
    return {
        "square": (even(height / 3), even(height / 3)),
        "horizontal bar": (even(width / 2), even(height / 8)),
        "vertical bar": (even(width / 14), even(height * 2 / 3)),
    }[shape]


def segments(scene: VideoScene, fps: int) -> list[tuple[int, int, ClipScene | None]]:
    """The video as frame ranges ``[first, last)``, each a clip or a gap (``None``), in order.

    A clip owns every frame whose display interval ``[k/fps, (k+1)/fps)`` meets its span, so
    whatever frame a decoder shows at any time inside the span is the clip's. The video has
    ``round(duration * fps)`` frames; a clip running past that is cut there.
    """
    n_frames = round(scene.duration * fps)
    out: list[tuple[int, int, ClipScene | None]] = []
    cursor = 0
    for c in scene.clips:
        first = min(math.floor(c.start * fps), n_frames)
        last = min(math.ceil(c.end * fps), n_frames)
        if first > cursor:
            out.append((cursor, first, None))
        if last > first:
            out.append((first, last, c))
        cursor = max(cursor, last)
    if n_frames > cursor:
        out.append((cursor, n_frames, None))
    return out


def filter_graph(scene: VideoScene, width: int, height: int, fps: int) -> str:
    """The lavfi graph drawing one video: per clip a colour with a moving shape, grey grid between.

    Segments are made with exact frame counts and concatenated, so clip boundaries land on the
    frames :func:`segments` says (drawing everything on one timeline with ``enable`` is ~5x slower).
    """
    parts, labels = [], []
    for j, (first, last, c) in enumerate(segments(scene, fps)):
        n = last - first
        if c is None:
            parts.append(f"color=c={GAP_COLOUR}:s={width}x{height}:r={fps},trim=end_frame={n},"
                         f"drawgrid=w={width // 8}:h={height // 4.5:.0f}:t=1:c={GRID_COLOUR}[g{j}]")
        else:
            sw, sh = _shape_box(c.shape, width, height)
            shape_colour = "black" if c.colour in LIGHT_COLOURS else "white"
            # t is the segment's own time; progress runs 0 -> 1 over the clip's span.
            progress = f"clip((t+{first / fps:.6f}-{c.start})/{c.end - c.start:.3f}\\,0\\,1)"
            x = f"(W-w)*(0.05+0.9*{progress})" if c.motion == "moves to the right" else "(W-w)/2"
            y = f"(H-h)*(0.05+0.9*{progress})" if c.motion == "moves down" else "(H-h)/2"
            parts.append(f"color=c={COLOURS[c.colour]}:s={width}x{height}:r={fps},trim=end_frame={n}[b{j}]")
            parts.append(f"color=c={shape_colour}:s={sw}x{sh}:r={fps},trim=end_frame={n}[s{j}]")
            parts.append(f"[b{j}][s{j}]overlay=x='{x}':y='{y}':eval=frame[g{j}]")
        labels.append(f"[g{j}]")
    parts.append(f"{''.join(labels)}concat=n={len(labels)}:v=1:a=0,format=yuv420p[v]")
    return ";".join(parts)


def render_command(scene: VideoScene, out_path: Path, width: int = 320, height: int = 180,
                   fps: int = 15) -> list[str]:
    """The ffmpeg command rendering ``scene`` to an H.264 MP4 (deterministic: one thread, bitexact)."""
    return [
        ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
        "-filter_complex", filter_graph(scene, width, height, fps), "-map", "[v]",
        "-c:v", "libx264", "-preset", "ultrafast", "-g", str(2 * fps), "-pix_fmt", "yuv420p",
        "-threads", "1", "-fflags", "+bitexact", "-flags:v", "+bitexact", "-map_metadata", "-1",
        "-f", "mp4", file_url(out_path),
    ]


def render_video(scene: VideoScene, videos_dir: Path, width: int = 320, height: int = 180,
                 fps: int = 15) -> Path:
    """Render one video to ``videos_dir/<video_id>.mp4`` via a temporary name (atomic)."""
    out = AtomicPath(videos_dir / f"{scene.video_id}.mp4")
    try:
        subprocess.run(render_command(scene, out.tmp, width, height, fps), check=True,
                       capture_output=True, timeout=300)
        out.commit()
    except FileNotFoundError as e:
        raise RuntimeError(f"ffmpeg not found ({e}); set LFVILA_FFMPEG to an ffmpeg binary") from e
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"ffmpeg failed rendering {scene.video_id}: {e.stderr.decode(errors='replace')[-2000:]}") from e
    finally:
        out.discard()
    return out.path


def _stamp(scene: VideoScene, settings: dict) -> dict:
    """What a rendered video was made from: the scene and the render settings."""
    return {**settings, "scene_sha256": hashlib.sha256(json.dumps(asdict(scene), sort_keys=True).encode()).hexdigest()}


def _read_stamp(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def render_demo_videos(out_dir: Path, *, sample_dir: Path = SAMPLE_DIR, limit: int | None = None,
                  workers: int | None = None, width: int = 320, height: int = 180,
                  fps: int = 15) -> RenderedSample:
    """Render the demo sample's videos into ``out_dir/videos`` and return its ``hdvila:`` source.

    The metadata used (all of it, or the first ``limit`` videos) is written to
    ``out_dir/sources/hdvila_sample.jsonl``; ``sources`` is ``["hdvila:<that path>"]``.
    Videos already rendered from the same scene and render settings are skipped, so a rerun
    is cheap; a changed scene or setting re-renders that video (stamps in ``out_dir/.render``).
    """
    out_dir = Path(out_dir)
    scenes = load_scenes(sample_dir / SCENES_NAME)
    if limit is not None:
        scenes = scenes[:limit]
    files = sample_files(scenes)
    sources_dir, videos_dir = out_dir / "sources", out_dir / "videos"
    sources_dir.mkdir(parents=True, exist_ok=True)
    videos_dir.mkdir(parents=True, exist_ok=True)
    metadata_path = sources_dir / METADATA_NAME
    atomic_write_bytes(metadata_path, files[METADATA_NAME])

    result = RenderedSample(sources=[f"hdvila:{metadata_path.resolve()}"], videos_dir=videos_dir.resolve())
    # Stamps live outside videos_dir: the shard stage treats any DIR/<video_id>.* file as the video.
    stamps_dir = out_dir / ".render"
    stamps_dir.mkdir(exist_ok=True)
    settings = {"render_version": RENDER_VERSION, "width": width, "height": height, "fps": fps}
    todo = []
    for s in scenes:
        path = videos_dir / f"{s.video_id}.mp4"
        if s.missing_file:
            path.unlink(missing_ok=True)
            result.missing.append(s.video_id)
        elif path.exists() and _read_stamp(stamps_dir / f"{s.video_id}.json") == _stamp(s, settings):
            result.skipped.append(s.video_id)
        else:
            todo.append(s)

    def render(scene: VideoScene) -> None:
        render_video(scene, videos_dir, width, height, fps)
        # Written after the rename: a kill in between only costs a re-render next time.
        atomic_write_bytes(stamps_dir / f"{scene.video_id}.json", json.dumps(_stamp(scene, settings)).encode())

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        # ffmpeg does the work in its own process, so threads are enough to run them in parallel.
        list(pool.map(render, todo))
    result.rendered = [s.video_id for s in todo]
    log.info("demo sample: %d videos rendered, %d already there, %d missing on purpose -> %s",
             len(result.rendered), len(result.skipped), len(result.missing), videos_dir)
    return result
