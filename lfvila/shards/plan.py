"""Shard planning in bounded memory: ``OUT/longform.parquet`` -> per-split plan files -> shard tasks.

The plan is deterministic: per split, the long-form videos in key order are cut into consecutive
groups of ``shards.samples_per_shard``; group ``i`` of split ``s`` is shard ``{s}-{i:06d}``.

The manifest writes ``longform.parquet`` in source order, so key order takes a sort, done as an
external merge sort so that memory does not grow with the corpus (LF-VILA-8M has 8.5M long-form
videos of 4-12 sentences each; as Python dicts they would not fit): the table is read in batches of
``SORT_BATCH_ROWS`` rows, each batch sorted by (split, key) and written as a run file; the runs are
merged row by row (at most ``MAX_FAN_IN`` at once, in more passes when there are more) into
``OUT/.plan/<digest>/<split>.parquet``, one row group per shard. A task carries only its name,
fingerprint and plan file, and reads its row group when it runs. Peak memory: one batch while
sorting, one small row group per merged run, one shard's rows while fingerprinting, whatever the
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
import uuid
from dataclasses import dataclass
from pathlib import Path

PLAN_DIR = ".plan"
PLAN_FILE = "plan.json"
SORT_BATCH_ROWS = 1 << 16  # rows sorted at a time into a run (~65k long-form videos, ~80 MB in Arrow)
RUN_ROW_GROUP_ROWS = 1024  # a run is read back one row group at a time: keep them small
MERGE_BATCH_ROWS = 256  # rows taken at a time from a run's row group while merging
MAX_FAN_IN = 32  # runs merged at once; more runs are first merged into longer ones (more passes)
_PLAN_VERSION = 1


@dataclass
class ShardTask:
    """A shard to build: its name, the fingerprint of what it writes, and where its rows are.

    ``plan_file`` is a per-split plan whose row group ``index`` holds the shard's manifest rows in
    key order (``load_rows``)."""

    split: str
    index: int
    fingerprint: str
    plan_file: str
    n_rows: int

    @property
    def name(self) -> str:
        return f"{self.split}-{self.index:06d}"

    def load_rows(self) -> list[dict]:
        import pyarrow.parquet as pq

        rows = pq.ParquetFile(self.plan_file).read_row_group(self.index).to_pylist()
        if len(rows) != self.n_rows:
            raise RuntimeError(f"{self.plan_file}: row group {self.index} has {len(rows)} rows, planned {self.n_rows}")
        return rows


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
    root = out / PLAN_DIR
    plan_dir = root / digest
    tasks = _read_plan(plan_dir)
    if tasks is None:
        tmp = root / f".{digest}.{uuid.uuid4().hex}.tmp"
        try:
            _write_plan(longform, tmp, cfg, limit)
            try:
                os.replace(tmp, plan_dir)
            except OSError:  # another part of an array job renamed its identical plan first
                if _read_plan(plan_dir) is None:
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        tasks = _read_plan(plan_dir)
        for old in root.iterdir():  # plans of earlier manifests of this folder
            if old.name != digest and not old.name.endswith(".tmp"):
                shutil.rmtree(old, ignore_errors=True)
    return tasks


def _read_plan(plan_dir: Path) -> list[ShardTask] | None:
    try:
        doc = json.loads((plan_dir / PLAN_FILE).read_text())
    except (OSError, ValueError):
        return None
    return [ShardTask(t["split"], t["index"], t["fingerprint"], str(plan_dir / t["file"]), t["rows"])
            for t in doc["tasks"]]


def _check_key(key: str) -> None:
    if "." in key or "/" in key:
        raise ValueError(f"longform.parquet: key {key!r} contains '.' or '/', not a WebDataset key")


def _sorted_runs(longform: Path, work: Path) -> tuple[list[Path], object]:
    """Run files of ``longform``, each at most SORT_BATCH_ROWS rows sorted by key."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    source = pq.ParquetFile(longform)
    runs = []
    for n, batch in enumerate(source.iter_batches(batch_size=SORT_BATCH_ROWS)):
        table = pa.Table.from_batches([batch], schema=source.schema_arrow)
        for key in table["key"].to_pylist():
            _check_key(key)
        path = work / f"run-{n:06d}.parquet"
        pq.write_table(table.take(pc.sort_indices(table, sort_keys=[("key", "ascending")])), path,
                       row_group_size=RUN_ROW_GROUP_ROWS)
        runs.append(path)
    return runs, source.schema_arrow


def _merged(runs: list[Path], work: Path, schema):
    """All rows of the sorted ``runs`` in key order: (key, row); at most MAX_FAN_IN runs open at once."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    generation = 0
    while len(runs) > MAX_FAN_IN:  # merge groups of runs into longer runs until few enough are left
        generation += 1
        longer = []
        for n in range(0, len(runs), MAX_FAN_IN):
            group, path = runs[n:n + MAX_FAN_IN], work / f"run-g{generation}-{n:06d}.parquet"
            with pq.ParquetWriter(path, schema) as writer:
                rows = []
                for _, row in heapq.merge(*(_run_rows(p) for p in group), key=lambda item: item[0]):
                    rows.append(row)
                    if len(rows) == RUN_ROW_GROUP_ROWS:
                        writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                        rows = []
                if rows:
                    writer.write_table(pa.Table.from_pylist(rows, schema=schema))
            for p in group:
                p.unlink()
            longer.append(path)
        runs = longer
    return heapq.merge(*(_run_rows(p) for p in runs), key=lambda item: item[0])


def _run_rows(path: Path):
    """Rows of one sorted run, streamed: (key, row)."""
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=MERGE_BATCH_ROWS):
        for row in batch.to_pylist():
            yield row["key"], row


class _SplitPlan:
    """One split's plan file, written one shard (row group) at a time."""

    def __init__(self, plan_dir: Path, split: str, schema):
        import pyarrow.parquet as pq

        if "/" in split or split.startswith(".") or not split:
            raise ValueError(f"longform.parquet: split {split!r} cannot name a shard")
        self.split, self.schema, self.file = split, schema, f"{split}.parquet"
        self.writer = pq.ParquetWriter(plan_dir / self.file, schema)
        self.chunk: list[dict] = []
        self.tasks: list[dict] = []
        self.rows = 0

    def add(self, row: dict, size: int, cfg, limit: int | None) -> None:
        if limit is not None and self.rows >= limit:
            return
        self.rows += 1
        self.chunk.append(row)
        if len(self.chunk) == size:
            self.flush(cfg)

    def flush(self, cfg) -> None:
        import pyarrow as pa

        from lfvila.shards.task import task_fingerprint

        if self.chunk:
            self.writer.write_table(pa.Table.from_pylist(self.chunk, schema=self.schema), row_group_size=len(self.chunk))
            self.tasks.append({"split": self.split, "index": len(self.tasks), "file": self.file,
                               "rows": len(self.chunk), "fingerprint": task_fingerprint(self.chunk, cfg)})
            self.chunk = []


def _write_plan(longform: Path, plan_dir: Path, cfg, limit: int | None = None) -> None:
    """Sort ``longform`` into ``plan_dir/<split>.parquet`` (one row group per shard) and plan.json.

    The runs are merged by key over all splits at once, so a key repeated anywhere is caught where
    its copies meet; each row goes to its split's plan, which stays in key order."""
    plan_dir.mkdir(parents=True)
    work = plan_dir / "runs"
    work.mkdir()
    runs, schema = _sorted_runs(longform, work)
    size = cfg.shards.samples_per_shard
    splits: dict[str, _SplitPlan] = {}
    previous = None
    try:
        for key, row in _merged(runs, work, schema):
            if key == previous:
                raise ValueError(f"longform.parquet: key {key!r} occurs twice; keys must be unique")
            previous = key
            if row["split"] not in splits:
                splits[row["split"]] = _SplitPlan(plan_dir, row["split"], schema)
            splits[row["split"]].add(row, size, cfg, limit)
        for plan in splits.values():
            plan.flush(cfg)
    finally:
        for plan in splits.values():
            plan.writer.close()
    shutil.rmtree(work)
    tasks = [t for split in sorted(splits) for t in splits[split].tasks]
    (plan_dir / PLAN_FILE).write_text(json.dumps({"longform": str(longform), "tasks": tasks}) + "\n")
