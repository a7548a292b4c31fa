"""Stage 1 global video-paragraph contrastive loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lfvila.distributed import all_gather_with_grad


class GlobalContrastiveLoss(nn.Module):
    """Symmetric InfoNCE between L2-normalised video and paragraph features of the (gathered) batch.

    ``loss = CE(v @ p.T / t, diag) + CE(p @ v.T / t, diag)``: the two directions are summed, not
    averaged, as in the released code (its loss weights were tuned on that scale).
    Features are gathered across ranks with gradient first, so every rank sees all negatives.
    """

    def __init__(self, temperature: float = 0.05, gather: bool = True):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.gather = gather

    def forward(self, video: torch.Tensor, paragraph: torch.Tensor, gather: bool | None = None) -> torch.Tensor:
        """``video``, ``paragraph``: ``(B, D)`` L2-normalised, row i of each from the same sample.

        ``gather`` overrides the constructor's choice for this call (evaluation scores local features).
        """
        if self.gather if gather is None else gather:
            video, paragraph = all_gather_with_grad(video), all_gather_with_grad(paragraph)
        logits = video.float() @ paragraph.float().T / self.temperature  # (B_all, B_all) video -> paragraph
        targets = torch.arange(logits.shape[0], device=logits.device)
        return F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)
