"""Evaluation over two real gloo processes holding unequal val data equals one process.

Ranks with different batch counts used to fall out of step inside feature collection (a
collective per batch: gloo "Received data size doesn't match expected size", a hang on NCCL).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lfvila.testing import write_synthetic_shards
from test_distributed import free_port

REPO = Path(__file__).resolve().parents[1]
BATCH = 4  # rank 0 of the first case gets 1 batch (3 samples), rank 1 gets 5 (19 samples)


def _evaluate_cases(cases: dict[str, list[str]], rank: int, world: int) -> dict[str, dict[str, float]]:
    from lfvila.config import load_config
    from lfvila.data import build_loader
    from lfvila.trainer.config import TrainConfig
    from lfvila.trainer.evaluate import evaluate
    from lfvila.trainer.setup import build_model_and_task, seed_everything
    from lfvila.trainer.parallel import DistContext

    torch.set_num_threads(1)
    ctx = DistContext(rank=rank, world_size=world, local_rank=0, device=torch.device("cpu"))
    task = None
    out = {}
    for name, shards in cases.items():
        cfg = load_config(TrainConfig, REPO / "train" / "tiny.yaml",
                          [f"data.val_shards={json.dumps(shards)}", "data.num_workers=0", f"data.batch_size={BATCH}"])
        if task is None:
            seed_everything(cfg.trainer.seed)  # the same weights in every process
            task = build_model_and_task(cfg)
        loader = build_loader(cfg.loader_data(), "val", rank=rank, world_size=world, stage=1, epoch_mode=True)
        out[name] = evaluate(task, loader, ctx, loss_batch_size=BATCH)
    return out


def _worker(rank: int, world: int, port: int, cases: dict[str, list[str]], out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        results = _evaluate_cases(cases, rank, world)
    finally:
        dist.destroy_process_group()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))


@pytest.fixture(scope="module")
def unequal_shards(tmp_path_factory) -> dict[str, list[str]]:
    root = tmp_path_factory.mktemp("unequal_val")
    small = write_synthetic_shards(root, n_samples=3, samples_per_shard=3, split="vala", seed=1)
    large = write_synthetic_shards(root, n_samples=19, samples_per_shard=19, split="valb", seed=2)
    # Shards go to ranks in order: 3 and 19 samples; then 19 and none (one shard for two ranks).
    return {"3_and_19": small + large, "19_and_none": large}


def test_two_gloo_ranks_with_unequal_val_data_equal_one_process(unequal_shards, tmp_path, bert_dir):
    mp.spawn(_worker, args=(2, free_port(), unequal_shards, str(tmp_path)), nprocs=2, join=True)
    per_rank = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert per_rank[0] == per_rank[1]  # every rank computes the same figures
    single = _evaluate_cases(unequal_shards, rank=0, world=1)
    for name, expected_n in (("3_and_19", 22), ("19_and_none", 19)):
        two, one = per_rank[0][name], single[name]
        assert two["n_samples"] == one["n_samples"] == expected_n
        assert set(two) == set(one)
        assert {"p2v_r1", "v2p_medr", "sentence_to_clip_acc", "val_global", "val_mtc"} <= set(two)
        assert one["val_global"] > 0 and one["val_mtc"] > 0
        for metric, value in one.items():
            assert two[metric] == pytest.approx(value, rel=1e-5, abs=1e-5), (name, metric)
