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


class _PairRecorder:
    """Stands in for the stage-2 model's fusion: records which sample's video each text was fused with."""

    def __init__(self):
        self.fused_with = None

    def encode_text(self, ids, mask, sentence_mask):
        b = ids.shape[0]
        return {"tokens": torch.zeros(b, 5, 2), "token_mask": torch.ones(b, 5, dtype=torch.long)}

    def fuse(self, text_tokens, text_mask, video_tokens):
        self.fused_with = video_tokens[:, 0, 0].long().tolist()
        return torch.zeros(text_tokens.shape[0], 5, 2)  # (B, 1 + M*L, C): [CLS] and the M x L tokens

    def match_logits(self, hidden):
        return torch.zeros(hidden.shape[0], 2)

    def mlm_logits(self, hidden):
        return torch.zeros(hidden.shape[0], 5)


@pytest.mark.parametrize("reference, expected", [(False, [1, 2, 2, 3]), (True, [1, 0, 2, 3])])
def test_stage2_counts_pair_as_the_task_trains(reference, expected):
    # Held-out VTM accuracy must score the pairs training used: the released pairing when the
    # task's vtm_reference_pairing switch is on (the batch-4 example of the release).
    from lfvila.trainer.evaluate import stage2_counts

    b, m, length = 4, 2, 2
    batch = {"mlm_ids": torch.zeros(b, m, length, dtype=torch.long), "text_mask": torch.ones(b, m, length),
             "sentence_mask": torch.ones(b, m, dtype=torch.bool),
             "mlm_labels": torch.full((b, m, length), -100)}
    video = {"tokens": torch.arange(b, dtype=torch.float32).reshape(b, 1, 1)}
    model = _PairRecorder()
    counts = stage2_counts(model, batch, video, reference_pairing=reference)
    assert model.fused_with == expected
    assert counts["vtm_total"] == b and counts["mlm_total"] == 0
