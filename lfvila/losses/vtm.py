"""Stage 2 video-text matching: mismatched pairs and the 2-way loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def mismatch_pairs(batch_size: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Which video each text is paired with, and the matching labels.

    The first ``B // 2`` texts get the video of the next sample (``(i + 1) % B``, never their own when
    ``B >= 2``) with label 0; the rest keep their own video with label 1. (The released code rolled
    only within the first half, which pairs a text with its own video when ``B // 2 == 1``.)
    Returns ``video_index`` ``(B,)`` and ``labels`` ``(B,)`` long.
    """
    index = torch.arange(batch_size, device=device)
    n_mismatched = batch_size // 2
    video_index = torch.cat([(index[:n_mismatched] + 1) % batch_size, index[n_mismatched:]])
    labels = (index >= n_mismatched).long()
    return video_index, labels


class VTMLoss(nn.Module):
    """Cross-entropy of the matching head's ``(B, 2)`` logits against 0 (mismatched) / 1 (matched)."""

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels)
