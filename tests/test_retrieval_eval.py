"""`lfvila eval --task retrieval`: whole-test-set retrieval on the demo corpus, one process and two
gloo processes (torchrun-style env), with outputs anyone can recompute the metrics from."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch.multiprocessing as mp

from lfvila.cli import main
from lfvila.eval.retrieval_metrics import retrieval_metrics
from test_distributed import free_port


def _eval_args(checkpoint: Path, shards: list[str], out: Path) -> list[str]:
    # batch 4 and one loader worker: with 2 ranks the shards split 2 / 1, so batch counts differ
    return ["eval", "--task", "retrieval", "--checkpoint", str(checkpoint), "--data", "::".join(shards),
            "--out", str(out), "--set", "data.batch_size=4", "--set", "data.num_workers=0"]


def _rank(rank: int, world: int, port: int, args: list[str]) -> None:
    import torch

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    assert main(args) == 0


def _read(out: Path) -> tuple[dict, np.ndarray, list[str]]:
    return (json.loads((out / "retrieval.json").read_text()), np.load(out / "similarity.npy"),
            json.loads((out / "keys.json").read_text()))


@pytest.fixture(scope="module")
def test_shards(demo_corpus) -> list[str]:
    # the 20 val videos and 10 train ones; the first val shard twice: each video must count once
    return demo_corpus["val"] + demo_corpus["train"][:1] + demo_corpus["val"][:1]


def test_one_process_writes_metrics_similarity_and_keys(demo_stage1_checkpoint, test_shards, tmp_path, capsys):
    out = tmp_path / "one"
    assert main(_eval_args(demo_stage1_checkpoint, test_shards, out)) == 0
    printed = capsys.readouterr().out
    record, sim, keys = _read(out)
    assert record["n_videos"] == len(keys) == 30 == len(set(keys)) and keys == sorted(keys)
    assert sim.shape == (30, 30) and sim.dtype == np.float32
    assert record["checkpoint"] == str(demo_stage1_checkpoint) and record["data"] == "::".join(test_shards)
    # the metrics are those of the written matrix, so anyone can recompute them
    assert record["metrics"] == pytest.approx(retrieval_metrics(sim))
    for name in ("t2v_r1", "t2v_r5", "t2v_r10", "t2v_r50", "t2v_medr", "t2v_meanr", "v2t_r1", "v2t_meanr"):
        assert name in record["metrics"] and name in printed
    assert np.all(np.abs(sim) <= 1 + 1e-5)  # cosine similarities of L2-normalised features
    assert str(out / "retrieval.json") in printed


def test_two_gloo_ranks_equal_one_process(demo_stage1_checkpoint, test_shards, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(_eval_args(demo_stage1_checkpoint, test_shards, one)) == 0
    mp.spawn(_rank, args=(2, free_port(), _eval_args(demo_stage1_checkpoint, test_shards, two)), nprocs=2,
             join=True)
    (r1, s1, k1), (r2, s2, k2) = _read(one), _read(two)
    assert (r1["world_size"], r2["world_size"]) == (1, 2)
    assert k1 == k2 and r1["n_videos"] == r2["n_videos"] == 30
    np.testing.assert_allclose(s2, s1, atol=1e-5)
    assert r2["metrics"] == pytest.approx(r1["metrics"], abs=1e-6)


def test_max_batches_is_refused_for_the_whole_set_metrics(demo_stage1_checkpoint, test_shards, tmp_path, capsys):
    assert main(_eval_args(demo_stage1_checkpoint, test_shards, tmp_path) + ["--max-batches", "1"]) == 2
    assert "whole test set" in capsys.readouterr().err
