"""LocVTP's fine-grained clip-word loss: discovered correspondences, negatives, value by loops."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lfvila.losses import ClipWordLoss, draw_clip_word
from lfvila.losses.clip_word import clip_word_loss_from_draw, info_nce
from lfvila.models.lfvila import word_positions

B, M, L, D = 2, 3, 5, 4


def dot(a, b) -> float:
    return sum(x * y for x, y in zip(a, b))


def nce_by_loops(query, positive, negatives, t: float) -> float:
    """-log softmax at the positive of [q.k+, q.k-...] / t, every vector L2-normalised first."""
    def unit(v):
        n = math.sqrt(dot(v, v))
        return [x / n for x in v]

    q = unit(query)
    logits = [dot(q, unit(positive)) / t] + [dot(q, unit(n)) / t for n in negatives]
    return -logits[0] + math.log(sum(math.exp(x) for x in logits))


@pytest.fixture
def features():
    """Video 0: three real sentences of 3, 1 and 2 words; video 1: one real sentence of 3 words."""
    gen = torch.Generator().manual_seed(0)
    clip = F.normalize(torch.randn(B, M, D, generator=gen), dim=-1)
    word = F.normalize(torch.randn(B, M, L, D, generator=gen), dim=-1)
    lengths = torch.tensor([[5, 3, 4], [5, 0, 0]])  # [CLS] words [SEP]; 0 = padded sentence
    token_valid = torch.arange(L)[None, None, :] < lengths[..., None]
    sentence_mask = lengths > 0
    return clip, word, sentence_mask, word_positions(token_valid)


def test_word_positions_drop_cls_sep_and_padding():
    valid = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    assert word_positions(valid).long().tolist() == [[0, 1, 1, 0, 0, 0], [0] * 6, [0] * 6]


def test_correspondences_are_the_most_similar_real_items(features):
    clip, word, sentence_mask, word_mask = features
    draw = draw_clip_word(clip, word, sentence_mask, word_mask, 4, torch.Generator().manual_seed(0))
    c, w = clip.tolist(), word.tolist()
    for b in range(B):
        for m in range(M):
            words = [l for l in range(L) if word_mask[b, m, l] and sentence_mask[b, m]]
            expected = max(words, key=lambda l: dot(c[b][m], w[b][m][l])) if words else -1
            assert draw.word_anchor[b, m].item() == expected
            clips = [n for n in range(M) if sentence_mask[b, n]]
            for l in range(L):
                expected = max(clips, key=lambda n: dot(w[b][m][l], c[b][n])) if l in words else -1
                assert draw.clip_anchor[b, m, l].item() == expected
    # clips query when their sentence has >= 2 words; words query when their video has >= 2 clips
    assert draw.clip_queries.tolist() == [[0, 0], [0, 2], [1, 0]]
    assert draw.word_queries.tolist() == [[0, 0, 1], [0, 0, 2], [0, 0, 3], [0, 1, 1], [0, 2, 1], [0, 2, 2]]


def test_negatives_are_other_real_candidates_drawn_with_replacement(features):
    clip, word, sentence_mask, word_mask = features
    gen = torch.Generator().manual_seed(1)
    seen_words, seen_clips = set(), set()
    for _ in range(30):
        draw = draw_clip_word(clip, word, sentence_mask, word_mask, 4, gen)
        assert draw.clip_negatives.shape == (3, 4) and draw.word_negatives.shape == (6, 4)
        for (b, m), negatives in zip(draw.clip_queries.tolist(), draw.clip_negatives.tolist()):
            for l in negatives:
                assert word_mask[b, m, l] and l != draw.word_anchor[b, m]
                seen_words.add((b, m, l))
        for (b, m, l), negatives in zip(draw.word_queries.tolist(), draw.word_negatives.tolist()):
            for n in negatives:
                assert sentence_mask[b, n] and n != draw.clip_anchor[b, m, l]
                seen_clips.add((b, m, l, n))
    # every allowed word shows up (sentence (0, 2) has 2 words: its one negative repeats 4 times)
    allowed_words = {(b, m, l) for b, m in [(0, 0), (0, 2), (1, 0)] for l in range(L) if word_mask[b, m, l]}
    anchors = {(b, m, draw.word_anchor[b, m].item()) for b, m in [(0, 0), (0, 2), (1, 0)]}
    assert seen_words == allowed_words - anchors


def test_loss_matches_the_definition_by_loops(features):
    clip, word, sentence_mask, word_mask = features
    draw = draw_clip_word(clip, word, sentence_mask, word_mask, 3, torch.Generator().manual_seed(2))
    t = 0.07
    c, w = clip.tolist(), word.tolist()
    clip_to_word = [nce_by_loops(c[b][m], w[b][m][draw.word_anchor[b, m]], [w[b][m][l] for l in negatives], t)
                    for (b, m), negatives in zip(draw.clip_queries.tolist(), draw.clip_negatives.tolist())]
    word_to_clip = [nce_by_loops(w[b][m][l], c[b][draw.clip_anchor[b, m, l]], [c[b][n] for n in negatives], t)
                    for (b, m, l), negatives in zip(draw.word_queries.tolist(), draw.word_negatives.tolist())]
    expected = sum(clip_to_word) / len(clip_to_word) + sum(word_to_clip) / len(word_to_clip)
    assert clip_word_loss_from_draw(clip, word, draw, t).item() == pytest.approx(expected, rel=1e-5)
    loss_fn = ClipWordLoss(t, 3)
    assert loss_fn(clip, word, sentence_mask, word_mask, draw=draw).item() == pytest.approx(expected, rel=1e-5)
    # the module draws the same way from the same generator
    again = loss_fn(clip, word, sentence_mask, word_mask, generator=torch.Generator().manual_seed(2))
    assert again.item() == pytest.approx(expected, rel=1e-5)


def test_no_queries_gives_zero_on_the_graph():
    clip = torch.randn(1, 2, D, requires_grad=True)
    word = torch.randn(1, 2, L, D, requires_grad=True)
    sentence_mask = torch.tensor([[True, False]])  # one clip: no word queries
    word_mask = torch.zeros(1, 2, L, dtype=torch.bool)
    word_mask[0, 0, 1] = True  # one word: no clip queries
    loss = ClipWordLoss()(clip, word, sentence_mask, word_mask)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert info_nce(torch.zeros(0, D), torch.zeros(0, D), torch.zeros(0, 2, D), 0.07).item() == 0.0
