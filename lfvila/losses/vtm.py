"""Stage 2 video-text matching: mismatched pairs and the 2-way loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def mismatch_pairs(batch_size: int, device: torch.device | str = "cpu",
                   reference: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Which video each text is paired with, and the matching labels.

    The first ``B // 2`` texts get a video that is not their own, label 0; the rest keep their own,
    label 1. Default: text ``i`` gets the video of the next sample, ``(i + 1) % B`` (never its own
    when ``B >= 2``; batch 4: ``[1, 2, 2, 3]``). ``reference``: the released rule, the first half
    rolled by one among itself, ``(i - 1) % (B // 2)`` (batch 4: ``[1, 0, 2, 3]``; with 2 or 3
    samples text 0 keeps its own video under label 0).
    Returns ``video_index`` ``(B,)`` and ``labels`` ``(B,)`` long.
    """
    index = torch.arange(batch_size, device=device)
    n_mismatched = batch_size // 2
    first = index[:n_mismatched]
    negatives = (first - 1) % max(n_mismatched, 1) if reference else (first + 1) % batch_size
    video_index = torch.cat([negatives, index[n_mismatched:]])
    labels = (index >= n_mismatched).long()
    return video_index, labels


class VTMLoss(nn.Module):
    """Cross-entropy of the matching head's ``(B, 2)`` logits against 0 (mismatched) / 1 (matched)."""

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels)
