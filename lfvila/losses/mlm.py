"""Stage 2 masked language modelling loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLMLoss(nn.Module):
    """Cross-entropy over masked positions (labels -100 elsewhere); zero when nothing is masked.

    The task passes only matched video-text pairs, as in the paper.
    """

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``logits`` ``(..., V)``, ``labels`` ``(...)`` with -100 at unmasked positions."""
        logits = logits.reshape(-1, logits.shape[-1]).float()
        labels = labels.reshape(-1)
        if not bool((labels != -100).any()):
            return logits.sum() * 0.0  # keeps the graph (DDP) without producing NaN
        return F.cross_entropy(logits, labels, ignore_index=-100)
