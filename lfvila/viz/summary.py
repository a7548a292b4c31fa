"""``lfvila inspect``: what a corpus holds, per split, computed from its tables and shards.

Numbers come from the files themselves (``longform.parquet``, ``shards/index.parquet``, the
per-shard status files, ``rejects.parquet`` and the tars on disk), not from a cached summary, so
``inspect`` also tells the truth about a corpus whose build was interrupted.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lfvila.viz.corpus import (
    CorpusPaths,
    key_splits,
    read_corpus_json,
    read_table,
    shard_status,
    shard_tars,
    split_of_shard,
)

OK_STATUSES = ("ok", "success", "written")

# The words every summary uses (build summary, progress bar, inspect, report), defined here once.
VOCABULARY = {
    "rejected": "the data itself is unusable (a malformed or oversized record, a run of too few clips, a broken or too "
                "short video, an absurd aspect ratio); a rerun gives the same result unless the recipe changes",
    "failed": "the cause may lie outside the data (video not downloaded, decode timeout, an OS error reading the "
              "video, internal error); "
              "lfvila build --retry-failed redoes these once the cause is fixed",
    "dropped": "clips left out of a sample that was written (no frame in the clip's span, past the end of "
               "the video); the sample keeps its other clips",
}


@dataclass
class SplitSummary:
    """One split: long-form videos planned by the manifest, and what the shard stage wrote."""

    split: str
    longform_videos: int = 0  # rows of longform.parquet
    longform_clips: int = 0
    longform_hours: float = 0.0
    samples: int = 0  # rows of shards/index.parquet
    hours: float = 0.0  # video time covered by the written samples
    frames: int = 0
    sentences: int = 0
    shards: int = 0  # complete .tar files
    bytes: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # samples the video stage rejected, by reason
    failed: dict[str, int] = field(default_factory=dict)  # samples the video stage failed on, by reason
    clips_dropped: dict[str, int] = field(default_factory=dict)  # clips left out of written samples, by reason


@dataclass
class CorpusSummary:
    root: str
    splits: dict[str, SplitSummary]
    manifest_rejects: dict[str, int]  # input records dropped by the manifest stage (parse/text/validate), by reason
    input_records: int | None = None
    kept_clips: int | None = None
    lfvila_version: str | None = None
    has_manifest: bool = False
    has_index: bool = False
    clips_check: str | None = None  # the shard stage's clip accounting, as recorded in corpus.json
    # Kept clips in no long-form video (rejects.parquet rows of stage "merge"), by reason.
    merge_rejects: dict[str, int] = field(default_factory=dict)
    # Where the totals recorded in corpus.json (section "video") disagree with the files on disk.
    disagreements: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _sum(table, column: str) -> float:
    if table is None or column not in table.column_names:
        return 0.0
    return float(sum(v for v in table.column(column).to_pylist() if v is not None))


def _count_by(values) -> dict[str, int]:
    return dict(sorted(Counter(values).items(), key=lambda kv: (-kv[1], str(kv[0]))))


def summarize(root: Path) -> CorpusSummary:
    """Summarise the corpus at ``root`` (any stage of completion)."""
    paths = CorpusPaths(Path(root))
    if not paths.root.is_dir():
        raise FileNotFoundError(f"no corpus directory at {paths.root}")
    splits: dict[str, SplitSummary] = {}

    def split(name: str) -> SplitSummary:
        return splits.setdefault(name, SplitSummary(name))

    longform = read_table(paths.longform, ["key", "split", "start", "end", "n_clips"])
    if longform is not None:
        for name, start, end, n_clips in zip(*(longform.column(c).to_pylist()
                                               for c in ("split", "start", "end", "n_clips"))):
            s = split(name)
            s.longform_videos += 1
            s.longform_clips += n_clips
            s.longform_hours += (end - start) / 3600.0

    index = read_table(paths.index, ["key", "split", "shard", "n_frames", "duration", "n_sentences"])
    if index is not None:
        for name in set(index.column("split").to_pylist()):
            rows = index.filter(index.column("split").to_numpy(zero_copy_only=False) == name)
            s = split(name)
            s.samples = rows.num_rows
            s.hours = _sum(rows, "duration") / 3600.0
            s.frames = int(_sum(rows, "n_frames"))
            s.sentences = int(_sum(rows, "n_sentences"))

    for tar in shard_tars(paths):
        s = split(split_of_shard(tar))
        s.shards += 1
        s.bytes += tar.stat().st_size

    status = shard_status(paths)
    if status:
        splits_of = key_splits(paths)
        by_split: dict[str, dict[str, list[str]]] = {}
        for row in status:
            name = row.get("split") or splits_of.get(row["key"]) or split_of_shard(Path(str(row["shard"])))
            kinds = by_split.setdefault(name, {"rejected": [], "failed": [], "clips_dropped": []})
            if str(row.get("status")) in OK_STATUSES:
                drops = json.loads(row["clip_rejects"]) if row.get("clip_rejects") else {}
                for reason, n in drops.items():
                    kinds["clips_dropped"] += [reason] * int(n)
                continue
            kind = "rejected" if row.get("status") == "rejected" else "failed"
            kinds[kind].append(str(row.get("reason") or row.get("status")))
        for name, kinds in by_split.items():
            for kind, reasons in kinds.items():
                setattr(split(name), kind, _count_by(reasons))

    rejects = read_table(paths.rejects, ["reason", "stage"])
    manifest_rejects, merge_rejects = {}, {}
    if rejects is not None:
        stages = rejects.column("stage").to_pylist() if "stage" in rejects.column_names else [None] * rejects.num_rows
        reasons = rejects.column("reason").to_pylist()
        manifest_rejects = _count_by(r for r, st in zip(reasons, stages) if st != "merge")
        merge_rejects = _count_by(r for r, st in zip(reasons, stages) if st == "merge")

    corpus = read_corpus_json(paths)
    counts = corpus.get("counts", {}) if isinstance(corpus.get("counts"), dict) else {}
    clips = read_table(paths.clips, ["clip_id"])
    video = corpus.get("video") if isinstance(corpus.get("video"), dict) else {}
    disagreements = []
    for name, recorded in (video.get("splits") or {}).items():
        mine = splits.get(name, SplitSummary(name))
        for field_name, theirs in (("samples", "samples_written"), ("frames", "frames"), ("shards", "shards"),
                                   ("bytes", "bytes")):
            if theirs in recorded and recorded[theirs] != getattr(mine, field_name):
                disagreements.append(f"{name}.{field_name}: corpus.json says {recorded[theirs]}, "
                                     f"the files say {getattr(mine, field_name)}")
    clips_check = None
    if video.get("clips_check"):
        clips_check = ("OK: " if video.get("clips_check_ok") else "MISMATCH: ") + str(video["clips_check"])
    return CorpusSummary(
        root=str(paths.root),
        splits=dict(sorted(splits.items(), key=lambda kv: (kv[0] != "train", kv[0]))),
        manifest_rejects=manifest_rejects,
        merge_rejects=merge_rejects,
        input_records=counts.get("input_records"),
        kept_clips=clips.num_rows if clips is not None else counts.get("kept_clips"),
        lfvila_version=corpus.get("lfvila_version"),
        has_manifest=longform is not None,
        has_index=index is not None,
        clips_check=clips_check,
        disagreements=disagreements,
    )


def loss_rows(summary: CorpusSummary) -> list[tuple[str, str, int]]:
    """(stage, reason, count) of everything left out of the corpus, in pipeline order: input records
    the manifest rejected, kept clips in no long-form video (merge), then per split the samples the
    video stage rejected or failed on and the clips dropped from written samples."""
    rows = [("manifest: records rejected", r, n) for r, n in summary.manifest_rejects.items()]
    rows += [("merge: clips rejected", r, n) for r, n in summary.merge_rejects.items()]
    for s in summary.splits.values():
        rows += [(f"video ({s.split}): samples rejected", r, n) for r, n in s.rejected.items()]
        rows += [(f"video ({s.split}): samples failed", r, n) for r, n in s.failed.items()]
        rows += [(f"video ({s.split}): clips dropped", r, n) for r, n in s.clips_dropped.items()]
    return rows


def _bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def format_corpus_summary(summary: CorpusSummary) -> str:
    """A plain-text report: one table of splits, then rejects by reason."""
    lines = [f"corpus {summary.root}" + (f" (lfvila {summary.lfvila_version})" if summary.lfvila_version else "")]
    if summary.input_records is not None or summary.kept_clips is not None:
        lines.append(f"input records: {summary.input_records if summary.input_records is not None else '?'}"
                     f"  kept clips: {summary.kept_clips if summary.kept_clips is not None else '?'}"
                     f"  rejected by the manifest: {sum(summary.manifest_rejects.values())}")
    if summary.kept_clips is not None and summary.has_manifest:
        in_longform = sum(s.longform_clips for s in summary.splits.values())
        lines.append(f"clips in long-form videos: {in_longform}  kept clips in no long-form video "
                     f"(runs shorter than the minimum): {summary.kept_clips - in_longform}")
    header = ("split", "planned", "planned_h", "samples", "hours", "frames", "sentences", "shards", "bytes",
              "rejected", "failed")
    rows = [header]
    totals = SplitSummary("total")
    for s in summary.splits.values():
        rows.append((s.split, str(s.longform_videos), f"{s.longform_hours:.2f}", str(s.samples), f"{s.hours:.2f}",
                     str(s.frames), str(s.sentences), str(s.shards), _bytes(s.bytes), str(sum(s.rejected.values())),
                     str(sum(s.failed.values()))))
        for name in ("longform_videos", "longform_hours", "samples", "hours", "frames", "sentences", "shards", "bytes"):
            setattr(totals, name, getattr(totals, name) + getattr(s, name))
        totals.rejected = dict(Counter(totals.rejected) + Counter(s.rejected))
        totals.failed = dict(Counter(totals.failed) + Counter(s.failed))
    if len(summary.splits) > 1:
        rows.append(("total", str(totals.longform_videos), f"{totals.longform_hours:.2f}", str(totals.samples),
                     f"{totals.hours:.2f}", str(totals.frames), str(totals.sentences), str(totals.shards),
                     _bytes(totals.bytes), str(sum(totals.rejected.values())), str(sum(totals.failed.values()))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines.append("")
    lines.append("planned: long-form videos in the manifest; samples: written to shards; rejected / failed: "
                 "samples the video stage did not write (see below)")
    for r in rows:
        lines.append("  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths))))
    if not summary.has_manifest:
        lines.append("(no longform.parquet: the manifest stage has not run)")
    if not summary.has_index:
        lines.append("(no shards/index.parquet: the shard stage has not finished)")
    if summary.clips_check:
        lines.append(f"video stage clip accounting: {summary.clips_check}")
    if summary.disagreements:
        lines.append("corpus.json disagrees with the files (a build still running, or files changed since):")
        lines += [f"  {d}" for d in summary.disagreements]
    rows = loss_rows(summary)
    if rows:
        lines.append("")
        lines.append("what was left out, by stage and reason:")
        width = max(len(r[0]) for r in rows)
        lines += [f"  {stage:<{width}}  {reason:<24} {n}" for stage, reason, n in rows]
        lines.append("")
        lines += [f"{word}: {meaning}" for word, meaning in VOCABULARY.items()]
    return "\n".join(lines)
