"""Evaluation metrics on hand-made features with known answers."""
from __future__ import annotations

import pytest
import torch

from lfvila.trainer.evaluate import (alignment_accuracy, merge_rank_features, paragraph_video_retrieval,
                                     recall_metrics, retrieval_ranks)


def test_identity_features_rank_everything_first():
    feats = torch.eye(12)
    metrics = paragraph_video_retrieval(feats, feats)
    for direction in ("p2v", "v2p"):
        assert metrics[f"{direction}_r1"] == 100.0
        assert metrics[f"{direction}_medr"] == 1.0
    assert metrics["p2v_r1_chance"] == pytest.approx(100 / 12)
    assert metrics["p2v_r10_chance"] == pytest.approx(1000 / 12)
    assert metrics["p2v_medr_chance"] == 6.5


def test_planted_ranks_are_recovered():
    # Row i scores item j by a fixed random order, then the true item is put at a chosen rank.
    gen = torch.Generator().manual_seed(0)
    n = 20
    wanted = torch.tensor([1, 2, 3, 5, 6, 10, 11, 20, 1, 4, 7, 8, 9, 12, 13, 15, 16, 18, 19, 2])
    sim = torch.empty(n, n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        order = torch.randperm(n - 1, generator=gen).tolist()
        scores = torch.linspace(1.0, 0.0, n)  # distinct, descending
        slots = list(range(n))
        true_slot = wanted[i].item() - 1
        slots.remove(true_slot)
        sim[i, i] = scores[true_slot]
        for k, j in enumerate(order):
            sim[i, others[j]] = scores[slots[k]]
    ranks = retrieval_ranks(sim)
    assert ranks.tolist() == wanted.tolist()
    metrics = recall_metrics(ranks, "p2v")
    assert metrics["p2v_r1"] == pytest.approx(100 * 2 / 20)
    assert metrics["p2v_r5"] == pytest.approx(100 * 7 / 20)
    assert metrics["p2v_r10"] == pytest.approx(100 * 12 / 20)
    assert metrics["p2v_medr"] == pytest.approx(8.5)  # the 10th and 11th sorted ranks are 8 and 9


def test_ties_count_against_the_true_item():
    sim = torch.ones(5, 5)  # a collapsed model: everything equally similar
    assert retrieval_ranks(sim).tolist() == [5] * 5
    assert recall_metrics(retrieval_ranks(sim), "x")["x_r1"] == 0.0


def test_alignment_perfect_shifted_and_masked():
    gen = torch.Generator().manual_seed(1)
    clip = torch.nn.functional.normalize(torch.randn(6, 4, 16, generator=gen), dim=-1)
    full = torch.ones(6, 4, dtype=torch.bool)
    perfect = alignment_accuracy(clip.clone(), clip, full)
    assert perfect["sentence_to_clip_acc"] == 100.0
    assert perfect["clip_to_sentence_acc"] == 100.0
    assert perfect["alignment_chance"] == 25.0
    shifted = alignment_accuracy(clip.roll(1, dims=1), clip, full)  # sentence i looks like clip i-1
    assert shifted["sentence_to_clip_acc"] == 0.0
    assert shifted["clip_to_sentence_acc"] == 0.0
    # Video 0 has 2 real sentences whose features are swapped; padded positions must not compete.
    mask = full.clone()
    mask[0, 2:] = False
    sentence = clip.clone()
    sentence[0, 0], sentence[0, 1] = clip[0, 1], clip[0, 0]
    sentence[0, 2:] = clip[0, 0]  # a padded sentence identical to a real clip must not count
    out = alignment_accuracy(sentence, clip, mask)
    assert out["sentence_to_clip_acc"] == pytest.approx(100 * 20 / 22)
    assert out["alignment_chance"] == pytest.approx(100 * (2 * 0.5 + 20 * 0.25) / 22)


def test_merge_keeps_each_key_once_in_rank_order():
    def part(keys, value):
        n = len(keys)
        return {"keys": keys, "paragraph": torch.full((n, 2), value), "video": torch.full((n, 2), value),
                "sentence": torch.full((n, 4, 2), value), "clip": torch.full((n, 4, 2), value),
                "mask": torch.ones(n, 4, dtype=torch.bool)}

    merged = merge_rank_features([part(["a", "b"], 0.0), part(["c", "a"], 1.0)])
    assert merged["keys"] == ["a", "b", "c"]
    assert merged["paragraph"][:, 0].tolist() == [0.0, 0.0, 1.0]
