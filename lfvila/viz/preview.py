"""``lfvila preview``: a contact sheet of one sample, to check by eye that sentences and frames line up.

The sheet has three parts, all coloured by sentence (frames outside every sentence are grey):
the frames with their index and time in the source video (the strip under each says which
sentence's ``[frame_start, frame_end)`` range holds the frame); a timeline of the sample with each
sentence's span as a bar and every stored frame's time as a tick; and the sentences' text.
"""
from __future__ import annotations

import io
import math
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

from lfvila.atomic import AtomicPath

GAP_GREY = "#9a9a9a"


def _palette(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10"] if n <= 10 else colormaps["tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def frame_sentences(meta: dict) -> list[int | None]:
    """For each stored frame, the index of the sentence whose frame range holds it (or ``None``)."""
    owner: list[int | None] = [None] * len(meta["frame_times"])
    for j, s in enumerate(meta["sentences"]):
        for i in range(max(0, s["frame_start"]), min(len(owner), s["frame_end"])):
            owner[i] = j
    return owner


def chosen_frames(n_frames: int, max_frames: int) -> list[int]:
    """All frames, or ``max_frames`` of them evenly spaced (first and last included)."""
    if n_frames <= max_frames:
        return list(range(n_frames))
    return sorted({int(round(x)) for x in np.linspace(0, n_frames - 1, max_frames)})


def _lanes(spans: list[tuple[float, float]]) -> list[int]:
    """Greedy lane per span so that overlapping spans (ASR sentences may overlap) do not hide each other."""
    lane_ends: list[float] = []
    lanes = []
    for start, end in spans:
        for k, lane_end in enumerate(lane_ends):
            if start >= lane_end:
                lane_ends[k] = end
                lanes.append(k)
                break
        else:
            lane_ends.append(end)
            lanes.append(len(lane_ends) - 1)
    return lanes


def contact_sheet(meta: dict, frames: list[bytes], out_path: Path, *, max_frames: int = 60,
                  columns: int = 10, thumb_width_in: float = 1.6, dpi: int = 110) -> Path:
    """Draw the contact sheet of a sample (``KEY.json`` as ``meta``, JPEG ``frames``) to ``out_path`` (PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    sentences = meta["sentences"]
    times = meta["frame_times"]
    owner = frame_sentences(meta)
    colours = _palette(len(sentences))
    shown = chosen_frames(len(frames), max_frames)
    columns = max(1, min(columns, len(shown)))
    rows = max(1, math.ceil(len(shown) / columns))
    width, height = meta.get("width") or 16, meta.get("height") or 9
    thumb_h = thumb_width_in * height / width
    spans = [(s["start"], s["end"]) for s in sentences]
    lanes = _lanes(spans)
    n_lanes = max(lanes, default=0) + 1
    text_lines = [
        f"S{j + 1}  {s['start']:.2f}-{s['end']:.2f} s  frames [{s['frame_start']}, {s['frame_end']})  "
        + textwrap.shorten(s["text"], 150, placeholder=" ...")
        for j, s in enumerate(sentences)
    ]
    grid_in = rows * (thumb_h + 0.32)
    timeline_in = 0.9 + 0.3 * n_lanes
    text_in = 0.2 + 0.2 * len(text_lines)
    # At least 9 in wide so the title and the sentence lines fit even with few columns.
    fig = Figure(figsize=(max(9.0, columns * thumb_width_in), grid_in + timeline_in + text_in + 0.7), dpi=dpi)
    FigureCanvasAgg(fig)
    outer = fig.add_gridspec(3, 1, height_ratios=[grid_in, timeline_in, text_in], hspace=0.25,
                             left=min(0.2, 0.9 / fig.get_figwidth()), right=0.99, top=1 - 0.65 / fig.get_figheight(), bottom=0.01)
    fig.suptitle(
        f"{meta['key']}\n{meta.get('source', '?')} video {meta.get('video_id', '?')}  |  "
        f"{meta['start']:.2f}-{meta['end']:.2f} s  |  {len(frames)} frames at {meta.get('fps', '?')} fps"
        f"{f' (showing {len(shown)})' if len(shown) < len(frames) else ''}  |  {len(sentences)} sentences",
        fontsize=10, y=1 - 0.08 / fig.get_figheight(), va="top")

    grid = outer[0].subgridspec(rows, columns, wspace=0.06, hspace=0.45)
    for slot, i in enumerate(shown):
        ax = fig.add_subplot(grid[slot // columns, slot % columns])
        ax.imshow(np.asarray(Image.open(io.BytesIO(frames[i])).convert("RGB")))
        ax.set_xticks([])
        ax.set_yticks([])
        j = owner[i]
        for spine in ax.spines.values():
            spine.set_edgecolor("#cccccc")
        # The sentence's colour as a strip under the frame, on the white page: a border would
        # vanish on frames of the same colour.
        ax.add_patch(Rectangle((0, -0.16), 1, 0.11, transform=ax.transAxes, clip_on=False, linewidth=0,
                               facecolor=GAP_GREY if j is None else colours[j]))
        label = f"#{i}  {times[i]:.2f}s" + ("" if j is None else f"  S{j + 1}")
        ax.set_title(label, fontsize=7, pad=2, color="black" if j is not None else "#555555")

    timeline = fig.add_subplot(outer[1])
    for j, ((start, end), lane) in enumerate(zip(spans, lanes)):
        timeline.broken_barh([(start, end - start)], (lane + 0.1, 0.8), facecolors=colours[j], alpha=0.85)
        timeline.text((start + end) / 2, lane + 0.5, f"S{j + 1}", ha="center", va="center", fontsize=8,
                      color="white", fontweight="bold", clip_on=True)
    for i, t in enumerate(times):
        j = owner[i]
        timeline.vlines(t, -0.6, -0.05, colors=GAP_GREY if j is None else [colours[j]],
                        linewidth=2.0 if i in shown else 0.8)
    timeline.set_xlim(meta["start"], max(meta["end"], times[-1] if times else meta["end"]))
    timeline.set_ylim(-0.7, n_lanes + 0.05)
    timeline.set_yticks([-0.35] + [k + 0.5 for k in range(n_lanes)])
    timeline.set_yticklabels(["frames"] + ["sentences" if k == 0 else "" for k in range(n_lanes)], fontsize=8)
    timeline.set_xlabel("time in the source video (s)", fontsize=8)
    timeline.tick_params(axis="x", labelsize=8)
    timeline.grid(axis="x", alpha=0.3)

    text_ax = fig.add_subplot(outer[2])
    text_ax.axis("off")
    for j, line in enumerate(text_lines):
        text_ax.text(0.0, 1 - (j + 0.5) / max(1, len(text_lines)), line, transform=text_ax.transAxes,
                     fontsize=8, va="center", ha="left", color=colours[j], family="monospace")

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with AtomicPath(out_path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return out_path


def preview_sample(root: Path, key: str, out_path: Path, **kwargs) -> Path:
    """Read sample ``key`` from the corpus at ``root`` and draw its contact sheet to ``out_path``."""
    from lfvila.viz.corpus import read_sample

    meta, frames = read_sample(Path(root), key)
    return contact_sheet(meta, frames, out_path, **kwargs)
