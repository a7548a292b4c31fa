"""LocVTP's coarse loss: soft targets from in-modality similarities, checked against the definition by loops."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lfvila.losses import SoftTargetContrastiveLoss
from lfvila.losses.soft_contrastive import soft_target_contrastive


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def log_softmax(row: list[float]) -> list[float]:
    top = max(row)
    log_z = top + math.log(sum(math.exp(x - top) for x in row))
    return [x - log_z for x in row]


def by_loops(clip: list[list[float]], sentence: list[list[float]], t: float, t_target: float,
             reference_targets: bool) -> float:
    """The definition, one pair at a time (rows: sentences, columns: clips, as released)."""
    n = len(clip)
    logits = [[dot(sentence[i], clip[j]) / t for j in range(n)] for i in range(n)]
    mean_sim = [[(dot(clip[i], clip[j]) + dot(sentence[i], sentence[j])) / 2 for j in range(n)] for i in range(n)]
    targets = []
    for i in range(n):
        z = sum(math.exp(mean_sim[i][k] / t_target) for k in range(n))
        targets.append([math.exp(mean_sim[i][j] / t_target) / z for j in range(n)])
    total = 0.0
    for i in range(n):
        sentence_row = log_softmax(logits[i])
        clip_row = log_softmax([logits[j][i] for j in range(n)])  # clip i against every sentence
        clip_target = [targets[j][i] for j in range(n)] if reference_targets else targets[i]
        sentence_loss = -sum(targets[i][j] * sentence_row[j] for j in range(n))
        clip_loss = -sum(clip_target[j] * clip_row[j] for j in range(n))
        total += (sentence_loss + clip_loss) / 2
    return total / n


@pytest.mark.parametrize("reference_targets", [False, True])
def test_matches_the_definition_on_hand_made_features(reference_targets):
    clip = F.normalize(torch.tensor([[1.0, 0.0, 0.2], [0.6, 0.8, 0.0], [0.0, 0.3, 1.0], [0.5, 0.5, 0.5]]), dim=-1)
    sentence = F.normalize(torch.tensor([[0.9, 0.1, 0.0], [0.5, 1.0, 0.1], [0.2, 0.0, 1.0], [0.1, 0.9, 0.4]]), dim=-1)
    got = soft_target_contrastive(clip, sentence, 0.1, 0.2, reference_targets)
    assert got.item() == pytest.approx(by_loops(clip.tolist(), sentence.tolist(), 0.1, 0.2, reference_targets),
                                       rel=1e-5)


def test_released_settings_on_unnormalised_features():
    # LocVTP's runs: temperature 1 and target temperature 1 (softmax(... * 1)), LayerNorm'd features
    gen = torch.Generator().manual_seed(0)
    clip, sentence = torch.randn(5, 8, generator=gen), torch.randn(5, 8, generator=gen)
    got = soft_target_contrastive(clip, sentence, 1.0, 1.0, reference_targets=True)
    assert got.item() == pytest.approx(by_loops(clip.tolist(), sentence.tolist(), 1.0, 1.0, True), rel=1e-5)


def test_only_real_pairs_take_part():
    gen = torch.Generator().manual_seed(1)
    clip = F.normalize(torch.randn(2, 3, 4, generator=gen), dim=-1)
    sentence = F.normalize(torch.randn(2, 3, 4, generator=gen), dim=-1)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    loss_fn = SoftTargetContrastiveLoss(0.05, 0.05, gather=False)
    got = loss_fn(clip, sentence, mask)
    real = clip[mask].tolist(), sentence[mask].tolist()
    assert got.item() == pytest.approx(by_loops(*real, 0.05, 0.05, False), rel=1e-5)
    noisy_clip, noisy_sentence = clip.clone(), sentence.clone()
    noisy_clip[~mask] = 5.0
    noisy_sentence[~mask] = -3.0
    assert loss_fn(noisy_clip, noisy_sentence, mask).item() == pytest.approx(got.item(), rel=1e-6)


def test_matched_pairs_score_lower_than_shuffled_and_targets_carry_gradient():
    gen = torch.Generator().manual_seed(2)
    feats = F.normalize(torch.randn(6, 16, generator=gen), dim=-1)
    aligned = soft_target_contrastive(feats, feats.clone(), 0.05, 0.05)
    shuffled = soft_target_contrastive(feats, feats[torch.roll(torch.arange(6), 1)], 0.05, 0.05)
    assert aligned.item() < 0.1 < 5.0 < shuffled.item()
    # as released, the targets are built from the features without detaching: with temperature held
    # fixed, the gradient differs from the one with detached targets
    clip = feats.clone().requires_grad_()
    sentence = F.normalize(torch.randn(6, 16, generator=gen), dim=-1)
    soft_target_contrastive(clip, sentence, 0.05, 0.05).backward()
    with_targets = clip.grad.clone()
    clip.grad = None
    logits = sentence @ clip.T / 0.05
    targets = F.softmax(((clip @ clip.T + sentence @ sentence.T) / 2 / 0.05).detach(), dim=-1)
    detached = (-(targets * F.log_softmax(logits, -1)).sum(-1) - (targets * F.log_softmax(logits.T, -1)).sum(-1)) / 2
    detached.mean().backward()
    assert not torch.allclose(with_targets, clip.grad)


def test_bad_temperatures_are_refused():
    with pytest.raises(ValueError, match="target_temperature"):
        SoftTargetContrastiveLoss(0.05, 0.0)
