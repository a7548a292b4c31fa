"""Shard stage driver: plan shard tasks from ``OUT/longform.parquet``, run them, then write the indexes.

Planning (lfvila/shards/plan.py, bounded memory) is deterministic: per split, the long-form videos
in key order are cut into consecutive groups of ``shards.samples_per_shard``; group ``i`` of split
``s`` is shard ``{s}-{i:06d}``. Shard tasks are independent and write disjoint files, so they run anywhere: in this process, in local
worker processes (``engine="local"``), or on a Ray cluster (``engine="ray"``) whose nodes see the
same ``OUT`` and videos directory. ``shard_range="i/N"`` keeps every N-th task starting at i, for
array jobs. When every shard of the corpus is complete, the driver writes ``shards/index.parquet``,
``shards/status.parquet``, one wids index per split and the ``video`` section of ``corpus.json``.
"""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

from lfvila.atomic import AtomicPath, atomic_write_bytes, remove_temporaries
from lfvila.errors import InputError, TaskFailure
from lfvila.shards.sample import RETRYABLE_REASONS
from lfvila.shards.plan import ShardTask, plan_shard_tasks
from lfvila.shards.task import is_complete, paths, read_stats, run_shard_task

log = logging.getLogger(__name__)


def parse_shard_range(text: str | None) -> tuple[int, int]:
    """``"i/N"`` -> (i, N) with 0 <= i < N; None -> (0, 1)."""
    if text is None:
        return 0, 1
    try:
        part, total = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"shard_range must look like I/N (e.g. 0/4), got {text!r}") from None
    if not 0 <= part < total:
        raise ValueError(f"shard_range {text!r}: need 0 <= I < N")
    return part, total


def build_shards(cfg, out: Path, videos_dir: Path, *, workers: int = 1, engine: str = "local",
                 ray_address: str | None = None, shard_range: str | None = None,
                 retry_failed: bool = False, limit: int | None = None) -> dict:
    """Build the shards of ``out`` from its manifest and ``videos_dir``; return the corpus video summary.

    Complete shards are skipped (with ``retry_failed``, shards holding failed samples are redone).
    With ``limit``, a quick partial corpus: the first ``limit`` long-form videos (in key order) of
    each split; ``corpus.json`` records it, and a later build without it completes the corpus.
    The summary (also written to ``corpus.json`` under ``video``) is only final when every shard is
    complete; with a ``shard_range`` it is written by whichever part finishes last.
    """
    out, videos_dir = Path(out), Path(videos_dir)
    if not (out / "longform.parquet").exists():
        raise InputError(f"{out / 'longform.parquet'} is missing: run the manifest stage first (--stage manifest)")
    if not videos_dir.is_dir():
        raise InputError(f"videos directory {videos_dir} does not exist")
    if engine not in ("local", "ray"):
        raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
    part, total = parse_shard_range(shard_range)
    tasks = plan_shard_tasks(cfg, out, limit)
    shard_dir = out / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    removed = remove_stale_shards(shard_dir, tasks)
    if removed:
        log.warning("removed %d shard file(s) that this corpus's plan does not have (left by an earlier manifest): "
                    "%s", len(removed), ", ".join(p.name for p in removed[:6]))
    mine = tasks[part::total]
    todo = [t for t in mine if not is_complete(shard_dir, t, retry_failed)]
    log.info("%d shard tasks in the corpus, %d in this part, %d to do", len(tasks), len(mine), len(todo))

    run = _run_ray if engine == "ray" else _run_local
    run(todo, out, videos_dir, cfg, workers=workers, ray_address=ray_address)

    if all(is_complete(shard_dir, t) for t in tasks):
        try:
            return write_corpus_indexes(out, tasks, cfg, limit)
        except OSError as exc:  # disk full, ...: each file is renamed into place whole or not at all
            raise TaskFailure(f"every shard is complete, but the corpus indexes could not be written ({exc}); "
                              f"run the same command again to write them") from exc
    done = sum(is_complete(shard_dir, t) for t in tasks)
    log.info("%d of %d shards complete; indexes are written when all are", done, len(tasks))
    return {}


_SHARD_FILE = re.compile(r"^(?P<name>[^.]+-\d{6})\.(?:tar|status\.parquet|stats\.json)$")


def remove_stale_shards(shard_dir: Path, tasks: list[ShardTask]) -> list[Path]:
    """Remove shard files (tar, status, stats) whose shard is not in ``tasks``; return them.

    They are left by an earlier manifest of the same directory with more shards; kept, a brace
    pattern or a directory listing would mix them into this corpus. Temporaries of running tasks
    (``.NAME.*.tmp``) do not match.
    """
    planned = {t.name for t in tasks}
    stale = sorted(p for p in shard_dir.iterdir()
                   if (m := _SHARD_FILE.match(p.name)) and m.group("name") not in planned)
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


class _Progress:
    """tqdm bar over shards: samples/s, hours of video written, rejected samples; collects task errors."""

    def __init__(self, total: int):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="shard", desc="shards", dynamic_ncols=True)
        self.start = time.monotonic()
        self.samples = self.rejected = self.failed = 0
        self.seconds = 0.0
        self.errors: list[str] = []

    def update(self, stats: dict) -> None:
        self.samples += stats["samples_written"]
        self.rejected += stats["samples_rejected"]
        self.failed += stats["samples_failed"]
        self.seconds += stats["video_seconds"]
        rate = self.samples / max(time.monotonic() - self.start, 1e-9)
        self.bar.set_postfix(samples_s=f"{rate:.2f}", video_h=f"{self.seconds / 3600:.2f}", rejected=self.rejected,
                             failed=self.failed)
        self.bar.update(1)

    def error(self, task: ShardTask, exc: BaseException) -> None:
        """A whole task failed (sample errors are caught inside it): disk full, lost worker, ..."""
        log.error("shard %s failed: %s", task.name, exc)
        self.errors.append(f"{task.name}: {exc}")
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
        if self.errors:
            raise TaskFailure(f"{len(self.errors)} shard task(s) failed (none of them committed); the other shards "
                              f"are complete and a rerun of the same command redoes only these: "
                              + "; ".join(self.errors[:5]))


def _run_local(todo: list[ShardTask], out: Path, videos_dir: Path, cfg, *, workers: int, **_) -> None:
    progress = _Progress(len(todo))
    if workers <= 1 or len(todo) <= 1:
        for task in todo:
            try:
                progress.update(run_shard_task(task, out, videos_dir, cfg))
            except Exception as exc:
                progress.error(task, exc)
        progress.close()
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn: workers start clean (no inherited threads or locks from the driver).
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx, initializer=die_with_parent,
                             initargs=(os.getpid(),)) as pool:
        futures = {pool.submit(run_shard_task, task, out, videos_dir, cfg): task for task in todo}
        for future in as_completed(futures):
            try:
                progress.update(future.result())
            except Exception as exc:  # includes BrokenProcessPool when a worker process dies
                progress.error(futures[future], exc)
    progress.close()


def die_with_parent(parent_pid: int, poll_s: float = 1.0) -> None:
    """Make this process (a pool worker) exit when ``parent_pid``, the driver that started it, dies.

    A worker blocks on its task queue, whose write end it holds itself, so it never sees a SIGKILLed
    driver go: it and the multiprocessing resource tracker (which waits for every worker) would live
    forever. On Linux the kernel sends SIGKILL when the parent dies (``PR_SET_PDEATHSIG``); a daemon
    thread watching ``os.getppid()`` covers other systems and the moment before the ``prctl``. The
    worker's ffmpeg exits on its next write to the closed pipe.
    """
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            pr_set_pdeathsig = 1
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no libc prctl: the watchdog alone
            pass
    if os.getppid() != parent_pid:  # the driver died before the prctl (or while we started)
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="lfvila-parent-watchdog", daemon=True).start()


def _run_ray(todo: list[ShardTask], out: Path, videos_dir: Path, cfg, *, workers: int,
             ray_address: str | None) -> None:
    from lfvila.ray_cluster import ray_session

    progress = _Progress(len(todo))
    with ray_session(ray_address, workers) as ray:
        remote_task = ray.remote(num_cpus=1, max_retries=2)(run_shard_task)
        # Absolute paths: Ray workers run in their own working directory.
        pending = {remote_task.remote(t, out.resolve(), videos_dir.resolve(), cfg): t for t in todo}
        waiting = list(pending)
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=1)
            for ref in done:
                try:
                    progress.update(ray.get(ref))
                except Exception as exc:  # RayTaskError, a node lost after its retries, ...
                    progress.error(pending[ref], exc)
    progress.close()


def write_corpus_indexes(out: Path, tasks: list[ShardTask], cfg, limit: int | None = None) -> dict:
    """Write index.parquet, status.parquet, per-split wids indexes and corpus.json's ``video`` section."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shard_dir = out / "shards"
    # Temporaries of an earlier attempt killed while writing these files (not those of shard tasks).
    for name in ("status.parquet", "index.parquet", *(f"{split}.wids.json" for split in {t.split for t in tasks})):
        remove_temporaries(shard_dir, name)
    remove_temporaries(out, "corpus.json")
    # Streamed one shard at a time (memory independent of the corpus), in row groups of the size
    # pq.write_table uses, so the files are those a single write of all rows would give.
    status_writer = _RowGroupWriter(shard_dir / "status.parquet")
    index_writer = _RowGroupWriter(shard_dir / "index.parquet")
    try:
        for t in tasks:
            status = pq.read_table(paths(shard_dir, t.name)["status"])
            status_writer.write(status)
            written = status.filter(pa.compute.equal(status["status"], "written"))
            index_writer.write(pa.table({
                "key": written["key"], "split": written["split"],
                "shard": pa.compute.binary_join_element_wise(written["shard"], pa.scalar(".tar"), ""),
                "offset": written["offset"], "size": written["size"], "n_frames": written["n_frames"],
                "duration": written["duration"], "n_sentences": written["n_sentences"],
            }))
        status_writer.close()
        index_writer.close()
    finally:
        status_writer.abort()
        index_writer.abort()

    summary: dict = {"fps": cfg.video.fps, "frame_height": cfg.video.frame_height, "splits": {}}
    if limit is not None:  # a partial corpus says so (the key is absent from a whole one)
        summary["limit"] = {"longform_videos_per_split": limit}
    for split in sorted({t.split for t in tasks}):
        split_stats = [read_stats(shard_dir, t.name) for t in tasks if t.split == split]
        summary["splits"][split] = _sum_stats(split_stats)
        shardlist = [{"url": f"{s['shard']}.tar", "nsamples": s["samples_written"], "filesize": s["tar_bytes"]}
                     for s in split_stats if s["samples_written"] > 0]
        wids = {"wids_version": 1, "name": f"lfvila-{split}", "shardlist": shardlist}
        _write_json(shard_dir / f"{split}.wids.json", wids)
    summary["totals"] = _sum_stats(list(summary["splits"].values()))
    t = summary["totals"]
    rejected = sum(t["clips_rejected_by_reason"].values())
    summary["clips_check"] = (f"input clips {t['clips_input']} == clips in written samples {t['clips_written']}"
                              f" + rejected clips {rejected}")
    summary["clips_check_ok"] = t["clips_input"] == t["clips_written"] + rejected

    corpus_path = out / "corpus.json"
    corpus = json.loads(corpus_path.read_text()) if corpus_path.exists() else {}
    corpus["video"] = summary
    _write_json(corpus_path, corpus)
    return summary


def _sum_stats(stats: list[dict]) -> dict:
    """Add up shard stats (or split summaries): counts, seconds, bytes and per-reason tallies."""
    total = {"shards": 0, "samples_planned": 0, "samples_written": 0, "samples_rejected": 0, "samples_failed": 0,
             "rejected_by_reason": {}, "clips_input": 0, "clips_written": 0, "clips_rejected_by_reason": {},
             "frames": 0, "video_seconds": 0.0, "bytes": 0, "decode_errors": 0}
    for s in stats:
        total["shards"] += s.get("shards", 1)
        total["bytes"] += s.get("bytes", s.get("tar_bytes", 0))
        for k in ("samples_planned", "samples_written", "samples_rejected", "samples_failed", "clips_input",
                  "clips_written", "frames", "video_seconds", "decode_errors"):
            total[k] += s[k]
        for k in ("rejected_by_reason", "clips_rejected_by_reason"):
            for reason, n in s[k].items():
                total[k][reason] = total[k].get(reason, 0) + n
    total["video_seconds"] = round(total["video_seconds"], 3)
    total["video_hours"] = round(total["video_seconds"] / 3600, 4)
    for k in ("rejected_by_reason", "clips_rejected_by_reason"):
        total[k] = dict(sorted(total[k].items()))
    return total


def empty_build_reason(summary: dict, videos_dir: Path) -> str | None:
    """Why a finished shard stage wrote no sample (one line naming the reasons), or None when it wrote some."""
    totals = summary.get("totals")
    if not totals or totals["samples_written"] > 0:
        return None
    planned = totals["samples_planned"]
    reasons = totals.get("rejected_by_reason", {})
    if planned and reasons.get("video_not_found") == planned:
        return (f"no video matched in {videos_dir}: {planned} of {planned} samples video_not_found (videos are "
                f"looked up as {videos_dir}/<video_id>.<ext> or {videos_dir}/<video_id>/<clip_id>)")
    shown = ", ".join(f"{r} {n}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
    return (f"no sample written: {planned} planned, {totals['samples_rejected']} rejected"
            + (f" ({shown})" if shown else "") + f", {totals['samples_failed']} failed; shards/status.parquet "
            f"has each sample's reason")


def format_build_summary(summary: dict) -> str:
    """The final summary table printed by ``lfvila build``."""
    header = f"{'split':<8}{'shards':>8}{'written':>9}{'rejected':>9}{'failed':>8}{'hours':>9}{'frames':>10}{'MB':>10}"
    lines = [header, "-" * len(header)]
    for name, s in [*summary.get("splits", {}).items(), ("total", summary.get("totals"))]:
        if s is None:
            continue
        lines.append(f"{name:<8}{s['shards']:>8}{s['samples_written']:>9}{s['samples_rejected']:>9}"
                     f"{s['samples_failed']:>8}{s['video_hours']:>9.3f}{s['frames']:>10}{s['bytes'] / 1e6:>10.1f}")
    totals = summary.get("totals") or {}
    # rejected_by_reason counts every sample not written; the retryable reasons are the failed ones.
    for reason, n in totals.get("rejected_by_reason", {}).items():
        lines.append(f"  {'failed' if reason in RETRYABLE_REASONS else 'rejected'} samples, {reason}: {n}")
    if "clips_check" in summary:
        lines.append(("OK: " if summary["clips_check_ok"] else "MISMATCH: ") + summary["clips_check"])
    return "\n".join(lines)


class _RowGroupWriter:
    """Parquet written table by table, byte-identical to one ``pq.write_table`` of all the tables
    concatenated: rows are regrouped into row groups of exactly ``ROW_GROUP_ROWS`` (pyarrow's
    default), the schema is the first table's (as ``pa.concat_tables``); nothing is written for no
    table. Written under a temporary name, renamed by ``close``; ``abort`` removes the temporary."""

    ROW_GROUP_ROWS = 1 << 20

    def __init__(self, path: Path):
        self.out = AtomicPath(path)
        self.writer = None
        self.pending: list = []
        self.pending_rows = 0
        self.groups = 0

    def write(self, table) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.writer is None:
            self.writer = pq.ParquetWriter(self.out.tmp, table.schema)
        self.pending.append(table)
        self.pending_rows += table.num_rows
        while self.pending_rows >= self.ROW_GROUP_ROWS:
            joined = pa.concat_tables(self.pending)
            self.writer.write_table(joined.slice(0, self.ROW_GROUP_ROWS), row_group_size=self.ROW_GROUP_ROWS)
            self.groups += 1
            rest = joined.slice(self.ROW_GROUP_ROWS)
            self.pending, self.pending_rows = [rest], rest.num_rows

    def close(self) -> None:
        import pyarrow as pa

        if self.writer is None:
            return
        if self.pending_rows or not self.groups:  # write_table writes one empty row group for no rows
            self.writer.write_table(pa.concat_tables(self.pending), row_group_size=self.ROW_GROUP_ROWS)
        self.writer.close()
        self.writer = None
        self.out.commit()

    def abort(self) -> None:
        """Remove the temporary (after a failure, or a no-op after ``close``); never raises."""
        try:
            if self.writer is not None:
                self.writer.close()
        except OSError:
            pass
        self.writer = None
        self.out.discard()


def _write_json(path: Path, data: dict) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())
