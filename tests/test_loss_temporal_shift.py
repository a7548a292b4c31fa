"""LocVTP's temporal-aware loss and its context projection head, checked against loops."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lfvila.losses import TemporalShiftLoss, draw_clip_word, draw_shifts
from lfvila.losses.temporal_shift import temporal_shift_loss_from_draw
from lfvila.models.lfvila import ContextProjection, word_positions

B, M, L, D = 2, 4, 5, 4


def dot(a, b) -> float:
    return sum(x * y for x, y in zip(a, b))


def unit(v):
    n = math.sqrt(dot(v, v))
    return [x / n for x in v]


def nce_by_loops(query, positive, negatives, t: float) -> float:
    q = unit(query)
    logits = [dot(q, unit(positive)) / t] + [dot(q, unit(n)) / t for n in negatives]
    return -logits[0] + math.log(sum(math.exp(x) for x in logits))


def offset_head(direction: list[float]):
    """A hand-made context head: x + offset * direction (its value is easy to write by loops)."""
    vector = torch.tensor(direction)

    def head(x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        return x + offset.to(x.dtype)[:, None] * vector

    return head


@pytest.fixture
def features():
    """Video 0: four real clips (sentence 2 has no word); video 1: two real clips."""
    gen = torch.Generator().manual_seed(0)
    clip = F.normalize(torch.randn(B, M, D, generator=gen), dim=-1)
    word = F.normalize(torch.randn(B, M, L, D, generator=gen), dim=-1)
    lengths = torch.tensor([[5, 4, 2, 5], [4, 5, 0, 0]])
    token_valid = torch.arange(L)[None, None, :] < lengths[..., None]
    return clip, word, lengths > 0, word_positions(token_valid)


def test_context_projection_adds_sign_and_distance_embeddings():
    head = ContextProjection(3)
    x = torch.randn(3, 3)
    offset = torch.tensor([-2, 0, 3])
    sign = torch.tensor([-1.0, 0.0, 1.0])[:, None]
    distance = torch.tensor([2.0, 0.0, 3.0])[:, None]
    expected = (x + sign * head.sign.weight.T + head.sign.bias + distance * head.distance.weight.T
                + head.distance.bias)
    torch.testing.assert_close(head(x, offset), expected)
    # small at the start: the unit-norm features are not swamped by the offset embeddings
    assert head(torch.zeros(1, 3), torch.tensor([3])).norm() < 0.5


def test_shifts_land_on_real_clips_and_cover_every_offset(features):
    clip, word, sentence_mask, word_mask = features
    gen = torch.Generator().manual_seed(1)
    draw = draw_clip_word(clip, word, sentence_mask, word_mask, 2, gen)
    clip_targets, word_targets = set(), set()
    for _ in range(60):
        shift = draw_shifts(draw, sentence_mask, gen)
        for (b, m), p in zip(draw.clip_queries.tolist(), shift.clip_shift.tolist()):
            assert draw.word_anchor[b, p] >= 0  # the shifted word exists
            clip_targets.add((b, p))
        for (b, _, _), p in zip(draw.word_queries.tolist(), shift.word_shift.tolist()):
            assert sentence_mask[b, p]
            word_targets.add((b, p))
    assert clip_targets == {(0, 0), (0, 1), (0, 3), (1, 0), (1, 1)}  # never clip (0, 2): its sentence has no word
    assert word_targets == {(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1)}


def test_loss_matches_the_definition_by_loops(features):
    clip, word, sentence_mask, word_mask = features
    gen = torch.Generator().manual_seed(2)
    draw = draw_clip_word(clip, word, sentence_mask, word_mask, 3, gen)
    shift = draw_shifts(draw, sentence_mask, gen)
    word_dir, clip_dir = [0.3, -0.1, 0.2, 0.0], [0.0, 0.25, -0.2, 0.1]
    t = 0.07
    c, w = clip.tolist(), word.tolist()
    clip_rows = []
    for (b, m), p, negatives in zip(draw.clip_queries.tolist(), shift.clip_shift.tolist(),
                                    draw.clip_negatives.tolist()):
        moved = [x + (p - m) * d for x, d in zip(w[b][p][draw.word_anchor[b, p]], word_dir)]
        clip_rows.append(nce_by_loops(c[b][m], moved, [w[b][m][l] for l in negatives], t))
    word_rows = []
    for (b, m, l), p, negatives in zip(draw.word_queries.tolist(), shift.word_shift.tolist(),
                                       draw.word_negatives.tolist()):
        moved = [x + (p - draw.clip_anchor[b, m, l].item()) * d for x, d in zip(c[b][p], clip_dir)]
        word_rows.append(nce_by_loops(w[b][m][l], moved, [c[b][n] for n in negatives], t))
    expected = sum(clip_rows) / len(clip_rows) + sum(word_rows) / len(word_rows)
    got = temporal_shift_loss_from_draw(clip, word, draw, shift, offset_head(word_dir), offset_head(clip_dir), t)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_module_gives_both_context_heads_a_gradient(features):
    clip, word, sentence_mask, word_mask = features
    draw = draw_clip_word(clip, word, sentence_mask, word_mask, 3, torch.Generator().manual_seed(3))
    word_head, clip_head = ContextProjection(D), ContextProjection(D)
    loss = TemporalShiftLoss(0.07)(clip, word, sentence_mask, draw, word_head, clip_head,
                                   generator=torch.Generator().manual_seed(4))
    loss.backward()
    for head in (word_head, clip_head):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    with pytest.raises(ValueError, match="temperature"):
        TemporalShiftLoss(0.0)
