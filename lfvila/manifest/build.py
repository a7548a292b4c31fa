"""The manifest stage: ``FORMAT:PATH`` sources -> OUT/clips.parquet, rejects.parquet, longform.parquet, corpus.json.

Streaming, one video at a time: adapter -> validation -> (ASR: sentence building) -> merge into
long-form videos -> batched Parquet writers. Memory is bounded by one video plus one row group per
table, plus the set of video ids seen per format (used to reject a video that appears twice).
"""
from __future__ import annotations

import contextlib
import gc
import hashlib
import itertools
import json
import logging
import operator
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
from tqdm import tqdm

import lfvila
from lfvila.atomic import atomic_write_text, remove_temporaries
from lfvila.build_config import BuildConfig
from lfvila.config import to_dict
from lfvila.errors import ConfigError, InputError
from lfvila.manifest.asr import build_sentences
from lfvila.manifest.fastpath import check_batch
from lfvila.manifest.merge import longform_key, merge_video, pieces_of, run_too_short_detail, split_of
from lfvila.manifest.records import (
    MALFORMED_RECORD, MERGE_REJECT_REASONS, NOT_IN_RUNS, PIECE_TOO_SHORT, REJECT_REASONS, RUN_CLIP_REASONS, RUN_TOO_SHORT, Clip, RawVideo, Reject,
    has_invalid_utf8, shown_utf8,
)
from lfvila.manifest.runs_file import RunProblem, RunsIndex, place_runs
from lfvila.manifest.sources import SourceSpec, get_adapter, parse_source_spec
from lfvila.manifest.sources._io import require_regular_file
from lfvila.manifest.sources.hdvila import items_of_line
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
    runs_rejected: int = 0  # with manifest.runs_file: listed clip ids in no long-form video (stage "runs")
    runs_rejects_by_reason: Counter = field(default_factory=Counter)

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
        if self.runs_rejected:
            d.update(runs_rejected=self.runs_rejected,
                     runs_rejects_by_reason={r: self.runs_rejects_by_reason[r] for r in RUN_CLIP_REASONS
                                             if self.runs_rejects_by_reason[r]})
        if is_asr:
            d.update(asr_fragments_used=self.accepted_records, asr_sentences=self.kept_clips,
                     asr_raw_words=self.asr_raw_words, asr_kept_words=self.asr_kept_words,
                     asr_punctuated_videos=self.asr_punctuated_videos)
        d.update(adapter_stats)
        d["invariants"] = invariants(d)
        return d


INPUT_INVARIANT = "input_records == accepted_records + rejected"
MERGE_INVARIANT = "kept_clips == clips_in_longform + merge_rejected"


def invariants(counts: dict) -> dict:
    """The two accounting identities corpus.json states (the build raises before writing a false one)."""
    return {INPUT_INVARIANT: counts["input_records"] == counts["accepted_records"] + counts["rejected"],
            MERGE_INVARIANT: counts["kept_clips"] == counts["clips_in_longform"] + counts["merge_rejected"]}


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
        require_regular_file(f, f"source {spec.spec!r}")
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
        self.all: tuple = ()
        try:  # each sink opens its temporary: one opened before a failure (or Ctrl-C) is removed
            self.clips = TableSink(out / "clips.parquet", CLIPS_SCHEMA)
            self.all = (self.clips,)
            self.rejects = TableSink(out / "rejects.parquet", REJECTS_SCHEMA, batch_rows=1 << 14)
            self.all = (self.clips, self.rejects)
            self.longform = LongformSink(out / "longform.parquet")
            self.all = (self.clips, self.rejects, self.longform)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        for sink in self.all:
            sink.abort()

    def add_reject(self, r: Reject) -> None:
        cols = self.rejects.columns
        for name, value in zip(Reject._fields, r):
            if isinstance(value, str) and has_invalid_utf8(value):
                # Rejected bytes are shown, not re-raised: invalid UTF-8 becomes U+FFFD here.
                value = shown_utf8(value)
            cols[name].append(value)
        self.rejects.maybe_flush()

    def add_clip_columns(self, source: str, video_id: str, duration: float | None, clip_ids, clip_indices, starts,
                         ends, texts, clamped) -> None:
        """One video's clips as columns (sequences of equal length)."""
        cols = self.clips.columns
        n = len(clip_ids)
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

    def add_clip_slices(self, columns: dict[str, pa.Array], start: int, stop: int) -> None:
        """Rows ``start:stop`` of a batch of clips given as one Arrow array per clips column."""
        self.clips.columns.add_range(columns, start, stop)
        self.clips.maybe_flush()

    def add_clips(self, source: str, video_id: str, duration: float | None, clips: list[Clip]) -> None:
        clip_ids, clip_indices, starts, ends, texts, clamped, _ = zip(*clips)  # columns of the Clip tuples
        self.add_clip_columns(source, video_id, duration, clip_ids, clip_indices, starts, ends, texts, clamped)

    def add_longform_columns(self, key: str, split: str, source: str, video_id: str, duration: float | None,
                             sentences, *, start: float, end: float, n: int) -> None:
        """One long-form video of ``n`` sentences: ``sentences`` (clip_id, start, end, text) as Python
        sequences, or (arrays by name, first row, stop row) of a batch; ``start`` the first sentence's
        start, ``end`` the latest sentence end."""
        lf = self.longform
        cols = lf.columns  # per-row columns are only ever Python values
        cols["key"].values.append(key)
        cols["split"].values.append(split)
        cols["source"].values.append(source)
        cols["video_id"].values.append(video_id)
        cols["start"].values.append(start)
        cols["end"].values.append(end)
        cols["n_clips"].values.append(n)
        cols["video_duration"].values.append(duration)
        if isinstance(sentences[0], dict):
            lf.sentence_columns.add_range(*sentences)
        else:
            for name, values in zip(("clip_id", "start", "end", "text"), sentences):
                lf.sentence_columns[name].extend(values)
        lf.offsets.append(lf.offsets[-1] + n)
        lf.maybe_flush()

    def add_longform(self, key: str, split: str, source: str, video_id: str, duration: float | None,
                     clips: list[Clip]) -> None:
        clip_ids, _, starts, ends, texts, _, _ = zip(*clips)
        self.add_longform_columns(key, split, source, video_id, duration, (clip_ids, starts, ends, texts),
                                  start=starts[0], end=max(ends), n=len(clips))


def _time_order(clips: list[Clip]) -> list[Clip]:
    """Clips of a non-hdvila video in time order, clip_index renumbered 1.. in that order."""
    ordered = sorted(clips, key=lambda c: (c.start, c.end, c.clip_index))
    return [c._replace(clip_index=i) for i, c in enumerate(ordered, 1)]


class _SourceBuild:
    """Reads one source into the writers, counting everything (one instance per source)."""

    def __init__(self, spec: SourceSpec, cfg: BuildConfig, writers: _Writers, seen: set, longform_counts: dict,
                 runs: RunsIndex | None = None):
        self.adapter = get_adapter(spec.format)
        self.runs = runs if spec.format == "hdvila" else None  # the released runs replace derived ones
        self.spec, self.mcfg, self.writers, self.seen, self.longform_counts = spec, cfg.manifest, writers, seen, longform_counts
        self.source, self.is_asr, self.by_number = spec.format, self.adapter.IS_ASR, spec.format == "hdvila"
        self.counts = SourceCounts()
        self.adapter_stats: dict = {}

    def run(self, progress) -> dict:
        spec, counts = self.spec, self.counts
        read_batches = getattr(self.adapter, "read_batches", None)
        items = (read_batches or self.adapter.read)(spec.path, spec.options, progress, self.adapter_stats)
        for item in items:
            if isinstance(item, Reject):
                self.add_input_reject(item)
            elif isinstance(item, RawVideo):
                self.add_video(item)
            else:
                self.add_line_batch(item)
        if counts.input_records == 0:  # not an empty success: the wrong file, format or path
            raise InputError(f"source {spec.spec!r} yielded no records: is it the right file, in {spec.format} format?")
        if counts.input_records != counts.accepted_records + counts.rejected:
            raise RuntimeError(f"{spec.spec}: accounting broken: {counts.input_records} input records != "
                               f"{counts.accepted_records} accepted + {counts.rejected} rejected")
        if counts.kept_clips != counts.clips_in_longform + counts.merge_rejected:
            raise RuntimeError(f"{spec.spec}: accounting broken: {counts.kept_clips} kept clips != "
                               f"{counts.clips_in_longform} in long-form videos + {counts.merge_rejected} merge rejects")
        return counts.as_dict(self.is_asr, self.adapter_stats)

    def add_input_reject(self, item: Reject) -> None:
        counts = self.counts
        counts.input_records += 1
        counts.rejected += 1
        counts.rejects_by_reason[item.reason] += 1
        self.writers.add_reject(item)

    def add_video(self, item: RawVideo) -> None:
        """The per-record path: validate, (ASR) build sentences, order, write, merge."""
        counts, mcfg = self.counts, self.mcfg
        counts.input_records += len(item.clips)
        video = validate_video(item, self.source, mcfg, self.seen)
        for r in video.rejects:
            counts.rejects_by_reason[r.reason] += 1
            self.writers.add_reject(r)
        counts.rejected += len(video.rejects)
        counts.accepted_records += len(video.clips)
        counts.clamped += video.clamped
        counts.float_noise_snapped += video.snapped
        if not video.clips:
            if self.runs is not None:  # its listed runs: clips rejected (none for a repeated video)
                self.merge_released(item.video_id, None, [], {c.clip_id for c in item.clips}, item.file)
            return
        if self.is_asr:
            result = build_sentences(video, mcfg.asr)
            clips = result.sentences
            counts.asr_raw_words += result.raw_words
            counts.asr_kept_words += result.kept_words
            counts.asr_punctuated_videos += result.punctuated
        elif self.by_number:
            clips = sorted(video.clips, key=_CLIP_INDEX)  # release order is already this: linear
        else:
            clips = _time_order(video.clips)
        if not clips:
            return
        counts.kept_clips += len(clips)
        counts.videos_with_clips += 1
        self.writers.add_clips(self.source, video.video_id, video.duration, clips)
        if self.runs is not None:
            self.merge_released(video.video_id, video.duration, clips, {c.clip_id for c in item.clips}, item.file)
            return
        self.merge(video.video_id, video.duration, clips, item.file)

    def merge(self, video_id: str, duration: float | None, clips: list[Clip], file: str) -> None:
        """Write a video's long-form videos and its merge rejects."""
        split = self.mcfg.force_split or split_of(video_id, self.mcfg.val_fraction)
        pieces, left_out = merge_video(clips, self.by_number, self.mcfg)
        for piece in pieces:
            self.writers.add_longform(longform_key(self.source, video_id, piece[0].clip_index), split, self.source,
                                      video_id, duration, piece)
            self.count_longform(split, len(piece), max(c.end for c in piece) - piece[0].start)
        for group in left_out:
            self.merge_reject(video_id, [c.clip_id for c in group.clips], [c.line for c in group.clips], group.reason,
                              group.detail, file)

    def merge_released(self, video_id: str, duration: float | None, clips: list[Clip], raw_ids: set[str] | None,
                       file: str) -> None:
        """Write a video's long-form videos as the runs file lists them (manifest.runs_file).

        Each listed run keeps its kept clips in clip-number order (cut by max_clips / max_duration_s as
        derived runs are); one left with fewer than min_clips is a merge reject, and so is every kept
        clip that no run names (``not_in_runs``). Clip ids a run names but that are not kept are runs
        rejects (``run_clip_*``), and so are clips of other videos and repeats.
        """
        by_id = {c.clip_id: c for c in clips}
        placed, problems = place_runs(video_id, self.runs.take(video_id), {c.clip_id: c.clip_index for c in clips},
                                      raw_ids)
        for problem in problems:
            self.runs_reject(problem)
        split = self.mcfg.force_split or split_of(video_id, self.mcfg.val_fraction)
        min_clips, in_runs = self.mcfg.min_clips, set()
        for run in placed:
            members = [by_id[clip_id] for clip_id in run.clip_ids]
            in_runs.update(run.clip_ids)
            self.runs.placed += len(members)
            if len(members) < min_clips:
                self.merge_reject(video_id, run.clip_ids, [c.line for c in members], RUN_TOO_SHORT,
                                  f"released run on runs file line {run.line}: {len(members)} of its {run.listed} "
                                  f"clips kept, min_clips {min_clips}", file)
                continue
            for piece in pieces_of(members, self.mcfg):
                if len(piece) < min_clips:
                    self.merge_reject(video_id, [c.clip_id for c in piece], [c.line for c in piece], PIECE_TOO_SHORT,
                                      f"piece of {len(piece)} clips left by cutting the released run on runs file "
                                      f"line {run.line} (max_clips {self.mcfg.max_clips}, max_duration_s "
                                      f"{self.mcfg.max_duration_s}), min_clips {min_clips}", file)
                    continue
                self.writers.add_longform(longform_key(self.source, video_id, piece[0].clip_index), split,
                                          self.source, video_id, duration, piece)
                self.count_longform(split, len(piece), max(c.end for c in piece) - piece[0].start)
        left = [c for c in clips if c.clip_id not in in_runs]
        if left:
            self.merge_reject(video_id, [c.clip_id for c in left], [c.line for c in left], NOT_IN_RUNS,
                              f"{len(left)} kept clips of the video are in no run of the runs file", file)

    def runs_reject(self, problem: RunProblem) -> None:
        self.writers.add_reject(Reject(self.source, problem.video_id, problem.clip_id, "runs", problem.reason,
                                       problem.detail, problem.clip_id, str(self.runs.path), problem.line))
        self.counts.runs_rejected += 1
        self.counts.runs_rejects_by_reason[problem.reason] += 1

    def count_longform(self, split: str, n_clips: int, seconds: float) -> None:
        totals = self.longform_counts[split]
        totals["videos"] += 1
        totals["clips"] += n_clips
        totals["seconds"] += seconds
        self.counts.clips_in_longform += n_clips

    def merge_reject(self, video_id: str, clip_ids, lines, reason: str, detail: str, file: str) -> None:
        """One merge reject per clip of a group left out of every long-form video; ``lines``: each clip's line."""
        value = str(len(clip_ids))
        for clip_id, line in zip(clip_ids, lines):
            self.writers.add_reject(Reject(self.source, video_id, clip_id, "merge", reason, detail, value, file, line))
        self.counts.merge_rejected += len(clip_ids)
        self.counts.merge_rejects_by_reason[reason] += len(clip_ids)

    def add_line_batch(self, batch) -> None:
        """hdvila's columnar fast path: clean videos go straight from the batch's columns (see fastpath.py)."""
        c = check_batch(batch, self.mcfg.max_id_length, self.seen)
        counts, writers, mcfg, source, seen = self.counts, self.writers, self.mcfg, self.source, self.seen
        whole_runs = mcfg.max_clips is None and mcfg.max_duration_s is None
        min_clips, file, clip_ids = mcfg.min_clips, str(self.spec.path), batch.clip_ids
        n_clips = len(clip_ids)
        clip_columns = {"source": pa.repeat(source, n_clips), "video_id": c.video_ids, "clip_id": c.clip_ids,
                        "clip_index": c.numbers, "start": c.starts, "end": c.ends, "text": c.texts,
                        "video_duration": pa.nulls(n_clips, pa.float64()), "clamped": pa.repeat(False, n_clips)}
        sentence_columns = {"clip_id": c.clip_ids, "start": c.starts, "end": c.ends, "text": c.texts}
        for v, (clean, video_id, line_no) in enumerate(zip(c.clean, batch.video_ids, batch.line_nos)):
            if not clean:
                for item in items_of_line(line_no, "", file, obj=batch.objs[v]):
                    if isinstance(item, Reject):
                        self.add_input_reject(item)
                    else:
                        self.add_video(item)
                continue
            a, b = c.first_clip[v], c.first_clip[v + 1]
            seen.add(video_id)
            counts.input_records += b - a
            counts.accepted_records += b - a
            counts.kept_clips += b - a
            counts.videos_with_clips += 1
            writers.add_clip_slices(clip_columns, a, b)
            if self.runs is not None or not whole_runs:  # released runs, or runs cut into pieces: per record
                clips = [Clip(*values, False, line_no) for values in zip(
                    clip_ids[a:b], c.numbers[a:b].to_pylist(), c.starts[a:b].to_pylist(), c.ends[a:b].to_pylist(),
                    batch.texts[a:b])]
                if self.runs is not None:
                    self.merge_released(video_id, None, clips, None, file)
                else:
                    self.merge(video_id, None, clips, file)
                continue
            split = mcfg.force_split or split_of(video_id, mcfg.val_fraction)
            for r in range(c.first_run[v], c.first_run[v + 1]):
                s, e = c.run_starts[r], c.run_starts[r + 1]
                if e - s < min_clips:
                    self.merge_reject(video_id, clip_ids[s:e], [line_no] * (e - s), RUN_TOO_SHORT,
                                      run_too_short_detail(e - s, min_clips), file)
                    continue
                writers.add_longform_columns(longform_key(source, video_id, c.run_number[r]), split, source,
                                             video_id, None, (sentence_columns, s, e), start=c.run_start[r],
                                             end=c.run_end[r], n=e - s)
                self.count_longform(split, e - s, c.run_seconds[r])


def _process_source(spec: SourceSpec, cfg: BuildConfig, writers: _Writers, seen: set, progress,
                    longform_counts: dict, runs: RunsIndex | None) -> dict:
    return _SourceBuild(spec, cfg, writers, seen, longform_counts, runs).run(progress)


def _finish_runs(runs: RunsIndex, writers: _Writers, per_source: dict) -> dict:
    """Write the runs file's malformed lines and the runs of videos the metadata never had; its totals."""
    by_reason: Counter = Counter()
    # Chained, not listed: building from one metadata part leaves most of the release's ~100M ids unseen.
    for problem in itertools.chain(runs.problems, runs.never_seen()):
        writers.add_reject(Reject("hdvila", problem.video_id, problem.clip_id, "runs", problem.reason, problem.detail,
                                  problem.clip_id, str(runs.path), problem.line))
        by_reason[problem.reason] += 1
    for c in per_source.values():
        by_reason.update(c.get("runs_rejects_by_reason", {}))
    return {"path": str(runs.path), "size": runs.path.stat().st_size, "sha256": _sha256_file(runs.path),
            "runs_listed": runs.lines, "clip_ids_listed": runs.clip_ids, "clip_ids_placed": runs.placed,
            "rejected": sum(by_reason.values()),
            "rejects_by_reason": {r: by_reason[r] for r in RUN_CLIP_REASONS if by_reason[r]}}


RUNS_INVARIANT = "runs_file: clip_ids_listed == clip_ids_placed + rejected clip ids"


def runs_invariant(runs_counts: dict) -> bool:
    """Every clip id of a well-formed runs-file line is placed in its run or is one runs reject
    (malformed lines are one reject each and list no clip ids)."""
    clip_rejects = runs_counts["rejected"] - runs_counts["rejects_by_reason"].get(MALFORMED_RECORD, 0)
    return runs_counts["clip_ids_listed"] == runs_counts["clip_ids_placed"] + clip_rejects


@contextlib.contextmanager
def _rare_gc(first_generation_threshold: int = 200_000):
    """Run the cyclic garbage collector rarely while streaming.

    Decoding allocates ~100 containers per metadata line (dicts, lists); with the default threshold
    (700) the collector ran thousands of times per million clips and took about a third of the
    read time (measured). The stage's records are acyclic (freed by reference counting), so
    collecting every 200k allocations instead keeps memory as bounded as before.
    """
    previous = gc.get_threshold()
    gc.set_threshold(first_generation_threshold, *previous[1:])
    try:
        yield
    finally:
        gc.set_threshold(*previous)


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
    runs_file = cfg.manifest.runs_file
    if runs_file and not any(spec.format == "hdvila" for spec in specs):
        raise ConfigError("manifest.runs_file lists HD-VILA clip ids: it needs an hdvila: source")
    inputs = [describe_input(spec) for spec in specs]  # before OUT is made: an unusable input leaves nothing
    out.mkdir(parents=True, exist_ok=True)
    for name in ("clips.parquet", "rejects.parquet", "longform.parquet", "corpus.json"):
        remove_temporaries(out, name)  # left by a manifest build killed while writing
    total_bytes = sum(i["size"] for i in inputs)
    # Indexed before the table writers open their temporary files: a missing or unreadable runs
    # file leaves nothing behind in OUT.
    runs = RunsIndex(Path(runs_file)) if runs_file else None
    seen_by_format: dict[str, set] = {}
    longform_counts = {s: {"videos": 0, "clips": 0, "seconds": 0.0} for s in ("train", "val")}
    per_source: dict[str, dict] = {}
    runs_counts = None
    writers = None
    try:
        writers = _Writers(out)
        with _rare_gc(), tqdm(total=total_bytes, unit="B", unit_scale=True, desc="manifest", disable=None,
                              mininterval=1.0) as bar:
            for spec in specs:
                log.info("manifest: reading %s", spec.spec)
                name = spec.spec if spec.spec not in per_source else f"{spec.spec} #{len(per_source) + 1}"
                per_source[name] = _process_source(spec, cfg, writers, seen_by_format.setdefault(spec.format, set()),
                                                        bar.update, longform_counts, runs)
        if runs is not None:
            runs_counts = _finish_runs(runs, writers, per_source)
        for sink in writers.all:
            sink.commit()
    except BaseException:
        if writers is not None:
            writers.abort()
        raise
    finally:
        if runs is not None:
            runs.close()
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
    if runs_counts is not None:
        counts["runs_file"] = runs_counts
    counts["invariants"] = invariants(counts)
    if runs_counts is not None:
        counts["invariants"][RUNS_INVARIANT] = runs_invariant(runs_counts)
    runs_rejected = runs_counts["rejected"] if runs_counts else 0
    if (counts["kept_clips"] != total("kept_clips") or not all(counts["invariants"].values())
            or writers.rejects.rows != counts["rejected"] + counts["merge_rejected"] + runs_rejected):
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
    atomic_write_text(corpus_path, json.dumps(corpus, indent=2) + "\n")
    lf = counts["longform"]
    log.info("manifest: %d input records -> %d clips kept, %d rejected; %d clips in long-form videos, %d left out "
             "(merge rejects); long-form videos train %d (%.1f h), val %d (%.1f h)",
             counts["input_records"], counts["kept_clips"], counts["rejected"], counts["clips_in_longform"],
             counts["merge_rejected"], lf["train"]["videos"],
             lf["train"]["hours"], lf["val"]["videos"], lf["val"]["hours"])
    return counts
