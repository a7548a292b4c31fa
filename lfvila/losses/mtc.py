"""Stage 1 multimodal temporal contrastive loss (MTC).

Per video, draw 2 distinct key positions and 2 distinct value positions among its real clips. Each
sentence key is scored against the 2 clip values of its own video plus 3 clips of other videos; the
target is the value nearest in time to the key (``|i - j|`` in clip positions, sentence i belongs to
clip i); when both values are equally far the row is ignored. The same with clip keys against sentence
values. Temperature 0.05, the two directions summed.

The released code took its "other video" negatives by rolling the batch by 0, 1 and 2, so its first
negative came from the key's own video (often the positive itself); ``reference_negatives=True``
reproduces that for compatibility. By default negatives come from other videos only.

Randomness: drawn on the CPU from ``generator`` when given, else from torch's global CPU RNG (which the
trainer seeds per rank and checkpoints); the indices are then moved to the features' device.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lfvila.distributed import all_gather_with_grad

IGNORE = -100


@dataclass
class MTCDraw:
    """The random choices of one MTC step (B videos, positions index the M clips/sentences).

    keys: ``(B, K)`` key positions; values: ``(B, V)`` value positions (distinct within a video);
    negative_videos / negative_positions: ``(B, N)`` which video and which position each extra candidate
    comes from; usable: ``(B,)`` videos with enough real clips for K keys and V values.
    """

    keys: torch.Tensor
    values: torch.Tensor
    negative_videos: torch.Tensor
    negative_positions: torch.Tensor
    usable: torch.Tensor


def _random_valid_positions(valid: torch.Tensor, count: int, generator: torch.Generator | None) -> torch.Tensor:
    """``count`` distinct random positions per row of ``valid`` ``(..., M)``, real ones first -> ``(..., count)``."""
    scores = torch.rand(valid.shape, generator=generator)
    scores = scores.masked_fill(~valid, 2.0)  # padded positions sort after every real one
    return scores.argsort(dim=-1)[..., :count]


def draw_mtc(
    valid: torch.Tensor,
    n_keys: int = 2,
    n_values: int = 2,
    n_negatives: int = 3,
    reference_negatives: bool = False,
    generator: torch.Generator | None = None,
) -> MTCDraw:
    """Draw keys, values and other-video negatives for a batch with real positions ``valid`` ``(B, M)``.

    Default negatives: ``min(n_negatives, B - 1)`` distinct other videos per video, each at a random real
    position. ``reference_negatives``: the released scheme, videos ``(b - x) % B`` for ``x < n_negatives``
    (``x = 0`` is the video itself), each at one random position per video shared by all rows.
    """
    device = valid.device
    valid = valid.bool().cpu()
    b, m = valid.shape
    if not bool(valid.any(dim=1).all()):
        raise ValueError("MTC: every video needs at least one real clip/sentence")
    keys = _random_valid_positions(valid, n_keys, generator)  # (B, K)
    values = _random_valid_positions(valid, n_values, generator)  # (B, V)
    usable = valid.sum(dim=1) >= max(n_keys, n_values)
    index = torch.arange(b)
    if reference_negatives:
        position_per_video = _random_valid_positions(valid, 1, generator)[:, 0]  # (B,)
        negative_videos = (index[:, None] - torch.arange(n_negatives)[None, :]) % b  # (B, N), column 0 = self
        negative_positions = position_per_video[negative_videos]
    else:
        n_other = min(n_negatives, b - 1)
        scores = torch.rand((b, b), generator=generator)
        scores[index, index] = 2.0  # never the video itself
        negative_videos = scores.argsort(dim=1)[:, :n_other]  # (B, N) distinct other videos
        negative_positions = _random_valid_positions(valid[negative_videos], 1, generator)[..., 0]  # (B, N)
    return MTCDraw(
        keys=keys.to(device),
        values=values.to(device),
        negative_videos=negative_videos.to(device),
        negative_positions=negative_positions.to(device),
        usable=usable.to(device),
    )


def mtc_labels(keys: torch.Tensor, values: torch.Tensor, usable: torch.Tensor) -> torch.Tensor:
    """Target value per key: the value position nearest in time; ``-100`` on ties or unusable videos.

    ``keys`` ``(B, K)``, ``values`` ``(B, V)``, ``usable`` ``(B,)`` -> ``(B, K)`` long.
    """
    distance = (values[:, None, :] - keys[:, :, None]).abs()  # (B, K, V)
    nearest = distance.min(dim=-1, keepdim=True).values
    labels = distance.argmin(dim=-1)
    tie = (distance == nearest).sum(dim=-1) > 1
    labels = labels.masked_fill(tie | ~usable[:, None], IGNORE)
    return labels


def _gather_positions(features: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``features`` ``(B, M, D)``, ``positions`` ``(B, P)`` -> ``(B, P, D)``."""
    return features.gather(1, positions[..., None].expand(-1, -1, features.shape[-1]))


def mtc_loss_from_draw(
    sentence: torch.Tensor, clip: torch.Tensor, draw: MTCDraw, temperature: float
) -> torch.Tensor:
    """MTC loss for given draws; ``sentence``, ``clip``: ``(B, M, D)`` L2-normalised."""
    labels = mtc_labels(draw.keys, draw.values, draw.usable).flatten()  # (B*K,)
    if not bool((labels != IGNORE).any()):
        return (sentence.sum() + clip.sum()) * 0.0  # every row tied or unusable; keeps the graph
    total = sentence.new_zeros((), dtype=torch.float32)
    for query, candidate in ((sentence, clip), (clip, sentence)):  # sentence->clip, then clip->sentence
        keys = _gather_positions(query, draw.keys)  # (B, K, D)
        own = _gather_positions(candidate, draw.values)  # (B, V, D)
        others = candidate[draw.negative_videos, draw.negative_positions]  # (B, N, D)
        candidates = torch.cat([own, others], dim=1)  # (B, V + N, D)
        logits = torch.einsum("bkd,bcd->bkc", keys.float(), candidates.float()) / temperature
        total = total + F.cross_entropy(logits.flatten(0, 1), labels, ignore_index=IGNORE)
    return total


class MTCLoss(nn.Module):
    """Multimodal temporal contrastive loss over the (gathered) batch; see the module docstring."""

    def __init__(
        self,
        temperature: float = 0.05,
        n_keys: int = 2,
        n_values: int = 2,
        n_negatives: int = 3,
        reference_negatives: bool = False,
        gather: bool = True,
    ):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if n_keys < 1 or n_values < 2 or n_negatives < 0:
            raise ValueError(f"MTC needs n_keys >= 1, n_values >= 2, n_negatives >= 0; got {n_keys}, {n_values}, {n_negatives}")
        self.temperature = temperature
        self.n_keys = n_keys
        self.n_values = n_values
        self.n_negatives = n_negatives
        self.reference_negatives = reference_negatives
        self.gather = gather

    def forward(
        self,
        sentence: torch.Tensor,
        clip: torch.Tensor,
        sentence_mask: torch.Tensor,
        generator: torch.Generator | None = None,
        gather: bool | None = None,
    ) -> torch.Tensor:
        """``sentence``, ``clip``: ``(B, M, D)`` L2-normalised; ``sentence_mask`` ``(B, M)`` real sentences.

        ``gather`` overrides the constructor's choice for this call (evaluation scores local features).
        """
        if self.gather if gather is None else gather:
            sentence, clip = all_gather_with_grad(sentence), all_gather_with_grad(clip)
            sentence_mask = all_gather_with_grad(sentence_mask.long())
        draw = draw_mtc(
            sentence_mask.bool(), self.n_keys, self.n_values, self.n_negatives, self.reference_negatives, generator
        )
        return mtc_loss_from_draw(sentence, clip, draw, self.temperature)
