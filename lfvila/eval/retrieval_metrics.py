"""Text-to-video and video-to-text retrieval metrics, as the LF-VILA release computes them.

The release's ``utils/metrics.py compute_rt_metrics`` takes a ``(queries, items)`` similarity
matrix with the true item of query ``i`` at column ``i``, sorts each row in descending order and
records every 0-based position of that sorted row whose value equals the true item's score.
R@k is the share of recorded positions below ``k``; median and mean rank are the median and mean
of the positions, plus 1. Text-to-video reads the matrix as is (rows are paragraphs); video-to-text
reads its transpose.

Ties follow from that definition and are kept, so figures stay comparable with the paper: a row
whose true score ties with ``e - 1`` other items contributes ``e`` positions ``g, g+1, ..., g+e-1``
(``g`` = items scoring strictly higher), and the denominator counts positions, not rows. With
real-valued features ties are rare and the figures are the plain per-query ranks. (The held-out
figures of ``lfvila.trainer.evaluate`` instead count ties pessimistically, one rank per query.)

Unlike the release, a non-finite similarity is an error: NaN equals nothing, so the release
silently drops such rows from the denominator.
"""
from __future__ import annotations

import numpy as np

RECALL_AT = (1, 5, 10, 50)
DIRECTIONS = ("t2v", "v2t")


def rt_positions(sim: np.ndarray) -> np.ndarray:
    """0-based positions of the true item in each row's descending order, one per tied slot.

    ``sim``: ``(N, N)`` with the truth on the diagonal. Returns an int array of length
    ``sum_i e_i`` where ``e_i`` is the number of items of row ``i`` scoring exactly its true score
    (``e_i = 1`` without ties), rows in order.
    """
    sim = np.asarray(sim)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1] or sim.shape[0] == 0:
        raise ValueError(f"similarity must be a non-empty square (N, N) matrix, got shape {sim.shape}")
    if not np.isfinite(sim).all():
        raise ValueError("similarity holds NaN or infinite values")
    true = np.diag(sim)[:, None]  # (N, 1)
    higher = (sim > true).sum(axis=1)  # (N,) items ranked strictly before the true one
    tied = (sim == true).sum(axis=1)  # (N,) >= 1: the true item itself
    # positions g, g+1, ..., g+e-1 for each row, concatenated
    starts = np.repeat(higher, tied)
    offsets = np.arange(tied.sum()) - np.repeat(np.cumsum(tied) - tied, tied)
    return starts + offsets


def rt_metrics(sim: np.ndarray, prefix: str) -> dict[str, float]:
    """``{prefix}_r1/_r5/_r10/_r50`` (percent), ``{prefix}_medr`` and ``{prefix}_meanr`` (1-based)
    of ``sim`` read row-wise, each with its chance level ``*_chance`` (uniformly random scores)."""
    positions = rt_positions(sim)
    n = sim.shape[0]
    out: dict[str, float] = {}
    for k in RECALL_AT:
        out[f"{prefix}_r{k}"] = 100.0 * float(np.mean(positions < k))
        out[f"{prefix}_r{k}_chance"] = 100.0 * min(k, n) / n
    out[f"{prefix}_medr"] = float(np.median(positions)) + 1.0
    out[f"{prefix}_medr_chance"] = (n + 1) / 2
    out[f"{prefix}_meanr"] = float(np.mean(positions)) + 1.0
    out[f"{prefix}_meanr_chance"] = (n + 1) / 2
    return out


def retrieval_metrics(sim: np.ndarray) -> dict[str, float]:
    """Both directions of a ``(texts, videos)`` similarity matrix (text ``i`` describes video ``i``):
    ``t2v_*`` from its rows, ``v2t_*`` from its columns."""
    sim = np.asarray(sim)
    return {**rt_metrics(sim, "t2v"), **rt_metrics(sim.T, "v2t")}
