"""The shuffle test (`lfvila eval --shuffle-test`, lfvila.eval.shuffle): the clip orders, the shuffled
batches, hand-made models whose alignment must (content) or must not (position) drop, and the command's
outputs on the demo corpus, in one process and on two gloo ranks."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from lfvila.cli import main
from lfvila.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from lfvila.eval.shuffle import (clip_order, followed_clips, shuffle_batch_clips, shuffle_test_path,
                                 shuffle_test_record)
from lfvila.trainer.evaluate import evaluate
from lfvila.trainer.parallel import DistContext
from test_distributed import free_port

KEYS = [f"video{i:03d}" for i in range(200)]


def test_clip_order_is_a_deterministic_derangement_of_the_seed():
    for n in (2, 3, 4, 7):
        orders = [clip_order(key, n, seed=0) for key in KEYS]
        assert orders == [clip_order(key, n, seed=0) for key in KEYS]  # the same for the same seed
        for order in orders:
            assert sorted(order) == list(range(n))  # a permutation ...
            assert all(order[j] != j for j in range(n))  # ... moving every clip (so never the identity)
        if n >= 3:  # several derangements exist: the seed and the key choose among them
            assert orders != [clip_order(key, n, seed=1) for key in KEYS]
            assert len({tuple(o) for o in orders}) > 1
    assert clip_order("video000", 2, seed=5) == [1, 0]
    assert clip_order("video000", 1, seed=0) == [0] and clip_order("video000", 0, seed=0) == []


def _batch(n_frames_per_clip: int, n_clips: int, real: list[int], as_list: bool) -> dict:
    """Frames whose pixels say which clip and which frame in it they are: value 10 * clip + frame."""
    b = len(real)
    values = torch.tensor([10 * c + f for c in range(n_clips) for f in range(n_frames_per_clip)], dtype=torch.uint8)
    video = values.view(1, 1, -1, 1, 1).expand(b, 3, -1, 2, 3).clone()  # (B, 3, T, 2, 3)
    sentence_mask = torch.tensor([[j < r for j in range(n_clips)] for r in real])
    return {"video": list(video) if as_list else video, "keys": KEYS[:b], "sentence_mask": sentence_mask,
            "text_ids": torch.zeros(b, n_clips, 4, dtype=torch.long)}


@pytest.mark.parametrize("as_list", [False, True])
def test_shuffled_batch_moves_whole_clips_and_only_the_real_ones(as_list):
    k, m = 3, 4
    batch = _batch(k, m, real=[4, 2, 1], as_list=as_list)
    original = [v.clone() for v in batch["video"]]
    out = shuffle_batch_clips(batch, seed=7, frames_per_clip=k, whole_video=False)
    assert out["text_ids"] is batch["text_ids"] and out["sentence_mask"] is batch["sentence_mask"]
    assert all(torch.equal(v, o) for v, o in zip(batch["video"], original))  # the input batch is untouched
    assert isinstance(out["video"], list) == as_list
    orders = out["clip_order"].tolist()
    assert orders[0] == clip_order(KEYS[0], 4, seed=7)
    assert orders[1][:2] == [1, 0] and orders[1][2:] == [2, 3]  # padded slots stay
    assert orders[2] == [0, 1, 2, 3]  # one real clip: nothing to shuffle
    for sample, order in zip(out["video"], orders):
        frames = sample[0, :, 0, 0].tolist()  # (T,) pixel values of channel 0
        assert frames == [10 * c + f for c in order for f in range(k)]  # clip order[j] in slot j, frames kept
    whole = shuffle_batch_clips(batch, seed=7, frames_per_clip=k, whole_video=True)
    assert all(sorted(o) == list(range(m)) and all(o[j] != j for j in range(m)) for o in whole["clip_order"].tolist())


def test_followed_clips_puts_the_features_back():
    clip = torch.randn(3, 4, 5)
    order = torch.tensor([clip_order(key, 4, seed=0) for key in KEYS[:3]])
    shuffled = torch.stack([clip[n, order[n]] for n in range(3)])  # slot j holds clip order[n, j]
    assert torch.equal(followed_clips(shuffled, order), clip)


class _HandMade(torch.nn.Module):
    """Features from the pixels themselves: each clip's content id is its frames' value / 10 (see _batch)
    and a sentence's is its first token id. ``by_position``: clips and sentences map to their slot
    instead, whatever they show (a model that learnt only the order)."""

    def __init__(self, frames_per_clip: int, dim: int, by_position: bool = False):
        super().__init__()
        self.k, self.dim, self.by_position = frames_per_clip, dim, by_position

    def encode_video(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        b, _, t = video.shape[:3]
        red = video[:, 0, :, 0, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]  # (B, T) back to [0, 1]
        content = torch.round(red * 255 / 10).long().view(b, t // self.k, self.k)[:, :, 0]  # (B, M)
        if self.by_position:
            content = torch.arange(t // self.k).expand(b, -1)
        clip = F.one_hot(content, self.dim).float()  # (B, M, D)
        return {"clip": clip, "global": F.normalize(clip.mean(1), dim=-1)}

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor, sentence_mask: torch.Tensor) -> dict:
        content = ids[:, :, 0]  # (B, M)
        if self.by_position:
            content = torch.arange(ids.shape[1]).expand(ids.shape[0], -1)
        sentence = F.one_hot(content, self.dim).float()
        return {"sentence": sentence, "paragraph": F.normalize(sentence.mean(1), dim=-1)}


class _Task:
    def __init__(self, model):
        self.model = model

    def feature_losses(self, *args, **kwargs):  # no held-out losses
        return {}


def _content_batches(n_samples: int, k: int = 2, m: int = 4) -> list[dict]:
    """Sample s shows clips with contents s*m + 0..m-1 (frames 10 * content), described in order."""
    batches = []
    for start in range(0, n_samples, 3):
        ids = range(start, min(start + 3, n_samples))
        video = torch.stack([torch.tensor([10 * (s * m + c) for c in range(m) for _ in range(k)], dtype=torch.uint8)
                             .view(1, -1, 1, 1).expand(3, -1, 2, 2) for s in ids])  # (B, 3, T, 2, 2)
        text_ids = torch.tensor([[[s * m + c, 1] for c in range(m)] for s in ids])  # (B, M, 2)
        batches.append({"video": video, "text_ids": text_ids, "text_mask": torch.ones_like(text_ids),
                        "sentence_mask": torch.ones(len(ids), m, dtype=torch.bool),
                        "keys": [KEYS[s] for s in ids]})
    return batches


@pytest.mark.parametrize("by_position", [False, True])
def test_alignment_drops_for_a_content_model_and_not_for_a_position_model(by_position):
    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    task = _Task(_HandMade(frames_per_clip=2, dim=25, by_position=by_position))
    batches = _content_batches(6)  # contents 0..23 (pixel values up to 230)
    in_order = evaluate(task, batches, ctx)
    again = evaluate(task, batches, ctx)
    shuffled = evaluate(task, [shuffle_batch_clips(b, 0, 2, whole_video=False) for b in batches], ctx)
    assert in_order == again and "sentence_to_clip_acc_followed" not in in_order  # the in-order pass is as before
    record = shuffle_test_record(in_order, shuffled, 0, {})
    drop = record["metrics"]["drop"]
    assert in_order["sentence_to_clip_acc"] == in_order["clip_to_sentence_acc"] == 100.0
    if by_position:  # it never looked at the clips: nothing to lose
        assert drop["sentence_to_clip_acc"] == drop["clip_to_sentence_acc"] == 0.0
    else:  # every clip left its slot (a derangement), the sentence follows its content: 100 -> 0
        assert shuffled["sentence_to_clip_acc"] == shuffled["clip_to_sentence_acc"] == 0.0
        assert drop["sentence_to_clip_acc"] == drop["clip_to_sentence_acc"] == 100.0
        # scored against its own moved clip, every sentence still finds it
        assert shuffled["sentence_to_clip_acc_followed"] == 100.0 and drop["sentence_to_clip_acc_followed"] == 0.0
    # the global features are order-free means: retrieval cannot move
    assert drop["p2v_r1"] == drop["v2p_r1"] == drop["p2v_medr"] == 0.0
    assert in_order["p2v_r1"] == (0.0 if by_position else 100.0)  # every video alike: ties count against


def _eval_args(checkpoint: Path, shards: list[str], out: Path, *extra: str) -> list[str]:
    # batch 4, no loader worker: 2 ranks get 1 and 1 val shard with unequal batch counts
    return ["eval", "--checkpoint", str(checkpoint), "--data", "::".join(shards), "--out", str(out),
            "--set", "data.batch_size=4", "--set", "data.num_workers=0", *extra]


def _rank(rank: int, world: int, port: int, args: list[str]) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    assert main(args) == 0


def test_eval_shuffle_test_writes_both_passes_and_the_drop(demo_stage1_checkpoint, demo_corpus, tmp_path, capsys):
    shards = demo_corpus["val"]
    plain, shuffled = tmp_path / "plain.json", tmp_path / "shuffled" / "eval.json"
    assert main(_eval_args(demo_stage1_checkpoint, shards, plain)) == 0
    assert not shuffle_test_path(plain).exists()
    capsys.readouterr()
    assert main(_eval_args(demo_stage1_checkpoint, shards, shuffled, "--shuffle-test", "--shuffle-seed", "3")) == 0
    printed = capsys.readouterr().out
    # the in-order figures and their file are those of a plain evaluation
    assert json.loads(shuffled.read_text()) == json.loads(plain.read_text())
    record = json.loads((tmp_path / "shuffled" / "eval.shuffle_test.json").read_text())
    assert record["shuffle_seed"] == 3 and "derangement" in record["shuffled"]
    assert record["checkpoint"] == str(demo_stage1_checkpoint) and record["world_size"] == 1
    assert record["task"] == "pretrain" and record["val_shards"] == "::".join(shards)
    in_order, after, drop = (record["metrics"][k] for k in ("in_order", "shuffled", "drop"))
    assert in_order == {k: json.loads(plain.read_text())[k] for k in in_order}
    assert after["n_samples"] == in_order["n_samples"] == 20
    for name in ("p2v_r1", "v2p_medr", "sentence_to_clip_acc", "clip_to_sentence_acc", "val_global", "val_mtc"):
        assert drop[name] == pytest.approx(in_order[name] - after[name])
    assert drop["sentence_to_clip_acc_followed"] == pytest.approx(
        in_order["sentence_to_clip_acc"] - after["sentence_to_clip_acc_followed"])
    assert not any(k.endswith("_chance") for k in drop) and "n_samples" not in drop and "step" not in drop
    assert after["val_global"] != in_order["val_global"]  # the video features did change
    assert "shuffle test (clips shuffled in time, seed 3)" in printed and "sentence_to_clip_acc_followed" in printed
    # the same seed: the same figures
    again = tmp_path / "again.json"
    assert main(_eval_args(demo_stage1_checkpoint, shards, again, "--shuffle-test", "--shuffle-seed", "3")) == 0
    assert json.loads(shuffle_test_path(again).read_text())["metrics"] == record["metrics"]


@pytest.mark.slow  # two gloo processes, ~16 s: make test stays under 15 minutes
def test_shuffle_test_on_two_gloo_ranks_equals_one_process(demo_stage1_checkpoint, demo_corpus, tmp_path):
    shards = demo_corpus["val"]  # 2 shards of 10: one per rank
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    assert main(_eval_args(demo_stage1_checkpoint, shards, one, "--shuffle-test")) == 0
    mp.spawn(_rank, args=(2, free_port(), _eval_args(demo_stage1_checkpoint, shards, two, "--shuffle-test")),
             nprocs=2, join=True)
    r1, r2 = (json.loads(shuffle_test_path(p).read_text()) for p in (one, two))
    assert (r1["world_size"], r2["world_size"]) == (1, 2)
    for part in ("in_order", "shuffled", "drop"):
        assert r2["metrics"][part] == pytest.approx(r1["metrics"][part], abs=1e-4), part


def test_retrieval_shuffle_test_writes_shuffle_test_json(demo_stage1_checkpoint, demo_corpus, tmp_path, capsys):
    out = tmp_path / "ret"
    args = ["eval", "--task", "retrieval", "--checkpoint", str(demo_stage1_checkpoint), "--data",
            "::".join(demo_corpus["val"]), "--out", str(out), "--set", "data.num_workers=0", "--shuffle-test"]
    assert main(args) == 0
    record = json.loads((out / "shuffle_test.json").read_text())
    assert record["task"] == "retrieval" and record["shuffle_seed"] == 0
    in_order = json.loads((out / "retrieval.json").read_text())["metrics"]
    assert {k: record["metrics"]["in_order"][k] for k in in_order} == pytest.approx(in_order)
    assert record["metrics"]["drop"]["t2v_r1"] == pytest.approx(
        in_order["t2v_r1"] - record["metrics"]["shuffled"]["t2v_r1"])
    assert "shuffle test" in capsys.readouterr().out
