"""The LocVTP task trains through the CLI on the colour shards, checkpoints and evaluates like stage 1."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from lfvila.config import load_config
from lfvila.testing import write_synthetic_shards
from lfvila.trainer.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]


def test_locvtp_recipes_load():
    tiny = load_config(TrainConfig, REPO / "train" / "locvtp_tiny.yaml")
    paper = load_config(TrainConfig, REPO / "train" / "locvtp.yaml")
    for cfg in (tiny, paper):
        assert cfg.task.name == "locvtp" and cfg.model.context_projection
        assert cfg.model.video.clip_features == "final"
    stage1 = load_config(TrainConfig, REPO / "train" / "tiny.yaml")
    # side by side with stage 1: same data, optimiser, schedule, steps and seed
    for section in ("data", "optim", "schedule"):
        assert getattr(tiny, section) == getattr(stage1, section), section
    assert (tiny.trainer.max_steps, tiny.trainer.seed) == (stage1.trainer.max_steps, stage1.trainer.seed)
    assert tiny.model.text == stage1.model.text and tiny.model.embed_dim == stage1.model.embed_dim
    stage1_paper = load_config(TrainConfig, REPO / "train" / "stage1_paper.yaml")
    assert paper.data == stage1_paper.data and paper.model.text == stage1_paper.model.text


def test_short_locvtp_run_learns_checkpoints_and_evaluates(tmp_path, bert_dir):
    from lfvila.cli import main

    train = write_synthetic_shards(tmp_path / "shards", n_samples=16, samples_per_shard=8, split="train", seed=0)
    val = write_synthetic_shards(tmp_path / "shards", n_samples=8, samples_per_shard=8, split="val", seed=1)
    out = tmp_path / "run"
    steps = 8
    main(["train", "--config", str(REPO / "train" / "locvtp_tiny.yaml"),
          "--set", f"data.train_shards={json.dumps(train)}", "--set", f"data.val_shards={json.dumps(val)}",
          "--set", "data.batch_size=4", "--set", f"trainer.out_dir={out}", "--set", f"trainer.max_steps={steps}",
          "--set", "trainer.log_every=4", "--set", f"trainer.ckpt_every={steps}", "--set", "schedule.warmup_steps=2",
          "--set", "trainer.tensorboard=false"])

    records = [json.loads(line) for line in (out / "losses.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    assert all({"coarse", "fine", "temporal", "loss"} <= r.keys() for r in records)
    assert all(math.isfinite(r[k]) for r in records for k in ("coarse", "fine", "temporal"))
    # the within-video losses fall fastest (measured: mean of the first 3 steps 0.41, of the last 3 0.25)
    first = sum(r["fine"] + r["temporal"] for r in records[:3])
    last = sum(r["fine"] + r["temporal"] for r in records[-3:])
    assert last < 0.9 * first, [round(r["fine"] + r["temporal"], 3) for r in records]

    final = out / "checkpoints" / f"step_{steps:08d}"
    metrics = json.loads((final / "eval.json").read_text())
    assert metrics["n_samples"] == 8
    # the figures stage 1 reports, from this task's own features, and its held-out losses
    for name in ("p2v_r1", "v2p_r5", "p2v_medr", "sentence_to_clip_acc", "clip_to_sentence_acc", "alignment_chance",
                 "val_coarse", "val_fine", "val_temporal"):
        assert name in metrics and math.isfinite(metrics[name]), name

    main(["eval", "--checkpoint", str(final), "--out", str(tmp_path / "again.json")])
    again = json.loads((tmp_path / "again.json").read_text())
    assert {k: again[k] for k in metrics} == pytest.approx(metrics)

    # whole-video retrieval of the checkpoint scores this task's own (pooled clip / sentence) features
    assert main(["eval", "--task", "retrieval", "--checkpoint", str(final), "--data", "::".join(val),
                 "--out", str(tmp_path / "retrieval")]) == 0
    retrieval = json.loads((tmp_path / "retrieval" / "retrieval.json").read_text())
    similarity = np.load(tmp_path / "retrieval" / "similarity.npy")
    assert retrieval["n_videos"] == 8 and similarity.shape == (8, 8)
    assert _pooled_similarity(final, val) == pytest.approx(similarity, abs=1e-5)


def _pooled_similarity(checkpoint: Path, val: list[str]) -> np.ndarray:
    """Paragraph x video cosine of the mean real sentence and the mean clip, computed here directly."""
    import torch

    from lfvila.data import build_loader
    from lfvila.data.device import batch_to_device
    from lfvila.models.lfvila import build_model
    from lfvila.trainer.checkpoint import MODEL, load_file
    from lfvila.trainer.evaluate import checkpoint_eval_config

    cfg = checkpoint_eval_config(checkpoint, overrides=["data.sampling=whole_video"], val_shards=val)
    model = build_model(cfg.model)
    model.load_state_dict(load_file(checkpoint / MODEL))
    model.eval()
    rows = {}
    with torch.no_grad():
        for batch in build_loader(cfg.loader_data(), "val", stage=1, epoch_mode=True):
            if not batch.get("keys"):  # a stream's tail can carry only skip counts
                continue
            batch = batch_to_device(batch, torch.device("cpu"))
            clip = model.encode_video(batch["video"])["clip"]  # (B, C, D)
            sentence = model.encode_text(batch["text_ids"], batch["text_mask"], batch["sentence_mask"])["sentence"]
            for i, key in enumerate(batch["keys"]):
                real = sentence[i][batch["sentence_mask"][i].bool()]
                rows[key] = (torch.nn.functional.normalize(real.mean(0), dim=0),
                             torch.nn.functional.normalize(clip[i].mean(0), dim=0))
    keys = sorted(rows)
    paragraph = torch.stack([rows[k][0] for k in keys])
    video = torch.stack([rows[k][1] for k in keys])
    return (paragraph @ video.T).numpy()
