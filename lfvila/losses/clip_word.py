"""LocVTP's fine-grained clip-word correspondence loss (and the draws its temporal loss reuses).

LocVTP (code: mengcaopku/LocVTP, ``clip/modeling/clip/clip.py`` and ``FGLoss`` in ``loss.py``) has no
clip-word labels; it discovers them: each clip's positive is the word most similar to it, and each
word's positive is the clip most similar to it. The negatives are random words of the same caption
(random clips of the same video, the other way round), 4 per query, and the loss is an InfoNCE over
``[positive, negatives]`` of L2-normalised features at temperature 0.07, the two directions summed::

    logits = [q . k+, q . k-_1, ..., q . k-_K] / t,   loss = CE(logits, 0)   (mean over queries)

On our shards a clip's caption is its own sentence (the shards give each clip its sentence), so:

- clip -> word: every real clip whose sentence has >= 2 words queries that sentence's words;
- word -> clip: every real word of a video with >= 2 real clips queries the video's clips.

"Words" are the sentence's word-piece tokens without ``[CLS]`` / ``[SEP]`` / padding (the released
code keeps everything between the first and the last position, padding and ``[SEP]`` included).
Negatives are drawn uniformly with replacement, as released, but among the real candidates other
than the positive (the released draw could return the positive itself or a padding token).

Randomness: drawn on the CPU from ``generator`` when given, else from torch's global CPU RNG (which
the trainer seeds per rank and checkpoints); the indices are then moved to the features' device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ClipWordDraw:
    """The correspondences and random choices of one step (B videos, M clips/sentences, L tokens).

    word_anchor: ``(B, M)`` each clip's most similar word of its own sentence (-1: no real word);
    clip_anchor: ``(B, M, L)`` each word's most similar real clip of its video (-1: not a real word);
    clip_queries: ``(Nc, 2)`` ``(b, m)`` of the clips that query words; clip_negatives ``(Nc, K)``
    word positions of their own sentence; word_queries: ``(Nw, 3)`` ``(b, m, l)`` of the words that
    query clips; word_negatives ``(Nw, K)`` clip positions of their video.
    """

    word_anchor: torch.Tensor
    clip_anchor: torch.Tensor
    clip_queries: torch.Tensor
    clip_negatives: torch.Tensor
    word_queries: torch.Tensor
    word_negatives: torch.Tensor


def _draw_others(allowed: torch.Tensor, anchors: torch.Tensor, count: int,
                 generator: torch.Generator | None) -> torch.Tensor:
    """``count`` positions per row drawn uniformly with replacement among ``allowed`` ``(N, P)`` minus
    each row's anchor -> ``(N, count)``; every row must keep at least one position."""
    allowed = allowed.clone()
    allowed[torch.arange(allowed.shape[0]), anchors] = False
    if allowed.shape[0] == 0:
        return torch.zeros((0, count), dtype=torch.long)
    return torch.multinomial(allowed.float(), count, replacement=True, generator=generator)


@torch.no_grad()
def draw_clip_word(clip: torch.Tensor, word: torch.Tensor, sentence_mask: torch.Tensor, word_mask: torch.Tensor,
                   n_negatives: int = 4, generator: torch.Generator | None = None) -> ClipWordDraw:
    """Correspondences (argmax of cosine similarity) and negatives for ``clip`` ``(B, M, D)``, ``word``
    ``(B, M, L, D)``; ``sentence_mask`` ``(B, M)`` real clips/sentences, ``word_mask`` ``(B, M, L)`` real words."""
    if n_negatives < 1:
        raise ValueError(f"n_negatives must be >= 1, got {n_negatives}")
    device = clip.device
    clip_real = sentence_mask.bool()
    word_real = word_mask.bool() & clip_real[..., None]  # (B, M, L)
    own = torch.einsum("bmd,bmld->bml", clip.float(), word.float())  # clip m against the words of sentence m
    own = own.masked_fill(~word_real, -math.inf)
    word_anchor = torch.where(word_real.any(dim=-1), own.argmax(dim=-1), -1)  # (B, M)
    cross = torch.einsum("bmld,bnd->bmln", word.float(), clip.float())  # (B, M, L, M): word against every clip
    cross = cross.masked_fill(~clip_real[:, None, None, :], -math.inf)
    clip_anchor = torch.where(word_real, cross.argmax(dim=-1), -1)  # (B, M, L)

    word_real, clip_real = word_real.cpu(), clip_real.cpu()
    word_anchor_cpu, clip_anchor_cpu = word_anchor.cpu(), clip_anchor.cpu()
    clip_queries = (word_real.sum(dim=-1) >= 2).nonzero()  # (Nc, 2)
    b, m = clip_queries.unbind(1)
    clip_negatives = _draw_others(word_real[b, m], word_anchor_cpu[b, m], n_negatives, generator)
    word_queries = (word_real & (clip_real.sum(dim=1) >= 2)[:, None, None]).nonzero()  # (Nw, 3)
    b, m, l = word_queries.unbind(1)
    word_negatives = _draw_others(clip_real[b], clip_anchor_cpu[b, m, l], n_negatives, generator)
    return ClipWordDraw(word_anchor=word_anchor, clip_anchor=clip_anchor, clip_queries=clip_queries.to(device),
                        clip_negatives=clip_negatives.to(device), word_queries=word_queries.to(device),
                        word_negatives=word_negatives.to(device))


def info_nce(query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean InfoNCE of ``query`` ``(N, D)`` against ``positive`` ``(N, D)`` and ``negatives`` ``(N, K, D)``,
    all L2-normalised first (as released); zero, still on the graph, when N = 0."""
    if query.shape[0] == 0:
        return (query.sum() + positive.sum() + negatives.sum()).float() * 0.0
    q = F.normalize(query.float(), dim=-1)
    k = F.normalize(positive.float(), dim=-1)
    n = F.normalize(negatives.float(), dim=-1)
    logits = torch.cat([(q * k).sum(dim=-1, keepdim=True), torch.einsum("nd,nkd->nk", q, n)], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def clip_word_loss_from_draw(clip: torch.Tensor, word: torch.Tensor, draw: ClipWordDraw,
                             temperature: float) -> torch.Tensor:
    """clip -> word plus word -> clip InfoNCE for given draws; ``clip`` ``(B, M, D)``, ``word`` ``(B, M, L, D)``."""
    b, m = draw.clip_queries.unbind(1)
    clip_to_word = info_nce(clip[b, m], word[b, m, draw.word_anchor[b, m]],
                            word[b[:, None], m[:, None], draw.clip_negatives], temperature)  # negatives (Nc, K, D)
    b, m, l = draw.word_queries.unbind(1)
    word_to_clip = info_nce(word[b, m, l], clip[b, draw.clip_anchor[b, m, l]],
                            clip[b[:, None], draw.word_negatives], temperature)  # negatives (Nw, K, D)
    return clip_to_word + word_to_clip


class ClipWordLoss(nn.Module):
    """The fine-grained clip-word loss; see the module docstring. Draws its own correspondences unless
    the caller passes ``draw`` (the temporal loss reuses the same draw)."""

    def __init__(self, temperature: float = 0.07, n_negatives: int = 4):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if n_negatives < 1:
            raise ValueError(f"n_negatives must be >= 1, got {n_negatives}")
        self.temperature = temperature
        self.n_negatives = n_negatives

    def forward(self, clip: torch.Tensor, word: torch.Tensor, sentence_mask: torch.Tensor, word_mask: torch.Tensor,
                draw: ClipWordDraw | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """``clip`` ``(B, M, D)``, ``word`` ``(B, M, L, D)`` L2-normalised; masks as in :func:`draw_clip_word`."""
        if draw is None:
            draw = draw_clip_word(clip, word, sentence_mask, word_mask, self.n_negatives, generator)
        return clip_word_loss_from_draw(clip, word, draw, self.temperature)
