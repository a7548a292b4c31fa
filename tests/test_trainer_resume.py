"""Exact resume under real torchrun: 2 CPU ranks (gloo), SIGKILL mid-way, --resume auto.

The resumed run must reproduce the uninterrupted run's per-step losses and final weights
bit for bit: that needs the model, optimizer, scheduler, every RNG state and the loader
position of both ranks restored exactly.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lfvila.testing import write_synthetic_shards

REPO = Path(__file__).resolve().parents[1]
MAX_STEPS = 8
CKPT_EVERY = 3


def _command(shards: list[str], out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "lfvila.cli", "train", "--config", str(REPO / "train" / "tiny.yaml"),
            "--set", f"data.train_shards={json.dumps(shards)}", "--set", "data.val_shards=''",
            "--set", "data.batch_size=2", "--set", "data.num_workers=1", "--set", "data.shuffle_buffer=8",
            "--set", f"trainer.out_dir={out}", "--set", f"trainer.max_steps={MAX_STEPS}",
            "--set", f"trainer.ckpt_every={CKPT_EVERY}", "--set", "trainer.log_every=1",
            "--set", "trainer.keep_last=5", "--set", "trainer.tensorboard=false", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _losses(out: Path) -> dict[int, list[dict]]:
    by_step: dict[int, list[dict]] = {}
    for line in (out / "losses.jsonl").read_text().splitlines():
        record = json.loads(line)
        by_step.setdefault(record["step"], []).append(record)
    return by_step


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun starts its workers in sessions of their own)."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found += children
            todo += children
    return found


def _kill_tree(pid: int) -> None:
    victims = [pid, *_descendants(pid)]
    for victim in victims:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _run(cmd: list[str], log: Path) -> None:
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=_env(), cwd=REPO, timeout=300)
    assert proc.returncode == 0, log.read_text()[-4000:]


def test_sigkill_and_resume_reproduces_losses_bitwise(tmp_path):
    shards = write_synthetic_shards(tmp_path / "shards", n_samples=16, samples_per_shard=2, seed=3)

    full = tmp_path / "full"
    _run(_command(shards, full), tmp_path / "full.log")

    killed = tmp_path / "killed"
    with open(tmp_path / "killed.log", "w") as f:
        proc = subprocess.Popen(_command(shards, killed), stdout=f, stderr=subprocess.STDOUT, env=_env(), cwd=REPO,
                                start_new_session=True)
        first_ckpt = killed / "checkpoints" / f"step_{CKPT_EVERY:08d}" / "meta.json"
        deadline = time.monotonic() + 240
        while not first_ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        _kill_tree(proc.pid)  # torchrun, both ranks and their loader workers, all with SIGKILL
        proc.wait()
    assert first_ckpt.exists(), (tmp_path / "killed.log").read_text()[-4000:]
    time.sleep(2)  # nothing may survive the kill and go on writing
    done = sorted(p.name for p in (killed / "checkpoints").glob("step_*"))
    assert f"step_{MAX_STEPS:08d}" not in done, f"the kill came after the end: {done}"
    before_kill = _losses(killed)
    assert len(before_kill) < MAX_STEPS
    _run(_command(shards, killed, "--resume", "auto"), tmp_path / "resumed.log")
    assert f"resumed from {killed / 'checkpoints' / done[-1]}" in (tmp_path / "resumed.log").read_text()

    reference, resumed = _losses(full), _losses(killed)
    assert sorted(reference) == sorted(resumed) == list(range(1, MAX_STEPS + 1))
    # one record per step: what the killed run logged after its last checkpoint was dropped
    assert all(len(records) == 1 for records in resumed.values())
    for step in resumed:
        assert resumed[step] == reference[step], f"step {step}: {resumed[step]} != {reference[step]}"
    for step, records in before_kill.items():  # including steps the resumed run did again
        assert records == reference[step], f"step {step} before the kill: {records} != {reference[step]}"
    final = f"step_{MAX_STEPS:08d}"
    a = torch.load(full / "checkpoints" / final / "model.pt", weights_only=True)
    b = torch.load(killed / "checkpoints" / final / "model.pt", weights_only=True)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
