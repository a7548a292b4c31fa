"""Atomic, complete, verified, resumable checkpoints that never run code when loaded.

Layout under ``OUT/checkpoints``::

    step_00000100/
        model.pt          model state_dict (rank 0)
        train_state.pt    optimizer, scheduler, grad scaler, step (rank 0)
        rank_00000.pt     this rank's RNG states and loader position (one file per rank)
        config.yaml       the resolved TrainConfig
        meta.json         format, step, world size, lfvila version, time, and the size and
                          sha256 of every file above; written last

Every rank writes into a hidden ``.step_00000100.tmp`` directory and fsyncs its files; after a
barrier rank 0 records every file's size and sha256 in ``meta.json``, fsyncs it and the
directory, renames the directory to its final name and fsyncs the parent, so a directory named
``step_*`` is complete (also after a power cut) and a kill at any moment leaves at worst a
``.tmp`` directory that the next save replaces. Old checkpoints are renamed to a hidden name
before they are deleted, for the same reason. A multi-node run needs ``OUT`` on a file system
every node sees.

Loading trusts nothing in the directory: a checkpoint is used only once :func:`verify_checkpoint`
finds every file ``meta.json`` lists with its recorded size and sha256 (``--resume auto`` takes
the newest intact checkpoint and warns, naming the file and what is wrong, about each newer one
it skips), and every ``.pt`` is read with ``torch.load(weights_only=True)``, which unpickles
tensors and plain Python values only. So the RNG states and the loader position are stored as
tensors and plain types (:func:`capture_rng_state`), and a ``.pt`` holding any other pickled
object is refused (:class:`~lfvila.errors.CheckpointError`) instead of run.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import lfvila
from lfvila.atomic import replace_durably
from lfvila.errors import CheckpointError

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step_(\d{8})$")
META = "meta.json"
MODEL = "model.pt"
TRAIN_STATE = "train_state.pt"
CONFIG = "config.yaml"
# 2: meta.json lists every file's size and sha256; RNG states are tensors and plain types.
FORMAT = 2
_UNSAFE_GLOBAL = re.compile(r"GLOBAL (\S+)")


def checkpoint_path(root: Path, step: int) -> Path:
    """The directory name of the checkpoint taken after ``step`` optimizer steps."""
    return Path(root) / f"step_{step:08d}"


def rank_file(rank: int) -> str:
    return f"rank_{rank:05d}.pt"


def list_checkpoints(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """Checkpoints under ``root`` that have a ``meta.json``, as ``(step, path)``, oldest first.

    Cheap (nothing is read): for naming checkpoints and pruning; :func:`latest_checkpoint` is the
    one that verifies before choosing."""
    return [(step, path) for step, path in _step_dirs(root) if (path / META).is_file()]


def _step_dirs(root: str | os.PathLike) -> list[tuple[int, Path]]:
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found)


def newest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The newest checkpoint with a ``meta.json`` under ``root`` (not verified), or None."""
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The newest intact checkpoint under ``root`` (see :func:`verify_checkpoint`), or None when
    ``root`` holds no ``step_*`` directory at all.

    Each newer damaged one is skipped with a warning naming the file and what is wrong with it;
    when none is intact, :class:`~lfvila.errors.CheckpointError` lists every checkpoint's problems
    (starting afresh over them would mix two runs)."""
    found = _step_dirs(root)
    skipped: list[str] = []
    for _, path in reversed(found):
        problems = verify_checkpoint(path)
        if not problems:
            return path
        skipped.append(f"{path}: " + "; ".join(problems))
        log.warning("skipping damaged checkpoint %s (%s); falling back to an older one", path, "; ".join(problems))
    if not found:
        return None
    raise CheckpointError(f"no intact checkpoint in {root}: " + " | ".join(skipped)
                          + ". Move the damaged ones away to start afresh, or name a good one with --resume PATH")


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """``path`` itself when it is a checkpoint (verified); else the newest intact one under
    ``path/checkpoints`` (a run directory) or under ``path`` (a checkpoints directory).
    ``InputError`` (a ``FileNotFoundError``) saying what was looked for when there is none,
    :class:`~lfvila.errors.CheckpointError` naming the damaged files when none is intact."""
    from lfvila.errors import InputError

    path = Path(path)
    if (path / META).is_file() or _STEP_DIR.match(path.name):
        require_intact(path)
        return path
    for root in (path / "checkpoints", path):
        found = latest_checkpoint(root)
        if found is not None:
            return found
    if not path.exists():
        raise InputError(f"{path} does not exist")
    raise InputError(f"{path} is not a checkpoint (no {META}) and holds no complete checkpoint "
                            f"(step_NNNNNNNN/{META}) in itself or in {path / 'checkpoints'}")


def capture_rng_state() -> dict[str, Any]:
    """Every RNG the training step may draw from: Python, NumPy, torch CPU and CUDA.

    As tensors and plain Python values only, so the state loads with ``weights_only=True``."""
    version, internal, gauss = random.getstate()
    name, key, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {"bit_generator": str(name), "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    np.random.set_state((npy["bit_generator"], npy["key"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    root: str | os.PathLike,
    step: int,
    *,
    rank: int,
    world_size: int,
    shared: Callable[[], dict[str, Any]],
    per_rank: dict[str, Any],
    config: dict[str, Any],
    keep_last: int,
    barrier: Callable[[], None],
) -> Path:
    """Write the checkpoint of ``step`` atomically from every rank; keep the newest ``keep_last``.

    ``shared()`` is called on rank 0 only and returns ``{"model": state_dict, "train_state":
    {...}}``; ``per_rank`` is this rank's RNG and loader state. Every rank must call this.
    """
    import yaml

    root = Path(root)
    final = checkpoint_path(root, step)
    tmp = root / f".{final.name}.tmp"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():  # left by a run killed while saving
            shutil.rmtree(tmp)
        tmp.mkdir()
    barrier()
    _save_synced(per_rank, tmp / rank_file(rank))
    if rank == 0:
        state = shared()
        _save_synced(state["model"], tmp / MODEL)
        _save_synced(state["train_state"], tmp / TRAIN_STATE)
        with open(tmp / CONFIG, "w", encoding="utf-8") as f:
            yaml.safe_dump(config, f, sort_keys=False)
            f.flush()
            os.fsync(f.fileno())
    barrier()  # every rank's file is in place and on disk
    if rank == 0:
        names = [MODEL, TRAIN_STATE, CONFIG] + [rank_file(r) for r in range(world_size)]
        meta = {"format": FORMAT, "step": step, "world_size": world_size, "lfvila_version": lfvila.__version__,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "files": {name: _describe(tmp / name) for name in names}}
        with open(tmp / META, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        if final.exists():  # the same step saved again (e.g. the final save after a periodic one)
            _remove(final)
        # The entries of the files reach the disk before the directory gets its final name, then the rename.
        # (The directory's name is fixed, not atomic.temporary_path's: every rank must know it unasked.)
        replace_durably(tmp, final)
        _prune(root, keep_last)
    barrier()
    return final


def _save_synced(obj: Any, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _describe(path: Path) -> dict[str, Any]:
    return {"size": path.stat().st_size, "sha256": _sha256(path)}


def _remove(path: Path) -> None:
    """Delete a checkpoint directory so that it stops looking complete first."""
    doomed = path.with_name(f".{path.name}.deleting")
    if doomed.exists():
        shutil.rmtree(doomed)
    os.rename(path, doomed)
    shutil.rmtree(doomed)


def _prune(root: Path, keep_last: int) -> None:
    for _, path in list_checkpoints(root)[:-keep_last]:
        _remove(path)
        log.debug("removed old checkpoint %s", path)


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """``meta.json`` of checkpoint ``path``; :class:`~lfvila.errors.CheckpointError` naming the file
    when it is missing, empty or not a JSON object."""
    file = Path(path) / META
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointError(f"{file} is missing (not a complete checkpoint)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{file} cannot be read: {exc}") from None
    if not text.strip():
        raise CheckpointError(f"{file} is empty ({len(text.encode())} bytes)")
    try:
        meta = json.loads(text)
    except ValueError as exc:
        raise CheckpointError(f"{file} is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{file} is not a JSON object")
    return meta


def verify_checkpoint(path: str | os.PathLike) -> list[str]:
    """What is wrong with checkpoint ``path``, one entry per problem naming the file (empty: intact).

    Intact means: ``meta.json`` is a format-2 record whose step matches the directory name and which
    lists model, train state, config and one rank file per rank, and every listed file exists with
    the recorded size and sha256 (sizes are checked before anything is hashed)."""
    path = Path(path)
    try:
        meta = read_meta(path)
    except CheckpointError as exc:
        return [str(exc)]
    where = path / META
    if meta.get("format") != FORMAT or not isinstance(meta.get("files"), dict):
        return [f"{where} lists no file sizes and checksums (format {meta.get('format')!r}, expected {FORMAT}: "
                "written by an older lfvila or not by lfvila)"]
    step, world_size, files = meta.get("step"), meta.get("world_size"), meta["files"]
    match = _STEP_DIR.match(path.name)
    if not _is_int(step) or (match and int(match.group(1)) != step):
        return [f"{where} says step {step!r}, the directory name says {path.name}"]
    if not _is_int(world_size) or world_size < 1:
        return [f"{where} has no valid world_size ({world_size!r})"]
    problems = []
    expected = [MODEL, TRAIN_STATE, CONFIG] + [rank_file(r) for r in range(world_size)]
    problems += [f"{where} does not list {name}" for name in expected if name not in files]
    sized = []
    for name, record in sorted(files.items()):
        file = path / name
        if not isinstance(name, str) or Path(name).name != name or name in (".", ".."):
            problems.append(f"{where} lists {name!r}, which is not a file name in the checkpoint")
        elif not isinstance(record, dict) or not _is_int(record.get("size")) \
                or not isinstance(record.get("sha256"), str):
            problems.append(f"{where}: the entry of {name} has no integer size and sha256 string")
        elif not file.exists():
            problems.append(f"{file} is missing")
        elif not file.is_file():
            problems.append(f"{file} is not a regular file")
        elif (size := file.stat().st_size) != record["size"]:
            problems.append(f"{file} is {size} bytes, {META} recorded {record['size']}"
                            + (" (truncated?)" if size < record["size"] else ""))
        else:
            sized.append((file, record["sha256"]))
    if problems:
        return problems
    for file, expected_sha in sized:
        actual = _sha256(file)
        if actual != expected_sha:
            problems.append(f"{file} has sha256 {actual[:12]}..., {META} recorded {expected_sha[:12]}... (corrupt)")
    return problems


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not a step or a size


def require_intact(path: str | os.PathLike) -> None:
    """:class:`~lfvila.errors.CheckpointError` listing every problem of checkpoint ``path``, if any."""
    problems = verify_checkpoint(path)
    if problems:
        raise CheckpointError(f"checkpoint {path} is damaged: " + "; ".join(problems))


def load_file(path: str | os.PathLike) -> Any:
    """One ``.pt`` file, read with ``weights_only=True`` (tensors and plain Python values only).

    A file holding any other pickled object (one that could run code when unpickled) is refused
    with :class:`~lfvila.errors.CheckpointError`, as is one that is not a readable torch file; both
    name the file."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _UNSAFE_GLOBAL.search(str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path} holds a pickled object that is not a tensor or plain Python value{what}: refused. lfvila "
            "loads checkpoints with weights_only=True and never runs code from one; this file was not "
            "written by this lfvila version or was tampered with") from None
    except Exception as exc:  # a truncated zip (RuntimeError), an empty file (EOFError), ...
        raise CheckpointError(f"{path} is not a readable torch file: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else 'no data'}") from None


def load_checkpoint(path: str | os.PathLike, *, rank: int, world_size: int, verify: bool = True) -> dict[str, Any]:
    """Read a checkpoint for ``rank``: ``meta``, ``model``, ``train_state``, ``rank_state``.

    ``verify``: check every file against ``meta.json`` first (see :func:`verify_checkpoint`; a
    caller that has done so, e.g. rank 0 for every rank, passes False). Every ``.pt`` is read with
    :func:`load_file`. The loader position and RNG states are per rank, so the world size must
    match the one that wrote the checkpoint; a different world size is an error (start a new run
    with ``trainer.init_from`` to continue from the weights only).
    """
    path = Path(path)
    if not (path / META).is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint (no {META})")
    if verify:
        require_intact(path)
    meta = read_meta(path)
    if meta.get("world_size") != world_size:
        raise CheckpointError(f"{path} was written by {meta.get('world_size')} ranks, this run has {world_size}: "
                              "exact resume needs the same world size (use trainer.init_from for weights only)")
    return {
        "meta": meta,
        "model": load_file(path / MODEL),
        "train_state": load_file(path / TRAIN_STATE),
        "rank_state": load_file(path / rank_file(rank)),
    }


def load_model_weights(spec: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The model state_dict from a checkpoint directory (verified), its ``model.pt``, or a run
    directory (``trainer.out_dir``) or its ``checkpoints/`` folder, meaning the newest intact
    checkpoint there. Read with ``weights_only=True`` (:func:`load_file`)."""
    path = Path(spec)
    if path.is_dir() and not (path / META).is_file() and not _STEP_DIR.match(path.name):
        newest = latest_checkpoint(path / "checkpoints") or latest_checkpoint(path)
        if newest is None:
            raise ValueError(f"init_from {spec!r}: no complete checkpoint in {path}")
        path = newest
    elif path.is_dir():
        require_intact(path)
    if path.is_dir():
        path = path / MODEL
    if not path.is_file():
        raise ValueError(f"init_from {spec!r}: {path} does not exist")
    return load_file(path)
