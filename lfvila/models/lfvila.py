"""The LF-VILA model: HTWA video encoder + hierarchical text encoder + projections.

The model only computes features; the losses (``lfvila.losses``) and the training stages
(``lfvila.tasks``) decide what to compute and what to train.

Shapes (paper config): video ``(B, 3, 32, 192, 320)`` -> final map ``(B, 32, 3, 5, 1024)`` -> per frame
2x3 max-pooled tokens ``(B, 32*6, 1024)``; clip ``c`` = mean of its 8 frames x 6 tokens -> ``(B, 4, 1024)``;
text ``(B, 4, 50)`` -> sentence ``(B, 4, 1024)``, paragraph ``(B, 1024)``; each projected to
``embed_dim`` and L2-normalised.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lfvila.models.text import TextEncoder, TextEncoderConfig
from lfvila.models.video import VideoEncoder, VideoEncoderConfig, pool_clip_features


@dataclass
class ModelConfig:
    """The whole model. Defaults are the paper's (BERT-large from a local ``text.bert_dir``).

    frames_per_clip: consecutive frames forming one clip (8: 32 frames = 4 clips); any multiple works.
    max_frames: length of the learned temporal embedding of the cross-modal video tokens (>= T).
    Both are the data's to say: ``None`` (a recipe leaves them out) takes them from the data section
    (``TrainConfig`` sets ``frames_per_clip = data.frames_per_sentence``, ``max_frames = data.n_frames``);
    the presets (``paper``, ``tiny``) set them, for a model built without a training recipe.
    tokens_per_frame: video tokens per frame after the 2x3 max-pool (6 for a 3x5 final grid).
    context_projection: build LocVTP's two context projection heads (``word_context``,
    ``clip_context``); a training recipe sets it from ``task.name: locvtp``.
    """

    video: VideoEncoderConfig = field(default_factory=VideoEncoderConfig.paper)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig.paper)
    embed_dim: int = 1024
    frames_per_clip: int | None = None
    max_frames: int | None = None
    tokens_per_frame: int = 6
    context_projection: bool = False

    def __post_init__(self) -> None:
        for name in ("embed_dim", "frames_per_clip", "max_frames", "tokens_per_frame"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"model.{name} must be >= 1, got {value}")
        if None not in (self.max_frames, self.frames_per_clip) and self.max_frames < self.frames_per_clip:
            raise ValueError(f"model.max_frames ({self.max_frames}) must be >= frames_per_clip ({self.frames_per_clip})")

    @classmethod
    def paper(cls, bert_dir: str = "bert-large-uncased", **video_overrides) -> "ModelConfig":
        """LF-VILA as published: 89M HTWA encoder, BERT-large split 8/4/12, 1024-d joint space."""
        return cls(video=VideoEncoderConfig.paper(**video_overrides), text=TextEncoderConfig.paper(bert_dir),
                   embed_dim=1024, frames_per_clip=8, max_frames=32)

    @classmethod
    def tiny(cls, **video_overrides) -> "ModelConfig":
        """CPU-sized: tiny HTWA (out 128, input 32 x 48 x 80), MiniLM BERT split 2/2/2, 128-d joint space."""
        return cls(video=VideoEncoderConfig.tiny(**video_overrides), text=TextEncoderConfig.tiny(), embed_dim=128,
                   frames_per_clip=8, max_frames=32)


class VideoTokenEmbeddings(nn.Module):
    """Pooled video tokens -> cross-modal input: (project to text width) + temporal + spatial position, LayerNorm.

    ``(B, T*k, Cv)`` -> ``(B, T*k, Ct)``; the projection exists only when ``Cv != Ct`` (paper: both 1024).
    """

    def __init__(self, video_width: int, text_width: int, max_frames: int, tokens_per_frame: int):
        super().__init__()
        self.tokens_per_frame = tokens_per_frame
        self.proj = nn.Linear(video_width, text_width) if video_width != text_width else nn.Identity()
        self.temporal = nn.Parameter(0.02 * torch.randn(1, max_frames, 1, text_width))
        self.spatial = nn.Parameter(0.02 * torch.randn(1, 1, tokens_per_frame, text_width))
        self.norm = nn.LayerNorm(text_width)  # default eps 1e-5, as released

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, n, _ = tokens.shape
        k = self.tokens_per_frame
        if n % k or n // k > self.temporal.shape[1]:
            raise ValueError(f"{n} video tokens are not T x {k} with T <= model.max_frames={self.temporal.shape[1]}")
        x = self.proj(tokens).reshape(b, n // k, k, -1)  # (B, T, k, Ct)
        x = x + self.temporal[:, : n // k] + self.spatial
        return self.norm(x).flatten(1, 2)  # (B, T*k, Ct)


class ContextProjection(nn.Module):
    """LocVTP's context projection head: ``x + E_sign(sign(offset)) + E_dist(|offset|)``, ``(N, D)`` -> ``(N, D)``.

    Each embedding is a ``Linear(1, D)`` of the offset's sign and of its distance in clip positions,
    as released. They start small (normal 0.02, zero bias; PyTorch's default would give them a norm of
    about ``sqrt(D / 3)``, swamping the L2-normalised features they are added to).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.sign = nn.Linear(1, dim)
        self.distance = nn.Linear(1, dim)
        for linear in (self.sign, self.distance):
            nn.init.normal_(linear.weight, std=0.02)
            nn.init.zeros_(linear.bias)

    def forward(self, features: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """``features`` ``(N, D)``, ``offset`` ``(N,)`` integer positions -> ``(N, D)`` (not normalised)."""
        offset = offset.to(self.sign.weight.dtype)[:, None]  # (N, 1)
        return features + self.sign(offset.sign()) + self.distance(offset.abs())


class LFVILA(nn.Module):
    """Video and text towers with their projections into the joint space (and the stage-2 fusion)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        for name, source in (("frames_per_clip", "data.frames_per_sentence"), ("max_frames", "data.n_frames")):
            if getattr(cfg, name) is None:
                raise ValueError(f"model.{name} is unset: a training recipe derives it from {source} "
                                 f"(build the model from a TrainConfig), or set it")
        self.cfg = cfg
        self.video = VideoEncoder(cfg.video)
        self.text = TextEncoder(cfg.text)
        video_width, text_width = self.video.out_dim, self.text.width
        self.clip_proj = nn.Linear(video_width, cfg.embed_dim)
        self.video_proj = nn.Linear(video_width, cfg.embed_dim)
        self.sentence_proj = nn.Linear(text_width, cfg.embed_dim)
        self.paragraph_proj = nn.Linear(text_width, cfg.embed_dim)
        # The cross-modal input exists only when there are cross-modal layers, so every parameter is usable.
        self.video_tokens = (
            VideoTokenEmbeddings(video_width, text_width, cfg.max_frames, cfg.tokens_per_frame)
            if cfg.text.cross_layers else None
        )
        # LocVTP's heads exist only for the task that trains them, so every parameter is usable.
        self.word_context = ContextProjection(cfg.embed_dim) if cfg.context_projection else None
        self.clip_context = ContextProjection(cfg.embed_dim) if cfg.context_projection else None

    def encode_video(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        """``video`` float ``(B, 3, T, H, W)`` normalised -> features.

        clip: ``(B, M, D)`` L2-normed, M = T / frames_per_clip, pooled from the clip tap (``video.clip_features``);
        global: ``(B, D)`` L2-normed, from the mean of the final map's clip features;
        tokens: ``(B, T*k, Cv)`` pooled final-map tokens (the cross-modal video input).
        """
        t = video.shape[2]
        if t % self.cfg.frames_per_clip:
            raise ValueError(f"{t} frames are not a multiple of model.frames_per_clip={self.cfg.frames_per_clip}")
        n_clips = t // self.cfg.frames_per_clip
        out = self.video(video)
        final_clips, tokens = pool_clip_features(out.final, n_clips, self.cfg.video.token_pool)  # (B, M, Cv)
        if out.clip_source is out.final:
            clips = final_clips
        else:
            clips, _ = pool_clip_features(out.clip_source, n_clips, self.cfg.video.token_pool)
        return {
            "clip": F.normalize(self.clip_proj(clips), dim=-1),
            "global": F.normalize(self.video_proj(final_clips.mean(dim=1)), dim=-1),
            "tokens": tokens,
        }

    def encode_text(
        self, text_ids: torch.Tensor, text_mask: torch.Tensor, sentence_mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """``text_ids``/``text_mask`` ``(B, M, L)``, ``sentence_mask`` ``(B, M)`` -> features.

        sentence: ``(B, M, D)`` L2-normed (padded sentences are meaningless: mask them);
        paragraph: ``(B, D)`` L2-normed; tokens ``(B, 1 + M*L, Ct)`` and token_mask ``(B, 1 + M*L)`` bool:
        the paragraph-layer outputs, input of :meth:`fuse`.
        """
        out = self.text(text_ids, text_mask, sentence_mask)
        return {
            "sentence": F.normalize(self.sentence_proj(out.sentence), dim=-1),
            "paragraph": F.normalize(self.paragraph_proj(out.paragraph), dim=-1),
            "tokens": out.tokens,
            "token_mask": out.token_mask,
        }

    def encode_sentences(
        self, text_ids: torch.Tensor, text_mask: torch.Tensor, sentence_mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The sentence layers alone (no paragraph layers): sentence and word features.

        sentence: ``(B, M, D)`` L2-normed, equal to :meth:`encode_text`'s; word: ``(B, M, L, D)`` every
        token's sentence-layer output through the same sentence projection (one text projection for
        sentences and words, as in LocVTP), L2-normed; word_mask: ``(B, M, L)`` bool, the real words
        (real tokens other than ``[CLS]`` and ``[SEP]``).
        """
        token_valid = text_mask.bool() & sentence_mask.bool()[..., None]  # (B, M, L)
        tokens = self.text.encode_sentences(text_ids, token_valid)  # (B, M, L, Ct)
        word = F.normalize(self.sentence_proj(tokens), dim=-1)  # (B, M, L, D); position 0 is [CLS]
        return {"sentence": word[:, :, 0], "word": word, "word_mask": word_positions(token_valid)}

    def fuse(self, text_tokens: torch.Tensor, text_token_mask: torch.Tensor, video_tokens: torch.Tensor) -> torch.Tensor:
        """Cross-modal encoder: text tokens ``(B, S, Ct)`` + pooled video tokens ``(B, N, Cv)`` -> ``(B, S + N, Ct)``.

        Position 0 is the paragraph token (the matching head reads it); positions ``1..S-1`` are the words.
        """
        if self.video_tokens is None:
            raise ValueError("this model has no cross-modal layers (model.text.cross_layers = 0)")
        return self.text.fuse(text_tokens, text_token_mask, self.video_tokens(video_tokens))

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(..., Ct)`` cross-modal outputs at text positions -> ``(..., vocab)`` MLM logits."""
        return self.text.mlm_head(hidden)

    def match_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(B, S + N, Ct)`` cross-modal output -> ``(B, 2)`` video-text matching logits (1 = matched)."""
        return self.text.match_head(hidden)


def word_positions(token_valid: torch.Tensor) -> torch.Tensor:
    """Real tokens ``(..., L)`` (a prefix per sentence: ``[CLS] words [SEP] padding``) -> the words alone."""
    count = token_valid.sum(dim=-1, keepdim=True)  # (..., 1)
    position = torch.arange(token_valid.shape[-1], device=token_valid.device)
    return token_valid.bool() & (position > 0) & (position < count - 1)


def build_model(cfg: ModelConfig) -> LFVILA:
    """Construct LF-VILA (loading BERT weights from ``cfg.text.bert_dir`` when ``init_from_pretrained``)."""
    return LFVILA(cfg)
