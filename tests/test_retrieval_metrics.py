"""Retrieval metrics (lfvila.eval.retrieval_metrics) on hand-made similarity matrices, values by hand."""
from __future__ import annotations

import numpy as np
import pytest

from lfvila.eval.retrieval_metrics import retrieval_metrics, rt_metrics, rt_positions


def test_three_by_three_both_directions_by_hand():
    sim = np.array([[0.9, 0.1, 0.5],
                    [0.8, 0.7, 0.2],
                    [0.6, 0.95, 0.3]])
    m = retrieval_metrics(sim)
    # rows (text -> video): true items at sorted positions 0, 1 (0.8 above 0.7), 2 (0.95, 0.6 above 0.3)
    assert rt_positions(sim).tolist() == [0, 1, 2]
    assert m["t2v_r1"] == pytest.approx(100 / 3)
    assert m["t2v_r5"] == m["t2v_r10"] == m["t2v_r50"] == 100.0
    assert m["t2v_medr"] == 2.0 and m["t2v_meanr"] == 2.0
    # columns (video -> text): [0.9, 0.8, 0.6] -> 0; [0.1, 0.7, 0.95] -> 1; [0.5, 0.2, 0.3] -> 1
    assert rt_positions(sim.T).tolist() == [0, 1, 1]
    assert m["v2t_r1"] == pytest.approx(100 / 3)
    assert m["v2t_medr"] == 2.0
    assert m["v2t_meanr"] == pytest.approx(1 + 2 / 3)
    assert m["t2v_r1_chance"] == pytest.approx(100 / 3) and m["t2v_r50_chance"] == 100.0
    assert m["t2v_medr_chance"] == 2.0


def test_planted_positions_give_every_recall_median_and_mean():
    n = 60
    wanted = np.array([0] * 20 + [3] * 10 + [7] * 10 + [30] * 10 + [55] * 10)
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    sim = -((j - i) % n).astype(float)  # row i: item i+d scores -d, d = 1..n-1 for the others
    sim[np.arange(n), np.arange(n)] = -wanted - 0.5  # exactly wanted[i] others score higher
    assert rt_positions(sim).tolist() == wanted.tolist()
    m = rt_metrics(sim, "t2v")
    assert m["t2v_r1"] == pytest.approx(100 * 20 / 60)
    assert m["t2v_r5"] == pytest.approx(100 * 30 / 60)
    assert m["t2v_r10"] == pytest.approx(100 * 40 / 60)
    assert m["t2v_r50"] == pytest.approx(100 * 50 / 60)
    assert m["t2v_medr"] == 6.0  # the 30th and 31st sorted positions are 3 and 7: median 5, + 1
    assert m["t2v_meanr"] == pytest.approx(1 + (3 * 10 + 7 * 10 + 30 * 10 + 55 * 10) / 60)
    assert m["t2v_r10_chance"] == pytest.approx(100 * 10 / 60) and m["t2v_meanr_chance"] == 30.5


def test_ties_contribute_one_position_per_tied_item_as_released():
    # A collapsed model: every row ties its true item with all three -> positions 0, 1, 2 each.
    m = rt_metrics(np.ones((3, 3)), "t2v")
    assert rt_positions(np.ones((3, 3))).tolist() == [0, 1, 2] * 3
    assert m["t2v_r1"] == pytest.approx(100 / 3) and m["t2v_medr"] == 2.0 and m["t2v_meanr"] == 2.0
    # One tie in row 0 only: positions [0, 1], [0], [0] -> 4 entries in the denominator.
    sim = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert rt_positions(sim).tolist() == [0, 1, 0, 0]
    m = rt_metrics(sim, "t2v")
    assert m["t2v_r1"] == 75.0 and m["t2v_medr"] == 1.0 and m["t2v_meanr"] == 1.25


@pytest.mark.parametrize("bad", [np.ones((2, 3)), np.ones((0, 0)), np.array([[1.0, np.nan], [0.0, 1.0]])])
def test_non_square_empty_or_nan_similarity_is_refused(bad):
    with pytest.raises(ValueError):
        retrieval_metrics(bad)


def _release_positions(x: np.ndarray) -> np.ndarray:
    """The release's definition restated: sort each negated row, keep the column indices where the
    sorted row equals the negated diagonal."""
    sorted_neg = np.sort(-x, axis=1)
    return np.nonzero(sorted_neg - (-np.diag(x))[:, None] == 0)[1]


def test_fuzz_positions_equal_the_released_definition():
    from hypothesis import given, strategies as st
    from hypothesis.extra.numpy import arrays

    @given(st.integers(1, 12).flatmap(lambda n: arrays(np.int64, (n, n), elements=st.integers(-3, 3))))
    def check(sim):
        sim = sim.astype(np.float32)  # small integers: many ties
        assert rt_positions(sim).tolist() == _release_positions(sim).tolist()
        positions = _release_positions(sim)
        m = rt_metrics(sim, "x")
        assert m["x_r5"] == pytest.approx(100 * np.sum(positions < 5) / len(positions))
        assert m["x_medr"] == pytest.approx(np.median(positions) + 1)
        assert m["x_meanr"] == pytest.approx(np.mean(positions) + 1)

    check()
