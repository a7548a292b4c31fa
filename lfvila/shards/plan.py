"""Shard planning in bounded memory: ``OUT/longform.parquet`` -> per-split plan files -> shard tasks.

The plan is deterministic: per split, the long-form videos in key order are cut into consecutive
groups of ``shards.samples_per_shard``; group ``i`` of split ``s`` is shard ``{s}-{i:06d}``. With
``shards.target_bytes``, a group also ends before a video that would take its estimated bytes past
the target (whichever comes first). A sample's size is only known once it is encoded, and shard
tasks run in parallel, so the plan estimates it from what it knows before decoding: the number of
frames the shard stage will store for the row (grid slots inside its sentence spans) times a bytes-
per-frame figure (``frame_bytes_estimate``: measured, or ``shards.estimated_frame_bytes``). Shards
are then about ``target_bytes`` on average; content moves each one (JPEG bytes per frame vary about
2x between footage kinds), and a rejected sample writes nothing.

The manifest writes ``longform.parquet`` in source order, so key order takes a sort, done as an
external merge sort so that memory does not grow with the corpus (LF-VILA-8M has 8.5M long-form
videos of 4-12 sentences each; as Python dicts they would not fit): the table is read in batches of
``SORT_BATCH_ROWS`` rows, each row encoded once as the JSON its shard's fingerprint hashes, each
batch sorted by key and written as a run of (key, JSON) pairs; the runs are merged (at most
``MAX_FAN_IN`` at once, in more passes when there are more) into ``OUT/.plan/<digest>/<split>.plan``,
one compressed JSON record per shard, and the shard's fingerprint is the hash of that same JSON. A
task carries only its name, fingerprint and where its record is, and reads it when it runs. Peak
memory: one batch while sorting, one small row group per merged run, one shard's rows, whatever the
corpus size (``bench/shard_planning.py`` measures it).

``<digest>`` covers ``longform.parquet``'s size and modification time and every setting the
task fingerprints cover, so reruns and the parts of an array job reuse one plan; a plan directory
is written under a temporary name and renamed into place, and plans of older manifests are removed.
"""
from __future__ import annotations

import hashlib
import heapq
import json
import os
import shutil
import time
import zlib
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

from lfvila.atomic import TMP_SUFFIX, AtomicPath

PLAN_DIR = ".plan"
PLAN_FILE = "plan.json"
SORT_BATCH_ROWS = 1 << 14  # rows sorted at a time into a run (~16k long-form videos, ~20 MB of JSON)
ENCODE_BATCH_ROWS = 2048  # rows turned into Python dicts at a time, to be encoded as JSON
RUN_ROW_GROUP_ROWS = 1024  # a run is read back one row group at a time: keep them small
MERGE_BATCH_ROWS = 256  # rows taken at a time from a run's row group while merging
MAX_FAN_IN = 32  # runs merged at once; more runs are first merged into longer ones (more passes)
STALE_TMP_S = 6 * 3600  # a plan temporary this old is left by a killed run (planning takes minutes)
_PLAN_VERSION = 2
# Mean bytes per stored frame in a shard at 3 fps and 240 px, per shards.frames (whole tars: the
# frames, their tar headers and the JSON), from bench/loader_throughput.py's corpora of real videos
# (2026-12-03: 47,054 and 16,077 bytes per video-second).
MEASURED_FRAME_BYTES_240P = {"jpeg": 15_700, "h264": 5_400}


@dataclass
class ShardTask:
    """A shard to build: its name, the fingerprint of what it writes, and where its rows are.

    ``plan_file`` holds at ``offset`` (``size`` bytes) the zlib-compressed JSON list of the shard's
    manifest rows in key order; ``fields`` restores the table's column order (``load_rows``)."""

    split: str
    index: int
    fingerprint: str
    plan_file: str
    n_rows: int
    offset: int = 0
    size: int = 0
    fields: tuple = ()

    @property
    def name(self) -> str:
        return f"{self.split}-{self.index:06d}"

    def load_rows(self) -> list[dict]:
        """The shard's rows, equal to (and in the key order of) ``longform.parquet``'s ``to_pylist``."""
        with open(self.plan_file, "rb") as f:
            data = os.pread(f.fileno(), self.size, self.offset)
        rows = json.loads(zlib.decompress(data))
        if len(rows) != self.n_rows:
            raise RuntimeError(f"{self.plan_file}: shard {self.name} has {len(rows)} rows, planned {self.n_rows}")
        return [_in_order(row, self.fields) for row in rows]


def _in_order(row: dict, fields) -> dict:
    """``row`` with its keys in the table's order (JSON sorted them); nested struct lists too."""
    out = {}
    for name, nested in fields:
        value = row[name]
        if nested and isinstance(value, list):
            value = [{k: item[k] for k in nested} if isinstance(item, dict) else item for item in value]
        out[name] = value
    return out


def _field_order(schema) -> tuple:
    """(column, struct field names or ()) per column: the key order of ``to_pylist`` rows."""
    import pyarrow as pa

    order = []
    for field in schema:
        kind = field.type
        nested = ()
        if pa.types.is_list(kind) and pa.types.is_struct(kind.value_type):
            nested = tuple(kind.value_type.field(i).name for i in range(kind.value_type.num_fields))
        order.append((field.name, nested))
    return tuple(order)


def plan_shard_tasks(cfg, out: Path, limit: int | None = None) -> list[ShardTask]:
    """All shard tasks of the corpus, splits in name order, each split's rows in key order; with
    ``limit``, only the first ``limit`` long-form videos (in key order) of each split."""
    from lfvila.shards.task import fingerprint_settings

    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    out = Path(out)
    longform = out / "longform.parquet"
    stat = longform.stat()
    settings = fingerprint_settings(cfg)
    digest = hashlib.sha256(json.dumps({"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "settings": settings,
                                        "limit": limit, "plan_version": _PLAN_VERSION},
                                       sort_keys=True, default=str).encode()).hexdigest()[:20]
    root = out.resolve() / PLAN_DIR  # absolute: Ray workers read the plan from their own working directory
    plan_dir = root / digest
    tasks = _read_plan(plan_dir)
    if tasks is None:
        plan_out = AtomicPath(plan_dir)  # built in .DIGEST.<hex>.tmp, renamed whole
        try:
            _write_plan(longform, plan_out.tmp, cfg, limit)
            try:
                plan_out.commit()
            except OSError:  # another part of an array job renamed its identical plan first
                if _read_plan(plan_dir) is None:
                    raise
        finally:
            plan_out.discard()
        tasks = _read_plan(plan_dir)
        for old in root.iterdir():  # plans of earlier manifests of this folder, and of killed runs
            if old.name == digest:
                continue
            # another array-job part may be writing its plan right now: temporaries go once stale
            if not old.name.endswith(TMP_SUFFIX) or time.time() - old.stat().st_mtime > STALE_TMP_S:
                shutil.rmtree(old, ignore_errors=True)
    return tasks


def _read_plan(plan_dir: Path) -> list[ShardTask] | None:
    try:
        doc = json.loads((plan_dir / PLAN_FILE).read_text())
    except (OSError, ValueError):
        return None
    fields = tuple((name, tuple(nested)) for name, nested in doc["fields"])
    return [ShardTask(t["split"], t["index"], t["fingerprint"], str(plan_dir / t["file"]), t["rows"], t["offset"],
                      t["size"], fields) for t in doc["tasks"]]


def _check_key(key: str) -> None:
    if "." in key or "/" in key:
        raise ValueError(f"longform.parquet: key {key!r} contains '.' or '/', not a WebDataset key")


def frame_bytes_estimate(cfg) -> int:
    """Bytes one stored frame is taken to add to a shard when sizing shards by ``shards.target_bytes``:
    ``shards.estimated_frame_bytes``, else the mean measured at 3 fps and 240 px (bench/loader_throughput.py,
    BENCHMARKS.md: whole tars, JSON and tar headers included), scaled by the frame area."""
    if cfg.shards.estimated_frame_bytes is not None:
        return cfg.shards.estimated_frame_bytes
    at_240p = MEASURED_FRAME_BYTES_240P[cfg.shards.frames]
    return max(1, round(at_240p * (cfg.video.frame_height / 240) ** 2))


def estimated_bytes(row: dict, fps: float, frame_bytes: int) -> int:
    """A manifest row's estimated bytes in a shard: the frames the shard stage stores for it (grid
    slots inside a sentence span, lfvila/shards/sample.py) times ``frame_bytes``. Known before
    decoding, so shards can be planned by size; a rejected sample writes nothing."""
    from lfvila.video.decode import slot_at_or_after

    grid = row["start"]
    spans = sorted((slot_at_or_after(s["start"], grid, fps), slot_at_or_after(s["end"], grid, fps))
                   for s in row["sentences"])
    frames, covered = 0, 0  # slots counted, and the first slot not yet counted
    for lo, hi in spans:
        lo = max(lo, covered)
        if hi > lo:
            frames += hi - lo
            covered = hi
    return frames * frame_bytes


def _sorted_runs(longform: Path, work: Path, cfg=None) -> tuple[list[Path], object]:
    """Run files of ``longform``: at most SORT_BATCH_ROWS (key, row JSON, estimated bytes) each, sorted
    by key; the estimate (``estimated_bytes``) only with ``shards.target_bytes`` set (else 0)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from lfvila.shards.task import row_json

    by_size = cfg is not None and cfg.shards.target_bytes is not None
    frame_bytes = frame_bytes_estimate(cfg) if by_size else 0

    # pre_buffer=False: with it (pyarrow 26's default), iter_batches keeps what it pre-buffered until
    # the file is closed: Arrow's allocated bytes grew by ~120 MB per million long-form rows (planning
    # 8.5M rows peaked at 1.5 GB); without, they stay at ~40 MB. No read-ahead threads either.
    source = pq.ParquetFile(longform, pre_buffer=False)
    runs = []
    for n, batch in enumerate(source.iter_batches(batch_size=SORT_BATCH_ROWS, use_threads=False)):
        encoded, sizes = [], []
        for lo in range(0, batch.num_rows, ENCODE_BATCH_ROWS):  # few Python rows alive at a time
            for row in batch.slice(lo, ENCODE_BATCH_ROWS).to_pylist():
                _check_key(row["key"])
                encoded.append(row_json(row))
                if by_size:
                    sizes.append(estimated_bytes(row, cfg.video.fps, frame_bytes))
        columns = {"key": batch.column("key"), "split": batch.column("split"), "row": pa.array(encoded, pa.large_string())}
        if by_size:  # only then: the column cost count-only planning ~10 % more CPU (measured at 200k rows)
            columns["bytes"] = pa.array(sizes, pa.int64())
        table = pa.table(columns)
        del encoded, sizes
        path = work / f"run-{n:06d}.parquet"
        pq.write_table(table.take(pc.sort_indices(table, sort_keys=[("key", "ascending")])), path,
                       row_group_size=RUN_ROW_GROUP_ROWS)
        runs.append(path)
    return runs, source.schema_arrow


def _run_rows(path: Path):
    """(key, split, row JSON) of one sorted run, streamed."""
    import pyarrow.parquet as pq

    source = pq.ParquetFile(path, pre_buffer=False)
    sized = "bytes" in source.schema_arrow.names
    for batch in source.iter_batches(batch_size=MERGE_BATCH_ROWS, use_threads=False):
        columns = [batch.column(name).to_pylist() for name in ("key", "split", "row")]
        yield from zip(*columns, batch.column("bytes").to_pylist() if sized else repeat(0, batch.num_rows))


def _merged(runs: list[Path], work: Path, sized: bool = False):
    """All (key, split, row JSON, bytes) of the sorted ``runs`` in key order; at most MAX_FAN_IN runs open at once."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("key", pa.string()), ("split", pa.string()), ("row", pa.large_string()), ("bytes", pa.int64())])
    if not sized:
        schema = schema.remove(3)
    generation = 0
    while len(runs) > MAX_FAN_IN:  # merge groups of runs into longer runs until few enough are left
        generation += 1
        longer = []
        for n in range(0, len(runs), MAX_FAN_IN):
            group, path = runs[n:n + MAX_FAN_IN], work / f"run-g{generation}-{n:06d}.parquet"
            with pq.ParquetWriter(path, schema) as writer:
                items = []
                for item in heapq.merge(*(_run_rows(p) for p in group)):
                    items.append(item)
                    if len(items) == RUN_ROW_GROUP_ROWS:
                        writer.write_table(pa.table(list(zip(*items))[:len(schema)], schema=schema))
                        items = []
                if items:
                    writer.write_table(pa.table(list(zip(*items))[:len(schema)], schema=schema))
            for p in group:
                p.unlink()
            longer.append(path)
        runs = longer
    return heapq.merge(*(_run_rows(p) for p in runs))


class _SplitPlan:
    """One split's plan file, written one shard (one compressed JSON record) at a time."""

    def __init__(self, plan_dir: Path, split: str, settings_json: tuple[str, str]):
        if "/" in split or split.startswith(".") or not split:
            raise ValueError(f"longform.parquet: split {split!r} cannot name a shard")
        self.split, self.settings_json, self.file = split, settings_json, f"{split}.plan"
        self.out = open(plan_dir / self.file, "wb")
        self.chunk: list[str] = []
        self.chunk_bytes = 0  # estimated bytes of the rows in ``chunk``
        self.tasks: list[dict] = []
        self.rows = 0

    def add(self, row: str, size: int, limit: int | None, row_bytes: int = 0, target_bytes: int | None = None) -> None:
        """Add a row; a shard closes at ``size`` rows, or before a row that would take its estimated
        bytes past ``target_bytes`` (a row over it alone makes a shard of one)."""
        if limit is not None and self.rows >= limit:
            return
        if target_bytes is not None and self.chunk and self.chunk_bytes + row_bytes > target_bytes:
            self.flush()
        self.rows += 1
        self.chunk.append(row)
        self.chunk_bytes += row_bytes
        if len(self.chunk) == size:
            self.flush()

    def flush(self) -> None:
        from lfvila.shards.task import fingerprint_of_rows_json

        if self.chunk:
            rows = "[" + ", ".join(self.chunk) + "]"  # what json.dumps of the list of rows writes
            data = zlib.compress(rows.encode(), 1)
            self.tasks.append({"split": self.split, "index": len(self.tasks), "file": self.file,
                               "rows": len(self.chunk), "offset": self.out.tell(), "size": len(data),
                               "fingerprint": fingerprint_of_rows_json(rows, self.settings_json)})
            self.out.write(data)
            self.chunk, self.chunk_bytes = [], 0


def _write_plan(longform: Path, plan_dir: Path, cfg, limit: int | None = None) -> None:
    """Sort ``longform`` into ``plan_dir/<split>.plan`` (one record per shard) and plan.json.

    The runs are merged by key over all splits at once, so a key repeated anywhere is caught where
    its copies meet; each row goes to its split's plan, which stays in key order."""
    from lfvila.shards.task import fingerprint_settings_json

    plan_dir.mkdir(parents=True)
    work = plan_dir / "runs"
    work.mkdir()
    runs, schema = _sorted_runs(longform, work, cfg)
    target_bytes = cfg.shards.target_bytes
    size, settings_json = cfg.shards.samples_per_shard, fingerprint_settings_json(cfg)
    splits: dict[str, _SplitPlan] = {}
    previous = None
    try:
        for key, split, row, row_bytes in _merged(runs, work, target_bytes is not None):
            if key == previous:
                raise ValueError(f"longform.parquet: key {key!r} occurs twice; keys must be unique")
            previous = key
            if split not in splits:
                splits[split] = _SplitPlan(plan_dir, split, settings_json)
            splits[split].add(row, size, limit, row_bytes, target_bytes)
        for plan in splits.values():
            plan.flush()
            plan.out.flush()
            os.fsync(plan.out.fileno())
    finally:
        for plan in splits.values():
            plan.out.close()
    shutil.rmtree(work)
    tasks = [t for split in sorted(splits) for t in splits[split].tasks]
    (plan_dir / PLAN_FILE).write_text(json.dumps({"longform": str(longform), "fields": _field_order(schema),
                                                  "tasks": tasks}) + "\n")
