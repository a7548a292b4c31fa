"""LocVTP's coarse-grained video-sentence contrastive loss, with soft targets.

LocVTP (Cao et al., ECCV 2022; code: mengcaopku/LocVTP, ``clip/modeling/clip/loss.py``, ``ClipLoss``)
contrasts each video segment with its sentence over the batch. The targets are not the identity:
they are a softmax over the mean of the two in-modality similarity matrices, so two segments that
look alike (or two sentences that read alike) share some target mass::

    logits  = S @ V.T / t                              (N sentences, N segments)
    targets = softmax((V @ V.T + S @ S.T) / 2 / t_target, dim=-1)
    loss    = mean_i (CE_soft(logits[i], targets[i]) + CE_soft(logits.T[i], targets[i])) / 2

with ``CE_soft(z, p) = -sum_j p_j log_softmax(z)_j``. On our shards a segment is one clip (the
frames its own sentence describes), so the pairs are every real (clip, sentence) of the gathered
batch: other clips of the same video and clips of other videos are the negatives alike.

Differences from the released code, both deliberate:

- its target softmax multiplies by the temperature (``softmax(... * t)``) where we divide by
  ``target_temperature``; its runs used ``t = 1`` (``MODEL.CLIP.LOSS.TEMPERATURE`` default, unset in
  ``configs/howto.yaml``), i.e. ``target_temperature = 1``, on LayerNorm'd 256-d features whose
  similarities span hundreds. Our features are L2-normalised (similarities in [-1, 1]), where a
  temperature of 1 would make every target nearly uniform, hence a separate, smaller setting.
- its segment-to-sentence direction takes ``targets.T`` as the target rows; those are columns of a
  row-softmax and do not sum to 1. The in-modality matrix is symmetric, so the proper row for
  segment i is ``targets[i]`` itself. ``reference_targets=True`` reproduces the released rows.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lfvila.distributed import all_gather_with_grad


def soft_target_contrastive(clip: torch.Tensor, sentence: torch.Tensor, temperature: float,
                            target_temperature: float, reference_targets: bool = False) -> torch.Tensor:
    """The loss for ``clip``, ``sentence`` ``(N, D)``, row i of each from the same pair."""
    clip, sentence = clip.float(), sentence.float()
    logits = sentence @ clip.T / temperature  # (N sentences, N clips)
    # As released, the targets are not detached: the gradient also reaches the features through them.
    in_modality = (clip @ clip.T + sentence @ sentence.T) / 2  # (N, N), symmetric
    targets = F.softmax(in_modality / target_temperature, dim=-1)
    clip_targets = targets.T if reference_targets else targets
    sentence_loss = -(targets * F.log_softmax(logits, dim=-1)).sum(dim=-1)  # (N,)
    clip_loss = -(clip_targets * F.log_softmax(logits.T, dim=-1)).sum(dim=-1)  # (N,)
    return ((sentence_loss + clip_loss) / 2).mean()


class SoftTargetContrastiveLoss(nn.Module):
    """The coarse-grained loss over the real (clip, sentence) pairs of the (gathered) batch."""

    def __init__(self, temperature: float, target_temperature: float, reference_targets: bool = False,
                 gather: bool = True):
        super().__init__()
        for name, value in (("temperature", temperature), ("target_temperature", target_temperature)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        self.temperature = temperature
        self.target_temperature = target_temperature
        self.reference_targets = reference_targets
        self.gather = gather

    def forward(self, clip: torch.Tensor, sentence: torch.Tensor, sentence_mask: torch.Tensor,
                gather: bool | None = None) -> torch.Tensor:
        """``clip``, ``sentence`` ``(B, M, D)`` L2-normalised; ``sentence_mask`` ``(B, M)`` real pairs.

        ``gather`` overrides the constructor's choice for this call (evaluation scores local features).
        """
        if self.gather if gather is None else gather:
            clip, sentence = all_gather_with_grad(clip), all_gather_with_grad(sentence)
            sentence_mask = all_gather_with_grad(sentence_mask.long())
        real = sentence_mask.bool()
        return soft_target_contrastive(clip[real], sentence[real], self.temperature, self.target_temperature,
                                       self.reference_targets)
