"""Shard-stage driver memory and time at corpus scale, without decoding any video.

Writes a synthetic ``longform.parquet`` of N long-form videos (4-12 sentences of ~80 characters
each, keys in a scrambled order as the manifest writes them, 1 % val), then runs, each in a fresh
child process so that peak RSS is its own:

- ``plan``: ``plan_shard_tasks`` alone, cold (no plan on disk);
- ``stage``: the whole ``build_shards`` with an empty videos folder, cold: every sample becomes a
  ``video_not_found`` reject without decoding, so what is measured is the driver (plan, task
  hand-off, status and stats of every shard, index.parquet / status.parquet / wids indexes).

    .venv/bin/python bench/shard_planning.py --rows 1000000 8500000 [--code DIR] [--workers 2]

``--code DIR`` runs the children on another checkout (e.g. a worktree of an older commit), so the
same manifest can be measured before and after a change.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from lfvila.build_config import BuildConfig
from lfvila.config import load_config
mode, out, videos, workers = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
cfg = load_config(BuildConfig, None, [])
t0, c0 = time.perf_counter(), time.process_time()
if mode == "plan":
    try:
        from lfvila.shards.plan import plan_shard_tasks
    except ImportError:  # before lfvila/shards/plan.py existed
        from lfvila.shards.build import plan_shard_tasks
    n = len(plan_shard_tasks(cfg, out))
else:
    from lfvila.shards.build import build_shards
    n = build_shards(cfg, out, videos, workers=workers)["totals"]["samples_planned"]
me = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"n": n, "wall_s": time.perf_counter() - t0, "driver_cpu_s": time.process_time() - c0,
                  "driver_peak_rss_mb": me.ru_maxrss / 1024}))
"""


def write_longform(path: Path, n_rows: int, seed: int = 0) -> None:
    """Synthetic long-form table in the manifest's schema, written in row groups (bounded memory)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lfvila.manifest.tables import LONGFORM_SCHEMA, SENTENCE_TYPE

    rng = np.random.default_rng(seed)
    step = 7_919 if n_rows % 7_919 else 7_907  # a permutation of 0..N-1: i -> i * step mod N
    tmp = path.with_suffix(".tmp")
    with pq.ParquetWriter(tmp, LONGFORM_SCHEMA) as writer:
        for lo in range(0, n_rows, 1 << 16):
            ids = (np.arange(lo, min(n_rows, lo + (1 << 16))) * step) % n_rows
            counts = rng.integers(4, 13, len(ids))
            offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
            total = int(offsets[-1])
            video = np.repeat(ids, counts)
            clip_n = np.arange(total) - np.repeat(offsets[:-1], counts) + 1
            starts = clip_n * 13.4
            text = pa.array([f"synthetic sentence {n} of video {v} with some words to make it about eighty chars"
                             for v, n in zip(video.tolist(), clip_n.tolist())])
            sentences = pa.StructArray.from_arrays(
                [pa.array([f"v{v:07d}.{n}.mp4" for v, n in zip(video.tolist(), clip_n.tolist())]),
                 pa.array(starts), pa.array(starts + 13.4), text], fields=list(SENTENCE_TYPE))
            table = pa.table({
                "key": [f"syn~v{v:07d}~000001" for v in ids.tolist()],
                "split": np.where(ids % 100 == 0, "val", "train").tolist(),
                "source": ["syn"] * len(ids), "video_id": [f"v{v:07d}" for v in ids.tolist()],
                "start": np.full(len(ids), 13.4), "end": (counts + 1) * 13.4, "n_clips": counts.astype(np.int32),
                "video_duration": np.full(len(ids), 3600.0),
                "sentences": pa.ListArray.from_arrays(pa.array(offsets), sentences),
            }, schema=LONGFORM_SCHEMA)
            writer.write_table(table)
    os.replace(tmp, path)


def run_child(code: Path, mode: str, out: Path, videos: Path, workers: int) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, mode, str(out), str(videos), str(workers)],
                            env={**os.environ, "PYTHONPATH": str(code)}, stdout=subprocess.PIPE, text=True,
                            cwd=out)
    _, status, usage = os.wait4(proc.pid, 0)
    result = json.loads(proc.stdout.read().strip().splitlines()[-1]) if status == 0 else {"failed": status}
    result["wall_s_total"] = time.perf_counter() - t0
    result["peak_rss_mb_with_workers"] = usage.ru_maxrss / 1024
    result["cpu_s_with_workers"] = usage.ru_utime + usage.ru_stime
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--code", default=str(REPO), help="checkout whose lfvila the children run")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work", default=str(REPO / "bench" / "_work" / "planning"))
    parser.add_argument("--modes", nargs="+", default=["plan", "stage"], choices=["plan", "stage"])
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    work = Path(args.work)
    videos = work / "no_videos"
    videos.mkdir(parents=True, exist_ok=True)
    print(f"code: {args.code}  started {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    for n in args.rows:
        out = work / f"rows{n}"
        out.mkdir(parents=True, exist_ok=True)
        if not (out / "longform.parquet").exists():
            t = time.perf_counter()
            write_longform(out / "longform.parquet", n)
            print(f"wrote {n:,} rows ({(out / 'longform.parquet').stat().st_size / 1e6:.0f} MB) in "
                  f"{time.perf_counter() - t:.0f} s", flush=True)
        for mode in args.modes:
            for stale in (".plan", "shards"):  # cold: no plan and no shard from an earlier run
                shutil.rmtree(out / stale, ignore_errors=True)
            (out / "corpus.json").unlink(missing_ok=True)
            result = run_child(Path(args.code), mode, out, videos, args.workers)
            print(json.dumps({"rows": n, "mode": mode, **{k: round(v, 2) if isinstance(v, float) else v
                                                          for k, v in result.items()}}), flush=True)


if __name__ == "__main__":
    main()
