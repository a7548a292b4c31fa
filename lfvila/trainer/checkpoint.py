"""Atomic, complete, resumable checkpoints.

Layout under ``OUT/checkpoints``::

    step_00000100/
        model.pt          model state_dict (rank 0)
        train_state.pt    optimizer, scheduler, grad scaler, step (rank 0)
        rank_00000.pt     this rank's RNG states and loader position (one file per rank)
        config.yaml       the resolved TrainConfig
        meta.json         step, world size, lfvila version, time; written last

Every rank writes into a hidden ``.step_00000100.tmp`` directory; after a barrier rank 0
renames it to its final name, so a directory named ``step_*`` is always complete and a
kill at any moment leaves at worst a ``.tmp`` directory that the next save replaces.
Old checkpoints are renamed to a hidden name before they are deleted, for the same reason.
A multi-node run needs ``OUT`` on a file system every node sees.
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import lfvila

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step_(\d{8})$")
META = "meta.json"
MODEL = "model.pt"
TRAIN_STATE = "train_state.pt"


def checkpoint_path(root: Path, step: int) -> Path:
    """The directory name of the checkpoint taken after ``step`` optimizer steps."""
    return Path(root) / f"step_{step:08d}"


def rank_file(rank: int) -> str:
    return f"rank_{rank:05d}.pt"


def list_checkpoints(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root`` as ``(step, path)``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and (child / META).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint under ``root``, or None."""
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """``path`` itself when it is a complete checkpoint; else the newest one under ``path/checkpoints``
    (a run directory) or under ``path`` (a checkpoints directory). ``InputError`` (a
    ``FileNotFoundError``) saying what was looked for when there is none."""
    from lfvila.errors import InputError

    path = Path(path)
    if (path / META).is_file():
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
    """Every RNG the training step may draw from: Python, NumPy, torch CPU and CUDA."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
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
    torch.save(per_rank, tmp / rank_file(rank))
    if rank == 0:
        state = shared()
        torch.save(state["model"], tmp / MODEL)
        torch.save(state["train_state"], tmp / TRAIN_STATE)
        with open(tmp / "config.yaml", "w", encoding="utf-8") as f:
            yaml.safe_dump(config, f, sort_keys=False)
    barrier()  # every rank's file is in place
    if rank == 0:
        meta = {"step": step, "world_size": world_size, "lfvila_version": lfvila.__version__,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        with open(tmp / META, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        if final.exists():  # the same step saved again (e.g. the final save after a periodic one)
            _remove(final)
        os.rename(tmp, final)
        _prune(root, keep_last)
    barrier()
    return final


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
    with open(Path(path) / META, encoding="utf-8") as f:
        return json.load(f)


def load_checkpoint(path: str | os.PathLike, *, rank: int, world_size: int) -> dict[str, Any]:
    """Read a complete checkpoint for ``rank``: ``meta``, ``model``, ``train_state``, ``rank_state``.

    The loader position and RNG states are per rank, so the world size must match the one
    that wrote the checkpoint; a different world size is an error (start a new run with
    ``trainer.init_from`` to continue from the weights only).
    """
    path = Path(path)
    if not (path / META).is_file():
        raise ValueError(f"{path} is not a complete checkpoint (no {META})")
    meta = read_meta(path)
    if meta["world_size"] != world_size:
        raise ValueError(f"{path} was written by {meta['world_size']} ranks, this run has {world_size}: "
                         "exact resume needs the same world size (use trainer.init_from for weights only)")
    return {
        "meta": meta,
        "model": torch.load(path / MODEL, map_location="cpu", weights_only=False),
        "train_state": torch.load(path / TRAIN_STATE, map_location="cpu", weights_only=False),
        "rank_state": torch.load(path / rank_file(rank), map_location="cpu", weights_only=False),
    }


def load_model_weights(spec: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The model state_dict from a checkpoint directory, its ``model.pt``, or a run directory
    (``trainer.out_dir``) or its ``checkpoints/`` folder, meaning the newest complete checkpoint there."""
    path = Path(spec)
    if path.is_dir() and not (path / META).is_file():
        newest = latest_checkpoint(path / "checkpoints") or latest_checkpoint(path)
        if newest is None:
            raise ValueError(f"init_from {spec!r}: no complete checkpoint in {path}")
        path = newest
    if path.is_dir():
        path = path / MODEL
    if not path.is_file():
        raise ValueError(f"init_from {spec!r}: {path} does not exist")
    return torch.load(path, map_location="cpu", weights_only=True)
