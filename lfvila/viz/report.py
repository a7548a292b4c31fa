"""``lfvila report``: distributions of a corpus as PNG plots plus a markdown summary.

Plots (one PNG each, under the report directory): long-form video durations, sentences per
video, words per sentence (per split), and rejects by reason (manifest stage and video stage).
Distributions describe the written samples when the shards exist, else the manifest's plan.
``report.md`` holds the ``inspect`` table, the distributions' quantiles and links to the plots.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lfvila.atomic import AtomicPath, atomic_write_text
from lfvila.viz.corpus import CorpusPaths, read_table
from lfvila.viz.summary import VOCABULARY, CorpusSummary, SplitSummary, loss_rows, summarize

PLOTS = {
    "durations": ("long-form video duration (s)", "durations.png"),
    "sentences_per_video": ("sentences per long-form video", "sentences_per_video.png"),
    "words_per_sentence": ("words per sentence", "words_per_sentence.png"),
}


@dataclass
class Distributions:
    """Per split, the values plotted (and whether they describe written samples or the manifest plan)."""

    durations: dict[str, list[float]]
    sentences_per_video: dict[str, list[int]]
    words_per_sentence: dict[str, list[int]]
    of_written_samples: bool


def distributions(root: Path) -> Distributions:
    """Read the plotted values from ``index.parquet`` (written samples) or ``longform.parquet``."""
    paths = CorpusPaths(Path(root))
    longform = read_table(paths.longform, ["key", "split", "start", "end", "n_clips", "sentences"])
    index = read_table(paths.index, ["key", "split", "duration", "n_sentences"])
    durations: dict[str, list[float]] = {}
    per_video: dict[str, list[int]] = {}
    words: dict[str, list[int]] = {}
    written: set[str] | None = None
    if index is not None:
        written = set(index.column("key").to_pylist())
        for split, duration, n in zip(*(index.column(c).to_pylist() for c in ("split", "duration", "n_sentences"))):
            durations.setdefault(split, []).append(float(duration))
            per_video.setdefault(split, []).append(int(n))
    if longform is not None:
        rows = longform.to_pylist()
        for row in rows:
            if written is not None and row["key"] not in written:
                continue
            split = row["split"]
            if index is None:
                durations.setdefault(split, []).append(float(row["end"] - row["start"]))
                per_video.setdefault(split, []).append(int(row["n_clips"]))
            for sentence in row.get("sentences") or []:
                words.setdefault(split, []).append(len(str(sentence["text"]).split()))
    def ordered(by_split: dict) -> dict:
        return dict(sorted(by_split.items(), key=lambda kv: (kv[0] != "train", kv[0])))

    return Distributions(ordered(durations), ordered(per_video), ordered(words), of_written_samples=index is not None)


def _quantiles(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    return {"n": int(a.size), "mean": float(a.mean()), "p10": float(np.percentile(a, 10)),
            "median": float(np.median(a)), "p90": float(np.percentile(a, 90)), "max": float(a.max())}


def _save(fig, path: Path) -> Path:
    with AtomicPath(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def plot_histogram(values_by_split: dict[str, list[float]], xlabel: str, path: Path, *, integer: bool) -> Path:
    """One histogram per split on shared bins (step outlines so splits stay readable)."""
    fig, ax = _figure()
    everything = [v for values in values_by_split.values() for v in values]
    if everything:
        lo, hi = min(everything), max(everything)
        if integer:
            bins = np.arange(int(lo), int(hi) + 2) - 0.5
        else:
            bins = np.linspace(lo, hi if hi > lo else lo + 1, 30)
        for split, values in values_by_split.items():
            ax.hist(values, bins=bins, histtype="step", linewidth=2, label=f"{split} (n={len(values)})")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_rejects(summary: CorpusSummary, path: Path) -> Path:
    """Horizontal bars: manifest rejects (records) and video-stage rejects (samples) by reason."""
    bars = [(f"{stage.split(':')[0]}: {reason}", n) for stage, reason, n in loss_rows(summary)]
    fig, ax = _figure()
    if bars:
        labels, counts = zip(*bars)
        y = np.arange(len(bars))
        ax.barh(y, counts, height=min(0.8, 0.25 * len(bars)), color=[_STAGE_COLOURS.get(label.split(":")[0].split(" ")[0], "tab:red") for label in labels])
        ax.set_yticks(y, labels, fontsize=8)
        ax.invert_yaxis()
        for yi, n in zip(y, counts):
            ax.text(n, yi, f" {n}", va="center", fontsize=8)
        ax.set_xlabel("count (manifest: input records; merge: clips; video: samples or clips)")
        ax.xaxis.get_major_locator().set_params(integer=True)
    else:
        ax.text(0.5, 0.5, "no rejects", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set_title("rejects by reason", fontsize=10)
    return _save(fig, path)


_STAGE_COLOURS = {"manifest": "tab:blue", "merge": "tab:orange", "video": "tab:red"}


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _split_row(s: SplitSummary) -> list[str]:
    return [s.split, str(s.longform_videos), f"{s.longform_hours:.2f}", str(s.samples), f"{s.hours:.2f}",
            str(s.frames), str(s.sentences), str(s.shards), str(s.bytes), str(sum(s.rejected.values())),
            str(sum(s.failed.values()))]


def write_report(root: Path, out_dir: Path | None = None) -> Path:
    """Write the plots and ``report.md`` to ``out_dir`` (default ``ROOT/report``); return the markdown path."""
    root = Path(root)
    out_dir = Path(out_dir) if out_dir is not None else root / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(root)
    dist = distributions(root)

    values = {"durations": dist.durations, "sentences_per_video": dist.sentences_per_video,
              "words_per_sentence": dist.words_per_sentence}
    for name, (xlabel, filename) in PLOTS.items():
        plot_histogram(values[name], xlabel, out_dir / filename, integer=name != "durations")
    plot_rejects(summary, out_dir / "rejects.png")

    lines = [f"# Corpus report: {summary.root}", ""]
    if summary.lfvila_version:
        lines += [f"lfvila {summary.lfvila_version}", ""]
    lines += ["## Splits", ""]
    lines += _markdown_table(["split", "planned videos", "planned hours", "samples", "hours", "frames", "sentences",
                              "shards", "bytes", "rejected", "failed"], [_split_row(s) for s in summary.splits.values()])
    lines += ["", "planned: long-form videos in the manifest; samples: written to shards; rejected / failed: "
              "samples the video stage did not write (see Rejects).", ""]
    lines += ["## Distributions", "",
              f"Of the {'written samples' if dist.of_written_samples else 'manifest long-form videos (no shards yet)'}.",
              ""]
    rows = []
    for name, (xlabel, _) in PLOTS.items():
        for split, vals in values[name].items():
            if vals:
                q = _quantiles(vals)
                rows.append([xlabel, split, str(q["n"]), f"{q['mean']:.2f}", f"{q['p10']:.2f}", f"{q['median']:.2f}",
                             f"{q['p90']:.2f}", f"{q['max']:.2f}"])
    lines += _markdown_table(["quantity", "split", "n", "mean", "p10", "median", "p90", "max"], rows)
    lines += [""] + [f"![{xlabel}]({filename})" for xlabel, filename in PLOTS.values()]
    lines += ["", "## Rejects", ""]
    reject_rows = [[stage, reason, str(n)] for stage, reason, n in loss_rows(summary)]
    lines += _markdown_table(["stage", "reason", "count"], reject_rows) if reject_rows else ["No rejects."]
    lines += [""] + [f"- **{word}**: {meaning}" for word, meaning in VOCABULARY.items()]
    lines += ["", "![rejects by reason](rejects.png)", ""]
    report = out_dir / "report.md"
    atomic_write_text(report, "\n".join(lines))
    return report
