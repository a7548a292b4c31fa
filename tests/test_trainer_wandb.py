"""trainer.wandb: the trainer's scalars also go to Weights & Biases (offline mode, real wandb)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lfvila.testing import write_synthetic_shards

pytest.importorskip("wandb")
REPO = Path(__file__).resolve().parents[1]


def _train(shards, out: Path, *extra: str) -> subprocess.CompletedProcess:
    args = ["train", "--config", str(REPO / "train" / "tiny.yaml"),
            "--set", f"data.train_shards={json.dumps(shards)}", "--set", "data.batch_size=4",
            "--set", "data.num_workers=0", "--set", f"trainer.out_dir={out}", "--set", "trainer.log_every=1",
            "--set", "trainer.eval_every=0", "--set", "trainer.wandb={project: lfvila-test, mode: offline}", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_SILENT": "true"}
    return subprocess.run([sys.executable, "-m", "lfvila.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_offline_wandb_run_gets_the_scalars_and_a_resume_continues_it(tmp_path):
    shards = write_synthetic_shards(tmp_path / "shards", n_samples=8, samples_per_shard=4, split="train", seed=0)
    out = tmp_path / "run"
    first = _train(shards, out, "--set", "trainer.max_steps=3", "--set", "trainer.ckpt_every=3")
    assert first.returncode == 0, first.stderr[-3000:]
    run_id = (out / "wandb_run_id").read_text().strip()
    records = sorted(out.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(records) == 1
    data = records[0].read_bytes()
    # W&B's run file is a log of protobuf records; metric names are stored as they are
    assert data.count(b"train/loss") >= 3 and b"train/lr" in data and b"perf/samples_per_s" in data
    losses = [json.loads(line)["loss"] for line in (out / "losses.jsonl").read_text().splitlines()]
    assert len(losses) == 3
    assert json.dumps(losses[-1]).encode() in data  # the value logged, as JSON
    resumed = _train(shards, out, "--set", "trainer.max_steps=5", "--set", "trainer.ckpt_every=5", "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (out / "wandb_run_id").read_text().strip() == run_id  # the same W&B run, continued
    assert len(sorted(out.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb"))) >= 1


def test_wandb_mode_is_checked(tmp_path):
    from lfvila.config import load_config
    from lfvila.errors import ConfigError
    from lfvila.trainer.config import TrainConfig

    with pytest.raises((ConfigError, ValueError), match="online, offline or disabled"):
        load_config(TrainConfig, str(REPO / "train" / "tiny.yaml"), ["trainer.wandb={project: x, mode: cloud}"])
