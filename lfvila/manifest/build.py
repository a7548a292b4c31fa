"""The manifest stage: ``FORMAT:PATH`` sources -> OUT/clips.parquet, rejects.parquet, longform.parquet, corpus.json.

Streaming, one video at a time: adapter -> validation -> (ASR: sentence building) -> merge into
long-form videos -> batched Parquet writers. Memory is bounded by one video plus one row group per
table, plus the set of video ids seen per format (used to reject a video that appears twice).
"""
from __future__ import annotations

import hashlib
import json
import logging
import operator
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

import lfvila
from lfvila.build_config import BuildConfig
from lfvila.config import to_dict
from lfvila.manifest.asr import build_sentences
from lfvila.manifest.merge import longform_key, merge_video, split_of
from lfvila.manifest.records import MERGE_REJECT_REASONS, REJECT_REASONS, Clip, RawVideo, Reject, has_invalid_utf8
from lfvila.manifest.sources import SourceSpec, get_adapter, parse_source_spec
from lfvila.manifest.tables import CLIPS_SCHEMA, REJECTS_SCHEMA, LongformSink, TableSink
from lfvila.manifest.validate import validate_video

log = logging.getLogger(__name__)

CORPUS_KEYS = ("config", "lfvila_version", "inputs", "counts")
_CLIP_INDEX = operator.attrgetter("clip_index")


@dataclass
class SourceCounts:
    """Per-source accounting; always ``input_records == accepted_records + rejected`` (validation) and
    ``kept_clips == clips_in_longform + merge_rejected`` (merge). For non-ASR sources accepted_records
    == kept_clips; for ASR sources the accepted records are fragments and the kept clips sentences."""

    input_records: int = 0
    accepted_records: int = 0  # kept clips, or for ASR sources the fragments turned into sentences
    kept_clips: int = 0
    rejected: int = 0
    rejects_by_reason: Counter = field(default_factory=Counter)
    videos_with_clips: int = 0
    clamped: int = 0
    float_noise_snapped: int = 0
    asr_raw_words: int = 0
    asr_kept_words: int = 0
    asr_punctuated_videos: int = 0
    clips_in_longform: int = 0
    merge_rejected: int = 0  # kept clips in no long-form video, one merge reject each
    merge_rejects_by_reason: Counter = field(default_factory=Counter)

    def as_dict(self, is_asr: bool, adapter_stats: dict) -> dict:
        d = {
            "input_records": self.input_records, "accepted_records": self.accepted_records,
            "kept_clips": self.kept_clips, "rejected": self.rejected,
            "rejects_by_reason": {r: self.rejects_by_reason[r] for r in REJECT_REASONS if self.rejects_by_reason[r]},
            "videos_with_clips": self.videos_with_clips, "clamped": self.clamped,
            "float_noise_snapped": self.float_noise_snapped,
            "clips_in_longform": self.clips_in_longform, "merge_rejected": self.merge_rejected,
            "merge_rejects_by_reason": {r: self.merge_rejects_by_reason[r] for r in MERGE_REJECT_REASONS
                                        if self.merge_rejects_by_reason[r]},
        }
        if is_asr:
            d.update(asr_fragments_used=self.accepted_records, asr_sentences=self.kept_clips,
                     asr_raw_words=self.asr_raw_words, asr_kept_words=self.asr_kept_words,
                     asr_punctuated_videos=self.asr_punctuated_videos)
        d.update(adapter_stats)
        return d


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


MAX_LISTED_FILES = 10_000  # inputs with more files (a 1.2M-file HowTo100M directory) list only the aggregate


def describe_input(spec: SourceSpec) -> dict:
    """Each input file's size and sha256, plus one digest for the whole source.

    The source digest is the file's own sha256 for a single file, else the sha256 of the files'
    names (relative to a directory source) and digests, so it does not depend on where the data sits.
    """
    adapter = get_adapter(spec.format)
    paths = adapter.input_files(spec.path, spec.options)
    files = []
    for f in paths:
        name = str(f.relative_to(spec.path)) if spec.path.is_dir() else f.name
        files.append({"path": name, "size": f.stat().st_size, "sha256": _sha256_file(f)})
    if len(files) == 1 and paths[0] == spec.path:
        sha = files[0]["sha256"]
    else:
        h = hashlib.sha256()
        for f in files:
            h.update(f"{f['path']}\0{f['sha256']}\n".encode("utf-8", "surrogateescape"))
        sha = h.hexdigest()
    described = {"source": spec.spec, "format": spec.format, "path": str(spec.path), "options": spec.options,
                 "n_files": len(files), "size": sum(f["size"] for f in files), "sha256": sha}
    if len(files) <= MAX_LISTED_FILES:
        described["files"] = files
    return described


class _Writers:
    """The three table sinks of one build."""

    def __init__(self, out: Path):
        self.clips = TableSink(out / "clips.parquet", CLIPS_SCHEMA)
        self.rejects = TableSink(out / "rejects.parquet", REJECTS_SCHEMA, batch_rows=1 << 14)
        self.longform = LongformSink(out / "longform.parquet")
        self.all = (self.clips, self.rejects, self.longform)

    def add_reject(self, r: Reject) -> None:
        cols = self.rejects.columns
        for name, value in zip(Reject._fields, r):
            if isinstance(value, str) and has_invalid_utf8(value):
                # Rejected bytes are shown, not re-raised: invalid UTF-8 becomes U+FFFD here.
                value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            cols[name].append(value)
        self.rejects.maybe_flush()

    def add_clips(self, source: str, video_id: str, duration: float | None, clips: list[Clip]) -> None:
        cols = self.clips.columns
        n = len(clips)
        clip_ids, clip_indices, starts, ends, texts, clamped, _ = zip(*clips)  # columns of the Clip tuples
        cols["source"].extend([source] * n)
        cols["video_id"].extend([video_id] * n)
        cols["video_duration"].extend([duration] * n)
        cols["clip_id"].extend(clip_ids)
        cols["clip_index"].extend(clip_indices)
        cols["start"].extend(starts)
        cols["end"].extend(ends)
        cols["text"].extend(texts)
        cols["clamped"].extend(clamped)
        self.clips.maybe_flush()

    def add_longform(self, key: str, split: str, source: str, video_id: str, duration: float | None,
                     clips: list[Clip]) -> None:
        lf = self.longform
        cols, sent = lf.columns, lf.sentence_columns
        cols["key"].append(key)
        cols["split"].append(split)
        cols["source"].append(source)
        cols["video_id"].append(video_id)
        clip_ids, _, starts, ends, texts, _, _ = zip(*clips)
        cols["start"].append(starts[0])
        cols["end"].append(max(ends))
        cols["n_clips"].append(len(clips))
        cols["video_duration"].append(duration)
        sent["clip_id"].extend(clip_ids)
        sent["start"].extend(starts)
        sent["end"].extend(ends)
        sent["text"].extend(texts)
        lf.offsets.append(lf.offsets[-1] + len(clips))
        lf.maybe_flush()


def _time_order(clips: list[Clip]) -> list[Clip]:
    """Clips of a non-hdvila video in time order, clip_index renumbered 1.. in that order."""
    ordered = sorted(clips, key=lambda c: (c.start, c.end, c.clip_index))
    return [c._replace(clip_index=i) for i, c in enumerate(ordered, 1)]


def _process_source(spec: SourceSpec, cfg: BuildConfig, writers: _Writers, seen: set, progress,
                    longform_counts: dict) -> dict:
    adapter = get_adapter(spec.format)
    mcfg = cfg.manifest
    source, is_asr, by_number = spec.format, adapter.IS_ASR, spec.format == "hdvila"
    counts = SourceCounts()
    adapter_stats: dict = {}
    for item in adapter.read(spec.path, spec.options, progress, adapter_stats):
        if isinstance(item, Reject):
            counts.input_records += 1
            counts.rejected += 1
            counts.rejects_by_reason[item.reason] += 1
            writers.add_reject(item)
            continue
        assert isinstance(item, RawVideo)
        counts.input_records += len(item.clips)
        video = validate_video(item, source, mcfg, seen)
        for r in video.rejects:
            counts.rejects_by_reason[r.reason] += 1
            writers.add_reject(r)
        counts.rejected += len(video.rejects)
        counts.accepted_records += len(video.clips)
        counts.clamped += video.clamped
        counts.float_noise_snapped += video.snapped
        if not video.clips:
            continue
        if is_asr:
            result = build_sentences(video, mcfg.asr)
            clips = result.sentences
            counts.asr_raw_words += result.raw_words
            counts.asr_kept_words += result.kept_words
            counts.asr_punctuated_videos += result.punctuated
        elif by_number:
            clips = sorted(video.clips, key=_CLIP_INDEX)  # release order is already this: linear
        else:
            clips = _time_order(video.clips)
        if not clips:
            continue
        counts.kept_clips += len(clips)
        counts.videos_with_clips += 1
        writers.add_clips(source, video.video_id, video.duration, clips)
        split = mcfg.force_split or split_of(video.video_id, mcfg.val_fraction)
        pieces, left_out = merge_video(clips, by_number, mcfg)
        for piece in pieces:
            key = longform_key(source, video.video_id, piece[0].clip_index)
            writers.add_longform(key, split, source, video.video_id, video.duration, piece)
            totals = longform_counts[split]
            totals["videos"] += 1
            totals["clips"] += len(piece)
            counts.clips_in_longform += len(piece)
            totals["seconds"] += max(c.end for c in piece) - piece[0].start
        for group in left_out:
            value = str(len(group.clips))
            for c in group.clips:
                writers.add_reject(Reject(source, video.video_id, c.clip_id, "merge", group.reason, group.detail,
                                          value, item.file, c.line))
            counts.merge_rejected += len(group.clips)
            counts.merge_rejects_by_reason[group.reason] += len(group.clips)
    if counts.input_records != counts.accepted_records + counts.rejected:
        raise RuntimeError(f"{spec.spec}: accounting broken: {counts.input_records} input records != "
                           f"{counts.accepted_records} accepted + {counts.rejected} rejected")
    if counts.kept_clips != counts.clips_in_longform + counts.merge_rejected:
        raise RuntimeError(f"{spec.spec}: accounting broken: {counts.kept_clips} kept clips != "
                           f"{counts.clips_in_longform} in long-form videos + {counts.merge_rejected} merge rejects")
    return counts.as_dict(is_asr, adapter_stats)


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def build_manifest(cfg: BuildConfig, out: Path, sources: list[str]) -> dict:
    """Build the manifest tables of a corpus from ``FORMAT:PATH`` sources; returns corpus.json's counts.

    Writes ``OUT/clips.parquet``, ``rejects.parquet``, ``longform.parquet`` and ``corpus.json``
    (keys other than config/lfvila_version/inputs/counts, added by later stages, are kept).
    A rerun with the same inputs and config writes identical tables.
    """
    out = Path(out)
    specs = [parse_source_spec(s) for s in sources]
    if not specs:
        raise ValueError("build_manifest: no sources given")
    out.mkdir(parents=True, exist_ok=True)
    inputs = [describe_input(spec) for spec in specs]
    total_bytes = sum(i["size"] for i in inputs)
    writers = _Writers(out)
    seen_by_format: dict[str, set] = {}
    longform_counts = {s: {"videos": 0, "clips": 0, "seconds": 0.0} for s in ("train", "val")}
    per_source: dict[str, dict] = {}
    try:
        with tqdm(total=total_bytes, unit="B", unit_scale=True, desc="manifest", disable=None, mininterval=1.0) as bar:
            for spec in specs:
                log.info("manifest: reading %s", spec.spec)
                name = spec.spec if spec.spec not in per_source else f"{spec.spec} #{len(per_source) + 1}"
                per_source[name] = _process_source(spec, cfg, writers, seen_by_format.setdefault(spec.format, set()),
                                                        bar.update, longform_counts)
        for sink in writers.all:
            sink.commit()
    except BaseException:
        for sink in writers.all:
            sink.abort()
        raise
    def total(name: str) -> int:
        return sum(c[name] for c in per_source.values())

    def total_by_reason(name: str) -> dict:
        return dict(sum((Counter(c[name]) for c in per_source.values()), Counter()))

    counts = {
        "sources": per_source,
        "input_records": total("input_records"),
        "accepted_records": total("accepted_records"),
        "kept_clips": writers.clips.rows,
        "rejected": total("rejected"),
        "rejects_by_reason": total_by_reason("rejects_by_reason"),
        "clips_in_longform": total("clips_in_longform"),
        "merge_rejected": total("merge_rejected"),
        "merge_rejects_by_reason": total_by_reason("merge_rejects_by_reason"),
        "longform": {split: {"videos": c["videos"], "clips": c["clips"], "hours": round(c["seconds"] / 3600.0, 6)}
                     for split, c in longform_counts.items()},
    }
    if (counts["kept_clips"] != total("kept_clips")
            or writers.rejects.rows != counts["rejected"] + counts["merge_rejected"]):
        raise RuntimeError(f"accounting broken: {writers.clips.rows} clip rows, {writers.rejects.rows} reject rows "
                           f"for {total('kept_clips')} kept clips, {counts['rejected']} rejected, "
                           f"{counts['merge_rejected']} merge rejects")
    corpus_path = out / "corpus.json"
    corpus: dict = {}
    if corpus_path.exists():
        try:
            corpus = {k: v for k, v in json.loads(corpus_path.read_text()).items() if k not in CORPUS_KEYS}
        except (ValueError, AttributeError):
            corpus = {}
    corpus = {"config": to_dict(cfg), "lfvila_version": lfvila.__version__, "inputs": inputs, "counts": counts, **corpus}
    _write_json_atomic(corpus_path, corpus)
    lf = counts["longform"]
    log.info("manifest: %d input records -> %d clips kept, %d rejected; %d clips in long-form videos, %d left out "
             "(merge rejects); long-form videos train %d (%.1f h), val %d (%.1f h)",
             counts["input_records"], counts["kept_clips"], counts["rejected"], counts["clips_in_longform"],
             counts["merge_rejected"], lf["train"]["videos"],
             lf["train"]["hours"], lf["val"]["videos"], lf["val"]["hours"])
    return counts
