"""Checkpoint atomicity, keep-last-K, per-rank state and RNG round trips (single process)."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from lfvila.trainer import checkpoint as ckpt


def _save(root, step, keep_last=2, world_size=1, rank=0):
    model = {"w": torch.full((3,), float(step))}
    return ckpt.save_checkpoint(
        root, step, rank=rank, world_size=world_size,
        shared=lambda: {"model": model, "train_state": {"step": step}},
        per_rank={"loader": {"position": step}, "rng": ckpt.capture_rng_state()},
        config={"trainer": {"max_steps": 10}}, keep_last=keep_last, barrier=lambda: None)


def test_keep_last_and_latest(tmp_path):
    for step in (2, 4, 6, 8):
        _save(tmp_path, step, keep_last=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [6, 8]
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "step_00000008"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000006", "step_00000008"]
    state = ckpt.load_checkpoint(tmp_path / "step_00000008", rank=0, world_size=1)
    assert state["model"]["w"].tolist() == [8.0, 8.0, 8.0]
    assert state["train_state"]["step"] == 8
    assert state["rank_state"]["loader"] == {"position": 8}
    assert state["meta"]["world_size"] == 1 and state["meta"]["lfvila_version"]
    assert (tmp_path / "step_00000008" / "config.yaml").read_text().startswith("trainer:")


def test_incomplete_checkpoints_are_never_picked(tmp_path):
    _save(tmp_path, 3)
    # A run killed while saving leaves a hidden temporary directory; one killed before meta.json
    # was written (impossible with the rename, but a copied tree could look like that) lacks meta.
    (tmp_path / ".step_00000005.tmp").mkdir()
    (tmp_path / ".step_00000005.tmp" / "model.pt").write_bytes(b"partial")
    (tmp_path / "step_00000009").mkdir()
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "step_00000003"
    # The next save of that step replaces the leftover temporary directory.
    _save(tmp_path, 5, keep_last=5)
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "step_00000005"
    assert not (tmp_path / ".step_00000005.tmp").exists()


def test_world_size_must_match(tmp_path):
    _save(tmp_path, 1)
    with pytest.raises(ValueError, match="world size"):
        ckpt.load_checkpoint(tmp_path / "step_00000001", rank=0, world_size=2)
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        ckpt.load_checkpoint(tmp_path / "step_00000002", rank=0, world_size=1)


def test_rng_state_round_trip():
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    state = ckpt.capture_rng_state()
    first = (random.random(), np.random.rand(), torch.rand(3).tolist())
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    ckpt.restore_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(3).tolist()) == first


def test_init_from_reads_dir_or_file(tmp_path):
    path = _save(tmp_path, 7)
    assert ckpt.load_model_weights(path)["w"].tolist() == [7.0] * 3
    assert ckpt.load_model_weights(path / "model.pt")["w"].tolist() == [7.0] * 3
    with pytest.raises(ValueError, match="does not exist"):
        ckpt.load_model_weights(tmp_path / "nope")


def test_init_from_run_dir_takes_newest(tmp_path):
    for step in (1, 2):
        _save(tmp_path / "run" / "checkpoints", step)
    assert ckpt.load_model_weights(tmp_path / "run")["w"].tolist() == [2.0] * 3
    with pytest.raises(ValueError, match="no complete checkpoint"):
        ckpt.load_model_weights(tmp_path)


def test_resumed_loss_log_keeps_one_record_per_step(tmp_path):
    from lfvila.trainer.loop import drop_loss_records_after

    log = tmp_path / "losses.jsonl"
    log.write_text("".join(f'{{"step": {s}, "loss": {s / 10}}}\n' for s in range(1, 6)) + '{"step": 6, "lo')
    drop_loss_records_after(log, 3)  # resumed from the checkpoint of step 3; 4, 5 and a torn 6 go
    assert [line for line in log.read_text().splitlines()] == [f'{{"step": {s}, "loss": {s / 10}}}' for s in (1, 2, 3)]
    drop_loss_records_after(tmp_path / "missing.jsonl", 3)  # no log yet: nothing to do
    assert not (tmp_path / "missing.jsonl").exists()
