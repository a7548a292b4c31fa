"""LocVTP's temporal-aware contrastive loss: a positive moved in time, told how far it moved.

LocVTP (code: mengcaopku/LocVTP, ``clip/modeling/clip/clip.py``) adds a context projection head:
``psi(x, delta) = x + E_sign(sign(delta)) + E_dist(|delta|)`` (``nn.Linear(1, D)`` each, one pair
for words and one for clips; in lfvila ``lfvila.models.lfvila.ContextProjection``). A query's
fine-grained positive (its most similar word or clip, :mod:`lfvila.losses.clip_word`) is replaced by
an item at a random offset ``delta`` from it, passed through ``psi`` with that offset, and must still
be the query's match against the same negatives (InfoNCE, temperature 0.07 as released). The
feature of a clip or word therefore has to carry what lies around it in time.

On our shards time is the clip position (each clip with its own sentence), so for every query of
the fine-grained draw, with a position ``p`` drawn uniformly among the video's real clips (the
query's own included: ``delta = 0``, as the released draw allows):

- clip query at ``m``: the shifted positive is the anchor word of clip ``p`` (its most similar word
  of sentence ``p``), ``psi_word(word, p - m)``: a word shifted in time must match the clip at that
  offset; negatives are the query's fine-grained ones (random words of its own sentence);
- word query anchored at clip ``a``: the shifted positive is ``psi_clip(clip_p, p - a)``; negatives
  are its fine-grained random clips of the video.

The released clip-query shift moves along the word positions of one caption; with sentences tied to
clips we shift in time, which is what the objective is for. The released word-query branch indexes
its offset embedding with a leftover loop variable (every word gets the offset of the last clip);
here each query gets its own offset.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from lfvila.losses.clip_word import ClipWordDraw, info_nce

# (features (N, D), offsets (N,) long) -> context-projected features (N, D)
ContextHead = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class ShiftDraw:
    """Where each fine-grained query's positive moves: ``clip_shift`` ``(Nc,)`` the clip position whose
    anchor word replaces a clip query's positive; ``word_shift`` ``(Nw,)`` the clip position replacing a
    word query's positive."""

    clip_shift: torch.Tensor
    word_shift: torch.Tensor


def _draw_positions(allowed: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One position per row, uniformly among ``allowed`` ``(N, M)`` (each row has one) -> ``(N,)``."""
    if allowed.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long)
    return torch.multinomial(allowed.float(), 1, generator=generator)[:, 0]


def draw_shifts(draw: ClipWordDraw, sentence_mask: torch.Tensor, generator: torch.Generator | None = None) -> ShiftDraw:
    """Shift targets for the queries of ``draw``; ``sentence_mask`` ``(B, M)`` real clips.

    A clip query moves to a real clip whose sentence has a word (its own always has); a word query to
    any real clip of its video.
    """
    device = draw.clip_queries.device
    has_word = (draw.word_anchor >= 0).cpu()  # (B, M)
    clip_video = draw.clip_queries[:, 0].cpu()
    word_video = draw.word_queries[:, 0].cpu()
    return ShiftDraw(clip_shift=_draw_positions(has_word[clip_video], generator).to(device),
                     word_shift=_draw_positions(sentence_mask.bool().cpu()[word_video], generator).to(device))


def temporal_shift_loss_from_draw(clip: torch.Tensor, word: torch.Tensor, draw: ClipWordDraw, shift: ShiftDraw,
                                  word_context: ContextHead, clip_context: ContextHead,
                                  temperature: float) -> torch.Tensor:
    """Both directions for given draws; ``clip`` ``(B, M, D)``, ``word`` ``(B, M, L, D)`` L2-normalised."""
    b, m = draw.clip_queries.unbind(1)
    p = shift.clip_shift
    shifted_word = word_context(word[b, p, draw.word_anchor[b, p]], p - m)  # (Nc, D)
    clip_to_word = info_nce(clip[b, m], shifted_word, word[b[:, None], m[:, None], draw.clip_negatives], temperature)
    b, m, l = draw.word_queries.unbind(1)
    p = shift.word_shift
    shifted_clip = clip_context(clip[b, p], p - draw.clip_anchor[b, m, l])  # (Nw, D)
    word_to_clip = info_nce(word[b, m, l], shifted_clip, clip[b[:, None], draw.word_negatives], temperature)
    return clip_to_word + word_to_clip


class TemporalShiftLoss(nn.Module):
    """The temporal-aware contrastive loss; see the module docstring. The context heads are the model's
    (this module holds no parameters) and are passed to :meth:`forward`."""

    def __init__(self, temperature: float = 0.07):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, clip: torch.Tensor, word: torch.Tensor, sentence_mask: torch.Tensor, draw: ClipWordDraw,
                word_context: ContextHead, clip_context: ContextHead,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """``draw``: the fine-grained draw of the same features (:func:`lfvila.losses.clip_word.draw_clip_word`)."""
        shift = draw_shifts(draw, sentence_mask, generator)
        return temporal_shift_loss_from_draw(clip, word, draw, shift, word_context, clip_context, self.temperature)
