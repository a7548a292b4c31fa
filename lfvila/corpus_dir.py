"""What an existing ``--out`` directory holds, and whether a new manifest may be built into it.

A corpus directory belongs to one set of inputs: its ``corpus.json`` records them. Building other
inputs into it would leave the old corpus's shards beside the new ones (a brace pattern over
``train-{000000..000009}.tar`` picks them up) and a ``corpus.json`` describing both, so it is
refused unless the caller asks to replace the corpus (``overwrite``). The same inputs with another
recipe is the documented way to rebuild: allowed, and the shard stage's summary, which described
the old shards, is dropped (the shard stage redoes what changed and removes shards the new plan
does not have).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from lfvila.atomic import atomic_write_text
from lfvila.errors import InputError, UserError

log = logging.getLogger(__name__)


def _read_corpus(out: Path) -> dict | None:
    try:
        corpus = json.loads((out / "corpus.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return corpus if isinstance(corpus, dict) else {}


def _write_corpus(out: Path, corpus: dict) -> None:
    atomic_write_text(out / "corpus.json", json.dumps(corpus, indent=2) + "\n")


def _normal(source) -> str:
    fmt, _, rest = str(source).partition(":")
    return f"{fmt.lower()}:{rest}"


def check_sources(sources: list[str]) -> list:
    """Parse ``FORMAT:PATH`` sources and check their paths exist, before any heavy work."""
    from lfvila.manifest.sources import parse_source_spec

    if not sources:
        raise UserError("at least one --source FORMAT:PATH is needed for the manifest stage")
    specs = [parse_source_spec(s) for s in sources]
    for spec in specs:
        if not spec.path.exists():
            raise InputError(f"source {spec.spec!r}: {spec.path} does not exist")
    return specs


def require_corpus(out: str | os.PathLike) -> Path:
    """``out`` as a corpus directory (it has corpus.json or longform.parquet), else InputError."""
    out = Path(out)
    if not out.is_dir():
        raise InputError(f"{out} is not a corpus directory (it does not exist); give the --out of lfvila build")
    if not (out / "corpus.json").exists() and not (out / "longform.parquet").exists():
        raise InputError(f"{out} is not a corpus directory (no corpus.json or longform.parquet); "
                         f"give the --out of lfvila build")
    return out


def _by_reason(counts: dict) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def empty_manifest_reason(counts: dict) -> str | None:
    """Why a manifest stage gave nothing usable (a source without records or with every record
    rejected, or no long-form video at all), or None when it did."""
    for name, c in counts.get("sources", {}).items():
        fmt = name.partition(":")[0]
        if c["input_records"] == 0:
            return f"source {name!r} yielded no records: is it the right file, in {fmt} format?"
        if c["accepted_records"] == 0:
            return (f"every record of source {name!r} was rejected ({_by_reason(c['rejects_by_reason'])}): "
                    f"is it in {fmt} format? rejects.parquet has each record's reason")
    lf = counts.get("longform", {})
    if sum(s["videos"] for s in lf.values()) == 0:
        merge = counts.get("merge_rejects_by_reason", {})
        return (f"no long-form video: {counts.get('kept_clips', 0)} clips kept, none in a long-form video"
                + (f" (merge rejects: {_by_reason(merge)}); lower manifest.min_clips or raise manifest.max_gap_s"
                   if merge else ""))
    return None


def prepare_manifest_out(out: str | os.PathLike, config: dict, sources: list[str], *, overwrite: bool = False) -> str:
    """Check (and with ``overwrite`` clear) ``out`` before a manifest is built into it; returns what was done.

    ``config`` is the resolved recipe as a plain dict, ``sources`` the ``FORMAT:PATH`` strings.
    Raises ``UserError`` when ``out`` holds a corpus of other inputs and ``overwrite`` is False.
    """
    out = Path(out)
    corpus = _read_corpus(out)
    if corpus is None:  # no corpus yet; shards without one are left from something else
        if (out / "shards").exists():
            if not overwrite:
                raise UserError(f"{out} holds shards but no corpus.json; use a new --out, or --overwrite to "
                                f"replace them")
            shutil.rmtree(out / "shards")
            return f"--overwrite: removed {out / 'shards'} (no corpus.json)"
        return ""
    recorded_sources = [i.get("source") for i in corpus.get("inputs", [])]
    if [_normal(s) for s in recorded_sources] != [_normal(s) for s in sources]:
        if not overwrite:
            raise UserError(
                f"{out} already holds a corpus built from {', '.join(map(str, recorded_sources)) or 'unknown inputs'}, "
                f"not {', '.join(sources)}; use a new --out, or --overwrite to replace it (its shards are removed)")
        removed = out / "shards"
        if removed.exists():
            shutil.rmtree(removed)
        corpus.pop("video", None)
        _write_corpus(out, corpus)
        return (f"--overwrite: replacing the corpus in {out} (built from {', '.join(map(str, recorded_sources))}); "
                f"removed its shards")
    if overwrite and (out / "shards").exists():
        shutil.rmtree(out / "shards")
        corpus.pop("video", None)
        _write_corpus(out, corpus)
        return f"--overwrite: removed the shards in {out / 'shards'}"
    if corpus.get("config") != config and "video" in corpus:
        corpus.pop("video")
        _write_corpus(out, corpus)
        return (f"{out}: same inputs, another recipe: the manifest is rebuilt; shards whose samples change are "
                f"rebuilt by the shard stage, shards the new plan does not have are removed")
    return ""


def written_keys(out: str | os.PathLike) -> list[tuple[str, str, str]]:
    """(key, split, shard) of every written sample, from shards/index.parquet (empty before it exists)."""
    import pyarrow.parquet as pq

    index = Path(out) / "shards" / "index.parquet"
    if not index.exists():
        return []
    t = pq.read_table(index, columns=["key", "split", "shard"])
    return list(zip(*(t.column(c).to_pylist() for c in ("key", "split", "shard"))))


def sample_status(out: str | os.PathLike, key: str) -> dict | None:
    """The shard stage's status row of sample ``key`` (status, reason, detail, shard), or None."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    shard_dir = Path(out) / "shards"
    # The corpus-wide table once every shard is complete, else each complete shard's own table.
    tables = [shard_dir / "status.parquet"] if (shard_dir / "status.parquet").exists() else sorted(
        shard_dir.glob("*.status.parquet"))
    for path in tables:
        present = set(pq.read_schema(path).names)
        t = pq.read_table(path, columns=[c for c in ("key", "shard", "status", "reason", "detail") if c in present])
        hit = t.filter(pc.equal(t["key"], key))
        if hit.num_rows:
            return hit.slice(0, 1).to_pylist()[0]
    return None


def missing_sample_reason(out: str | os.PathLike, key: str) -> str:
    """Why ``key`` has no written sample in ``out``: rejected/failed by the shard stage (with the
    reason), planned but not built yet, or not a key of the corpus."""
    out = Path(out)
    row = sample_status(out, key)
    if row is not None and row.get("status") != "written":
        detail = f" ({row['detail']})" if row.get("detail") else ""
        return (f"{key} was {row.get('status')} by the shard stage in {row.get('shard')}: "
                f"{row.get('reason')}{detail}")
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    longform = out / "longform.parquet"
    if longform.exists():
        keys = pq.read_table(longform, columns=["key"])["key"]
        if pc.any(pc.equal(keys, key)).as_py():
            return f"{key} is planned but its shard is not built yet (lfvila build --out {out} --stage shards)"
    return f"{key} is not a key of {out}; lfvila inspect {out} --keys lists the written samples"
