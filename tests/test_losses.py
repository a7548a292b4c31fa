"""Losses: global contrastive, MTC (labels, ties, draws, negatives), MLM, VTM pairing."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lfvila.losses import GlobalContrastiveLoss, MLMLoss, MTCDraw, MTCLoss, VTMLoss, draw_mtc, mismatch_pairs, mtc_labels
from lfvila.losses.mtc import mtc_loss_from_draw


def unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)


# ----------------------------------------------------------------------------- global contrastive
def test_global_loss_matches_hand_computation():
    video = unit(torch.tensor([[1.0, 0.0], [0.6, 0.8]]))
    paragraph = unit(torch.tensor([[0.8, 0.6], [0.0, 1.0]]))
    t = 0.05
    sim = [[sum(a * b for a, b in zip(v, p)) / t for p in paragraph.tolist()] for v in video.tolist()]

    def ce(row, target):
        return -row[target] + math.log(sum(math.exp(x) for x in row))

    v2p = sum(ce(sim[i], i) for i in range(2)) / 2
    p2v = sum(ce([sim[j][i] for j in range(2)], i) for i in range(2)) / 2
    loss = GlobalContrastiveLoss(t)(video, paragraph)
    assert loss.item() == pytest.approx(v2p + p2v, rel=1e-5)


def test_global_loss_aligned_is_near_minimal_and_shuffled_is_high():
    gen = torch.Generator().manual_seed(0)
    feats = unit(torch.randn(8, 64, generator=gen))
    loss_fn = GlobalContrastiveLoss(0.05)
    aligned = loss_fn(feats, feats.clone())
    shuffled = loss_fn(feats, feats[torch.roll(torch.arange(8), 1)])
    assert aligned.item() < 1e-3
    assert shuffled.item() > 10.0


# ----------------------------------------------------------------------------- MTC labels
def test_mtc_labels_by_hand():
    keys = torch.tensor([[0, 3], [1, 2], [2, 0], [0, 1]])
    values = torch.tensor([[1, 2], [0, 2], [2, 3], [3, 2]])
    usable = torch.tensor([True, True, True, False])
    labels = mtc_labels(keys, values, usable)
    # video 0: key 0 -> |1-0|=1 < |2-0|=2 -> value 0; key 3 -> 2 vs 1 -> value 1
    # video 1: key 1 -> |0-1| = |2-1| = 1 -> tie -> ignored; key 2 -> 2 vs 0 -> value 1
    # video 2: key 2 -> 0 vs 1 -> value 0 (the key's own position); key 0 -> 2 vs 3 -> value 0
    # video 3: unusable (too few real clips) -> ignored
    assert labels.tolist() == [[0, 1], [-100, 1], [0, 0], [-100, -100]]


def test_draw_mtc_respects_padding_and_picks_other_videos():
    gen = torch.Generator().manual_seed(1)
    valid = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    for _ in range(20):
        draw = draw_mtc(valid, n_keys=2, n_values=2, n_negatives=3, generator=gen)
        assert draw.usable.tolist() == [True, True, False, True, True]
        for b in range(5):
            if not draw.usable[b]:
                continue
            keys, values = draw.keys[b].tolist(), draw.values[b].tolist()
            assert len(set(keys)) == 2 and len(set(values)) == 2
            assert all(valid[b, p] for p in keys + values)
        videos = draw.negative_videos
        assert videos.shape == (5, 3)
        for b in range(5):
            assert b not in videos[b].tolist()  # other videos only
            assert len(set(videos[b].tolist())) == 3  # distinct
        assert valid[videos, draw.negative_positions].all()  # never a padded clip


def test_draw_mtc_small_batches():
    valid = torch.ones(2, 4, dtype=torch.bool)
    draw = draw_mtc(valid, n_negatives=3, generator=torch.Generator().manual_seed(0))
    assert draw.negative_videos.tolist() == [[1], [0]]  # only one other video exists
    single = draw_mtc(torch.ones(1, 4, dtype=torch.bool), n_negatives=3)
    assert single.negative_videos.shape == (1, 0)


def test_reference_negatives_include_the_same_video():
    valid = torch.ones(6, 4, dtype=torch.bool)
    draw = draw_mtc(valid, n_negatives=3, reference_negatives=True, generator=torch.Generator().manual_seed(0))
    b = torch.arange(6)
    assert draw.negative_videos[:, 0].tolist() == b.tolist()  # roll 0: the key's own video
    assert draw.negative_videos[:, 1].tolist() == ((b - 1) % 6).tolist()
    assert draw.negative_videos[:, 2].tolist() == ((b - 2) % 6).tolist()
    # one shared position per video, as the released code drew it
    assert (draw.negative_positions[:, 1] == draw.negative_positions[:, 0].roll(1)).all()


def test_mtc_loss_from_draw_matches_plain_loops():
    gen = torch.Generator().manual_seed(3)
    sentence = unit(torch.randn(3, 4, 8, generator=gen))
    clip = unit(torch.randn(3, 4, 8, generator=gen))
    draw = MTCDraw(
        keys=torch.tensor([[0, 3], [1, 2], [0, 1]]),
        values=torch.tensor([[1, 2], [0, 2], [3, 1]]),
        negative_videos=torch.tensor([[1, 2], [2, 0], [0, 1]]),
        negative_positions=torch.tensor([[3, 0], [1, 2], [2, 2]]),
        usable=torch.tensor([True, True, True]),
    )
    t = 0.05
    labels = mtc_labels(draw.keys, draw.values, draw.usable)
    expected = 0.0
    for query, cand in ((sentence, clip), (clip, sentence)):
        rows = []
        for b in range(3):
            for k in range(2):
                if labels[b, k] == -100:
                    continue
                q = query[b, draw.keys[b, k]]
                cands = [cand[b, v] for v in draw.values[b]] + [
                    cand[draw.negative_videos[b, j], draw.negative_positions[b, j]] for j in range(2)
                ]
                logits = torch.stack([q @ c for c in cands]) / t
                rows.append(-torch.log_softmax(logits, 0)[labels[b, k]])
        expected += torch.stack(rows).mean()
    assert mtc_loss_from_draw(sentence, clip, draw, t).item() == pytest.approx(expected.item(), rel=1e-5)


def smooth_features(n_videos: int, n_clips: int = 4, step_degrees: float = 30.0) -> torch.Tensor:
    """Video v's clip i = unit vector at angle i*step in its own 2D plane: similarity falls with |i - j|."""
    feats = torch.zeros(n_videos, n_clips, 2 * n_videos)
    for v in range(n_videos):
        for i in range(n_clips):
            angle = math.radians(step_degrees * i)
            feats[v, i, 2 * v] = math.cos(angle)
            feats[v, i, 2 * v + 1] = math.sin(angle)
    return feats


def test_mtc_aligned_is_near_minimal_shuffled_is_higher():
    feats = smooth_features(6)
    mask = torch.ones(6, 4, dtype=torch.bool)
    # Adjacent positions differ by cos 0 - cos 30 = 0.13 in similarity: a low temperature makes that decisive.
    loss_fn = MTCLoss(temperature=0.01)
    gen = torch.Generator().manual_seed(0)
    aligned = torch.stack([loss_fn(feats, feats.clone(), mask, generator=gen) for _ in range(10)]).mean()
    reversed_clips = feats.flip(1)  # clip order reversed in time: nearest-in-time is now farthest
    shuffled = torch.stack([loss_fn(feats, reversed_clips, mask, generator=gen) for _ in range(10)]).mean()
    assert aligned.item() < 1e-3
    assert shuffled.item() > 5.0


def test_mtc_reference_negatives_hurt_aligned_features():
    """With the released negatives the positive itself is often a 'negative', so even perfect features pay."""
    feats = smooth_features(6)
    mask = torch.ones(6, 4, dtype=torch.bool)
    gen = torch.Generator().manual_seed(0)
    paper = torch.stack([MTCLoss()(feats, feats, mask, generator=gen) for _ in range(20)]).mean()
    reference = torch.stack([MTCLoss(reference_negatives=True)(feats, feats, mask, generator=gen) for _ in range(20)]).mean()
    assert reference.item() > paper.item() + 0.1


def test_mtc_all_rows_ignored_gives_zero_with_graph():
    sentence = unit(torch.randn(2, 4, 8)).requires_grad_()
    mask = torch.tensor([[1, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)  # one real clip: nothing to contrast
    loss = MTCLoss()(sentence, sentence, mask)
    assert loss.item() == 0.0
    loss.backward()
    assert sentence.grad is not None


def test_mtc_padded_positions_never_used():
    gen = torch.Generator().manual_seed(5)
    sentence = unit(torch.randn(4, 4, 16, generator=gen))
    clip = unit(torch.randn(4, 4, 16, generator=gen))
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    noisy_s, noisy_c = sentence.clone(), clip.clone()
    noisy_s[~mask] = unit(torch.randn(int((~mask).sum()), 16))
    noisy_c[~mask] = unit(torch.randn(int((~mask).sum()), 16))
    a = MTCLoss()(sentence, clip, mask, generator=torch.Generator().manual_seed(9))
    b = MTCLoss()(noisy_s, noisy_c, mask, generator=torch.Generator().manual_seed(9))
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


# ----------------------------------------------------------------------------- MLM / VTM
def test_mlm_loss_ignores_unmasked_and_handles_nothing_masked():
    logits = torch.randn(2, 5, 11, requires_grad=True)
    labels = torch.full((2, 5), -100)
    zero = MLMLoss()(logits, labels)
    assert zero.item() == 0.0
    zero.backward()
    labels[0, 1], labels[1, 4] = 3, 7
    expected = (F.cross_entropy(logits[0, 1][None], torch.tensor([3])) + F.cross_entropy(logits[1, 4][None], torch.tensor([7]))) / 2
    assert MLMLoss()(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("batch_size", [2, 3, 4, 7])
def test_mismatch_pairs_never_pair_a_text_with_its_own_video(batch_size):
    video_index, labels = mismatch_pairs(batch_size)
    n_mismatched = batch_size // 2
    assert labels.tolist() == [0] * n_mismatched + [1] * (batch_size - n_mismatched)
    for i in range(batch_size):
        assert (video_index[i] != i) == (labels[i] == 0)


def test_reference_pairing_is_the_released_roll_of_the_first_half():
    """The issue's batch of 4: released [1, 0, 2, 3], lfvila [1, 2, 2, 3]; same labels."""
    released, labels = mismatch_pairs(4, reference=True)
    ours, our_labels = mismatch_pairs(4)
    assert released.tolist() == [1, 0, 2, 3] and ours.tolist() == [1, 2, 2, 3]
    assert labels.tolist() == our_labels.tolist() == [0, 0, 1, 1]
    # the roll by one of the first half, as torch.roll(video[:B // 2], 1, 0) reorders it
    for b in (2, 3, 4, 6, 7, 16):
        index = torch.arange(b)
        expected = torch.cat([torch.roll(index[: b // 2], 1, 0), index[b // 2:]])
        assert torch.equal(mismatch_pairs(b, reference=True)[0], expected), b
    assert mismatch_pairs(3, reference=True)[0].tolist() == [0, 1, 2]  # its own video under label 0


def test_vtm_loss_is_cross_entropy():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.5]])
    labels = torch.tensor([0, 1])
    assert VTMLoss()(logits, labels).item() == pytest.approx(F.cross_entropy(logits, labels).item())


def test_mtc_is_learnable_from_free_features():
    """Adam on free sentence/clip features drives MTC from chance to near zero: labels and gradients agree."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: thread hand-offs would cost more than the maths
    try:
        torch.manual_seed(0)
        sentence = torch.randn(6, 4, 16, requires_grad=True)
        clip = torch.randn(6, 4, 16, requires_grad=True)
        optimizer = torch.optim.Adam([sentence, clip], lr=0.1)
        mask = torch.ones(6, 4, dtype=torch.bool)
        gen = torch.Generator().manual_seed(0)
        loss_fn = MTCLoss()
        history = []
        for _ in range(50):
            loss = loss_fn(unit(sentence), unit(clip), mask, generator=gen)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            history.append(loss.item())
    finally:
        torch.set_num_threads(threads)
    assert history[0] > 5.0
    assert sum(history[-10:]) / 10 < 1.0
