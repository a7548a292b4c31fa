"""One shard task: write ``{split}-{NNNNNN}.tar``, then its status table, then its stats (last).

Completion protocol (what makes a rerun skip a shard, and a SIGKILL at any moment harmless):
1. the tar is written under a unique temporary name and renamed into place;
2. ``.status.parquet`` (one row per planned sample) is written under a temporary name and renamed;
3. ``.stats.json`` is written the same way, last. A shard is complete when its stats exist, name
   the same task fingerprint (config + manifest rows) and the tar has the recorded size.
"""
from __future__ import annotations

import hashlib
import json
import logging
import traceback
from dataclasses import asdict
from pathlib import Path

# Settings that change how a build runs, not what it writes (RUNTIME_KEYS): changing them (say, a
# longer timeout before --retry-failed) must not make every complete shard stale.
from lfvila.atomic import AtomicPath, atomic_write_bytes, remove_temporaries
from lfvila.build_config import RUNTIME_KEYS
from lfvila.shards.plan import ShardTask

log = logging.getLogger(__name__)


def fingerprint_settings(cfg) -> dict:
    """The settings a shard's bytes depend on besides its rows: video/shard config, min_clips, version."""
    import lfvila
    from lfvila.config import to_dict

    video = {k: v for k, v in to_dict(cfg.video).items() if f"video.{k}" not in RUNTIME_KEYS}
    shards = to_dict(cfg.shards)
    # Settings added later count only where they change the bytes from what shards had before
    # them: JPEG shards keep their fingerprints (a finished corpus is not rebuilt by an upgrade).
    for name in ("target_bytes", "estimated_frame_bytes"):  # sizing by bytes: only when asked for
        if shards[name] is None:
            del shards[name]
    if shards["frames"] == "jpeg":
        del shards["frames"]
        video = {k: v for k, v in video.items() if not k.startswith("h264_")}
    return {"video": video, "shards": shards, "min_clips": cfg.manifest.min_clips,
            "version": lfvila.__version__}


def task_fingerprint(rows: list[dict], cfg) -> str:
    """Hash of everything that determines a shard's bytes: its rows and ``fingerprint_settings``."""
    blob = json.dumps({"rows": rows, **fingerprint_settings(cfg)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


# The planner encodes each row once (row_json) and hashes the shard's rows without encoding them
# again: json.dumps writes a value the same wherever it sits, so the blob of task_fingerprint is
# the settings' JSON with the rows' JSON put where "rows" goes (tests/test_shards_plan.py checks).
_ROWS_PLACEHOLDER = "\u0000rows\u0000"


def row_json(row: dict) -> str:
    """One manifest row as task_fingerprint's JSON encodes it inside the list of rows."""
    return json.dumps(row, sort_keys=True, default=str)


def fingerprint_settings_json(cfg) -> tuple[str, str]:
    """task_fingerprint's JSON before and after the rows."""
    template = json.dumps({"rows": _ROWS_PLACEHOLDER, **fingerprint_settings(cfg)}, sort_keys=True, default=str)
    before, after = template.split(json.dumps(_ROWS_PLACEHOLDER))
    return before, after


def fingerprint_of_rows_json(rows_json: str, settings_json: tuple[str, str]) -> str:
    """task_fingerprint of the rows whose JSON list is ``rows_json`` (``"[" + ", ".join(row_json) + "]"``)."""
    return hashlib.sha256((settings_json[0] + rows_json + settings_json[1]).encode()).hexdigest()


def paths(shard_dir: Path, name: str) -> dict[str, Path]:
    return {"tar": shard_dir / f"{name}.tar", "status": shard_dir / f"{name}.status.parquet",
            "stats": shard_dir / f"{name}.stats.json"}


def read_stats(shard_dir: Path, name: str) -> dict | None:
    p = paths(shard_dir, name)["stats"]
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def is_complete(shard_dir: Path, task: ShardTask, retry_failed: bool = False) -> bool:
    """True when the shard exists for this exact task (and, with retry_failed, has no failed samples)."""
    stats = read_stats(shard_dir, task.name)
    if stats is None or stats.get("fingerprint") != task.fingerprint:
        return False
    p = paths(shard_dir, task.name)
    try:
        if p["tar"].stat().st_size != stats["tar_bytes"] or not p["status"].exists():
            return False
    except OSError:
        return False
    return not (retry_failed and stats["samples_failed"] > 0)


def _remove(path: Path) -> None:
    """Unlink ``path`` after a failure without raising (the disk may be failing): a rerun cleans up the rest."""
    try:
        path.unlink(missing_ok=True)
    except OSError as e:
        log.warning("could not remove %s: %s", path, e)


def run_shard_task(task: ShardTask, out: Path, videos_dir: Path, cfg) -> dict:
    """Build one shard (see module docstring) and return its stats dict."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lfvila.shards.sample import SampleOutcome, write_sample
    from lfvila.shards.tar import DeterministicTarWriter

    rows = task.load_rows()  # from the plan, before anything of the shard is touched
    shard_dir = Path(out) / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    # Temporaries of earlier, killed attempts at this shard: those of NAME.tar, NAME.status.parquet and
    # NAME.stats.json all match NAME's pattern (a split named like a glob is matched literally).
    remove_temporaries(shard_dir, task.name)
    p = paths(shard_dir, task.name)
    # Stats go first so a half-redone shard can never look complete.
    p["stats"].unlink(missing_ok=True)
    tar_out = AtomicPath(p["tar"])
    tar = DeterministicTarWriter(tar_out.tmp)
    outcomes: list[SampleOutcome] = []
    try:
        for row in rows:
            mark = tar.tell()
            try:
                outcome = write_sample(row, Path(videos_dir), cfg, tar)
            except OSError:
                # The environment, not this sample (write_sample turns errors reading its input into
                # its outcome): disk full, quota, read-only or failing disk under the shard, no ffmpeg
                # to run. Every later sample would fail the same way and a committed shard would keep
                # them failed: the task fails, leaves nothing, and a rerun of the same command redoes it.
                raise
            except Exception as exc:  # a bug in one sample must not take the other samples with it
                tar.rollback(mark)
                log.warning("sample %s: %s", row["key"], exc)
                outcome = SampleOutcome(key=row["key"], status="failed", reason="internal_error",
                                        n_clips=len(row["sentences"]),
                                        detail=traceback.format_exception_only(exc)[-1].strip()[:500])
            outcomes.append(outcome)
        tar.close()
    except BaseException:
        tar.abort()
        raise
    rows = []
    for o in outcomes:
        d = asdict(o)
        d["clip_rejects"] = json.dumps(d["clip_rejects"], sort_keys=True)
        rows.append({"split": task.split, "shard": task.name, **d})
    table = pa.Table.from_pylist(rows, schema=_status_schema())
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)

    try:
        tar_out.commit(synced=True)  # the writer's close fsynced it
        atomic_write_bytes(p["status"], sink.getvalue().to_pybytes())
        stats = _shard_stats(task, outcomes, p["tar"].stat().st_size, cfg.video.fps)
        atomic_write_bytes(p["stats"], (json.dumps(stats, indent=1, sort_keys=True) + "\n").encode())
    except BaseException:
        # Without its stats the shard is not complete: drop what was renamed, so a failed commit
        # (disk full on the status table) leaves no orphan holding the space a rerun needs.
        for path in (tar_out.tmp, p["tar"], p["status"]):
            _remove(path)
        raise
    return stats


def _status_schema():
    import pyarrow as pa

    return pa.schema([
        ("key", pa.string()), ("split", pa.string()), ("shard", pa.string()), ("status", pa.string()),
        ("reason", pa.string()), ("detail", pa.string()), ("n_frames", pa.int32()), ("n_sentences", pa.int32()),
        ("n_clips", pa.int32()), ("clips_written", pa.int32()), ("clip_rejects", pa.string()),
        ("duration", pa.float64()), ("offset", pa.int64()), ("size", pa.int64()), ("decode_errors", pa.int32()),
        ("trimmed", pa.bool_()),
    ])


def _shard_stats(task: ShardTask, outcomes, tar_bytes: int, fps: float) -> dict:
    rejected: dict[str, int] = {}
    clip_rejects: dict[str, int] = {}
    for o in outcomes:
        if o.status != "written":
            rejected[o.reason] = rejected.get(o.reason, 0) + 1
            clip_rejects[o.reason] = clip_rejects.get(o.reason, 0) + o.n_clips
        for reason, n in o.clip_rejects.items():
            clip_rejects[reason] = clip_rejects.get(reason, 0) + n
    written = [o for o in outcomes if o.status == "written"]
    return {
        "shard": task.name, "split": task.split, "fingerprint": task.fingerprint,
        "samples_planned": len(outcomes), "samples_written": len(written),
        "samples_rejected": sum(o.status == "rejected" for o in outcomes),
        "samples_failed": sum(o.status == "failed" for o in outcomes),
        "rejected_by_reason": dict(sorted(rejected.items())),
        "clips_input": sum(o.n_clips for o in outcomes),
        "clips_written": sum(o.clips_written for o in written),
        "clips_rejected_by_reason": dict(sorted(clip_rejects.items())),
        "frames": sum(o.n_frames for o in written),
        "video_seconds": round(sum(o.duration for o in written), 6),
        "frame_seconds": round(sum(o.n_frames for o in written) / fps, 6),
        "decode_errors": sum(o.decode_errors for o in outcomes),
        "tar_bytes": tar_bytes,
    }
