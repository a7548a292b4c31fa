"""Training stages as objects: each takes a batch and returns its named, already weighted losses.

Stage 1 trains the two towers with the global video-paragraph contrastive loss and MTC.
The retrieval task (``task.name: retrieval``) fine-tunes the same towers on whole videos and whole
paragraphs with the global contrastive loss alone, as the release's retrieval fine-tuning does.
Stage 2 freezes what stage 1 learned (video encoder, projections, BERT embeddings, sentence and
paragraph layers and embeddings) and trains the cross-modal layers with MLM and video-text matching.
The LocVTP task (``task.name: locvtp``) trains the same towers with the objectives of LocVTP (Cao et
al., ECCV 2022): a coarse clip-sentence contrastive loss with soft targets, a fine-grained clip-word
loss and a temporal-aware loss through the model's context projection heads.
Freezing happens here, in the task constructor: the model has no notion of stages.

Batches follow the loader contract: ``video`` float ``(B, 3, T, H, W)`` (already normalised),
``text_ids`` / ``text_mask`` ``(B, M, L)``, ``sentence_mask`` ``(B, M)``; stage 2 adds ``mlm_ids`` and
``mlm_labels`` ``(B, M, L)`` (-100 where not masked).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from lfvila.losses import (ClipWordLoss, GlobalContrastiveLoss, MLMLoss, MTCLoss, SoftTargetContrastiveLoss,
                           TemporalShiftLoss, VTMLoss, draw_clip_word, mismatch_pairs)
from lfvila.models.lfvila import LFVILA


TASK_NAMES = ("pretrain", "retrieval", "locvtp")


@dataclass
class TaskConfig:
    """Which stage, and its loss weights and options. Defaults are the released ones.

    mtc_reference_negatives reproduces the released code's MTC negatives (the first "other video"
    negative is the key's own video); only for compatibility experiments.
    gather_across_ranks: contrastive losses see the negatives of every rank (all-gather with gradient).
    coarse_* / fine_* / temporal_*: the LocVTP task's three losses (``lfvila.losses.soft_contrastive``,
    ``clip_word``, ``temporal_shift``). Released: fine and temporal weight 10 (``FGWEIGHT``), temperature
    0.07, 4 negatives; coarse weight 1 at temperature 1 on unnormalised features (see
    ``soft_contrastive`` for why the defaults here, for L2-normalised features, are 0.05).
    """

    # "pretrain": the stage-``stage`` pre-training task; "retrieval": paragraph-to-video retrieval
    # fine-tuning (global contrastive only, on data.sampling=whole_video samples; stage 1 model).
    name: str = "pretrain"
    stage: int = 1
    global_weight: float = 1.0
    global_temperature: float = 0.05
    mtc_weight: float = 0.25
    mtc_temperature: float = 0.05
    mtc_keys: int = 2
    mtc_values: int = 2
    mtc_negatives: int = 3
    mtc_reference_negatives: bool = False
    mlm_weight: float = 1.0
    vtm_weight: float = 10.0
    # The released VTM negatives (first half of the batch rolled among itself, see
    # lfvila.losses.vtm.mismatch_pairs) instead of the next sample's video; for reference runs.
    vtm_reference_pairing: bool = False
    # Stage 2: the frozen modules follow the model's mode (train: dropout and stochastic depth on),
    # as in the release, whose trainer put the whole model in train mode; false (lfvila): they run in
    # eval mode, so the frozen features are the deterministic ones stage 1 learned.
    frozen_train_mode: bool = False
    coarse_weight: float = 1.0
    coarse_temperature: float = 0.05
    coarse_target_temperature: float = 0.05
    coarse_reference_targets: bool = False
    fine_weight: float = 10.0
    fine_temperature: float = 0.07
    fine_negatives: int = 4
    temporal_weight: float = 10.0
    temporal_temperature: float = 0.07
    gather_across_ranks: bool = True

    def __post_init__(self) -> None:
        if self.name not in TASK_NAMES:
            raise ValueError(f"task.name must be one of {TASK_NAMES}, got {self.name!r}")
        if self.stage not in (1, 2):
            raise ValueError(f"task.stage must be 1 or 2, got {self.stage}")
        if self.name in ("retrieval", "locvtp") and self.stage != 1:
            raise ValueError(f"task.stage must be 1 for task.name={self.name} (the dual encoder), got {self.stage}")
        for name in ("global_weight", "mtc_weight", "mlm_weight", "vtm_weight", "coarse_weight", "fine_weight",
                     "temporal_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"task.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("global_temperature", "mtc_temperature", "coarse_temperature", "coarse_target_temperature",
                     "fine_temperature", "temporal_temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"task.{name} must be > 0, got {getattr(self, name)}")
        if self.mtc_keys < 1:
            raise ValueError(f"task.mtc_keys must be >= 1, got {self.mtc_keys}")
        if self.mtc_values < 2:
            raise ValueError(f"task.mtc_values must be >= 2 (a temporal choice), got {self.mtc_values}")
        if self.mtc_negatives < 0:
            raise ValueError(f"task.mtc_negatives must be >= 0, got {self.mtc_negatives}")
        if self.fine_negatives < 1:
            raise ValueError(f"task.fine_negatives must be >= 1, got {self.fine_negatives}")


def _parameters(modules: Iterable[nn.Module | None]) -> list[nn.Parameter]:
    """Unique parameters of ``modules`` (tied weights once), in order."""
    seen: dict[int, nn.Parameter] = {}
    for module in modules:
        if module is not None:
            for p in module.parameters():
                seen.setdefault(id(p), p)
    return list(seen.values())


class _Task:
    """Shared bookkeeping: which parameters train (``requires_grad`` set in the constructor)."""

    def __init__(self, model: LFVILA, cfg: TaskConfig, trainable: list[nn.Parameter]):
        self.model = model
        self.cfg = cfg
        self._trainable = trainable
        wanted = {id(p) for p in trainable}
        for p in model.parameters():
            p.requires_grad_(id(p) in wanted)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters this stage trains (everything else has ``requires_grad=False``)."""
        return list(self._trainable)


class Stage1Task(_Task):
    """Global video-paragraph contrastive loss + MTC; trains both towers and the four projections.

    The cross-modal layers, MLM / matching heads and video token embeddings take no part and are frozen,
    so DDP never waits for their gradients.
    """

    def __init__(self, model: LFVILA, cfg: TaskConfig):
        text = model.text
        modules = [model.video, text.embeddings, text.sentence_layers, text.paragraph_embeddings,
                   text.paragraph_layers, model.clip_proj, model.video_proj, model.sentence_proj,
                   model.paragraph_proj]
        super().__init__(model, cfg, _parameters(modules))
        self.global_loss = GlobalContrastiveLoss(cfg.global_temperature, gather=cfg.gather_across_ranks)
        self.mtc_loss = MTCLoss(cfg.mtc_temperature, cfg.mtc_keys, cfg.mtc_values, cfg.mtc_negatives,
                                cfg.mtc_reference_negatives, gather=cfg.gather_across_ranks)

    def losses(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """``{"global": ..., "mtc": ...}`` weighted; MTC draws from ``generator`` or the global CPU RNG."""
        video = self.model.encode_video(batch["video"])
        text = self.model.encode_text(batch["text_ids"], batch["text_mask"], batch["sentence_mask"])
        return self.feature_losses(video["global"], text["paragraph"], text["sentence"], video["clip"],
                                   batch["sentence_mask"], generator=generator)

    def feature_losses(self, video: torch.Tensor, paragraph: torch.Tensor, sentence: torch.Tensor,
                       clip: torch.Tensor, sentence_mask: torch.Tensor, *, generator: torch.Generator | None = None,
                       gather: bool | None = None) -> dict[str, torch.Tensor]:
        """The weighted losses from features: ``video``, ``paragraph`` ``(B, D)``; ``sentence``, ``clip``
        ``(B, M, D)``; ``sentence_mask`` ``(B, M)``. ``gather=False`` scores these rows alone, without
        any cross-rank collective (held-out losses, see ``lfvila.trainer.evaluate``)."""
        if clip.shape[1] != sentence.shape[1]:
            raise ValueError(f"{clip.shape[1]} clips but {sentence.shape[1]} sentences per sample")
        out = {"global": self.cfg.global_weight * self.global_loss(video, paragraph, gather=gather)}
        if self.cfg.mtc_weight > 0:
            out["mtc"] = self.cfg.mtc_weight * self.mtc_loss(sentence, clip, sentence_mask, generator=generator,
                                                             gather=gather)
        return out


class Stage2Task(_Task):
    """MLM (matched pairs only) + video-text matching on the cross-modal layers.

    Frozen (as in the paper): the video encoder, the four projections, the BERT embeddings, the
    sentence and paragraph layers and the paragraph embeddings. Trained: the cross-modal layers, the
    video token embeddings, the MLM head (transform, bias and its own decoder matrix, as released; the
    word embeddings stay frozen) and the matching head. Frozen modules also stay in eval mode (no dropout).
    """

    def __init__(self, model: LFVILA, cfg: TaskConfig):
        if model.video_tokens is None:
            raise ValueError("stage 2 needs cross-modal layers: set model.text.cross_layers > 0")
        text = model.text
        self.frozen_modules: list[nn.Module] = [
            model.video, model.clip_proj, model.video_proj, model.sentence_proj, model.paragraph_proj,
            text.embeddings, text.sentence_layers, text.paragraph_embeddings, text.paragraph_layers,
        ]
        frozen = {id(p) for p in _parameters(self.frozen_modules)}
        candidates = _parameters([text.cross_layers, text.mlm_head, text.match_head, model.video_tokens])
        super().__init__(model, cfg, [p for p in candidates if id(p) not in frozen])
        self.mlm_loss = MLMLoss()
        self.vtm_loss = VTMLoss()

    def losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``{"mlm": ..., "vtm": ...}`` weighted. The first B // 2 samples get another sample's video."""
        if not self.cfg.frozen_train_mode:
            for module in self.frozen_modules:
                module.eval()
        if "mlm_ids" not in batch or "mlm_labels" not in batch:
            raise ValueError("stage 2 batches need mlm_ids and mlm_labels (build the loader with stage=2)")
        with torch.no_grad():  # everything below the cross-modal layers is frozen
            video = self.model.encode_video(batch["video"])
            text = self.model.encode_text(batch["mlm_ids"], batch["text_mask"], batch["sentence_mask"])
        b = text["tokens"].shape[0]
        video_index, vtm_labels = mismatch_pairs(b, device=text["tokens"].device,
                                                 reference=self.cfg.vtm_reference_pairing)
        hidden = self.model.fuse(text["tokens"], text["token_mask"], video["tokens"][video_index])  # (B, S+N, C)
        out = {"vtm": self.cfg.vtm_weight * self.vtm_loss(self.model.match_logits(hidden), vtm_labels)}

        # MLM on matched pairs only; the head runs on the masked positions alone (vocab-sized logits are big).
        matched = vtm_labels.bool()
        labels = batch["mlm_labels"][matched].flatten(1)  # (B', M*L)
        word_hidden = hidden[matched, 1 : 1 + labels.shape[1]]  # (B', M*L, C), after the paragraph token
        masked = labels != -100
        logits = self.model.mlm_logits(word_hidden[masked])  # (K, vocab)
        out["mlm"] = self.cfg.mlm_weight * self.mlm_loss(logits, labels[masked])
        return out


class RetrievalTask(_Task):
    """Paragraph-to-video retrieval fine-tuning: the global video-paragraph contrastive loss (at
    ``global_temperature``, 0.05 as released, gathered across ranks) between each whole video's
    global feature and its paragraph feature.

    Trained: the video encoder, the BERT embeddings, sentence and paragraph layers, the paragraph
    embeddings and the video-global and paragraph projections (the release's retrieval model has only
    those two). Frozen, as they take no part: the clip and sentence projections, the local clip tap,
    the cross-modal layers and heads.
    """

    def __init__(self, model: LFVILA, cfg: TaskConfig):
        text = model.text
        unused = _parameters([getattr(model.video, "local_merge", None), getattr(model.video, "local_norm", None)])
        unused_ids = {id(p) for p in unused}
        modules = [model.video, text.embeddings, text.sentence_layers, text.paragraph_embeddings,
                   text.paragraph_layers, model.video_proj, model.paragraph_proj]
        super().__init__(model, cfg, [p for p in _parameters(modules) if id(p) not in unused_ids])
        self.global_loss = GlobalContrastiveLoss(cfg.global_temperature, gather=cfg.gather_across_ranks)

    def losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``{"global": ...}`` weighted."""
        video = self.model.encode_video(batch["video"])["global"]  # (B, D)
        paragraph = self.model.encode_text(batch["text_ids"], batch["text_mask"], batch["sentence_mask"])["paragraph"]
        return {"global": self.cfg.global_weight * self.global_loss(video, paragraph)}

    def evaluate(self, batches: Iterable[dict], ctx: Any, *, autocast: Any = None, **_: Any) -> dict[str, float]:
        """Retrieval over the whole val set (``lfvila.eval.retrieval``): t2v / v2t recalls and ranks."""
        from lfvila.eval.retrieval import evaluate_retrieval

        return evaluate_retrieval(self.model, batches, ctx, autocast).metrics


class LocVTPTask(_Task):
    """LocVTP's objectives on the LF-VILA towers: coarse clip-sentence contrast with soft targets,
    fine-grained clip-word correspondence, temporal-aware contrast through the context heads.

    A LocVTP "video segment and its caption" is one clip and its own sentence. Features: clips
    ``(B, M, D)`` from ``encode_video``; sentences ``(B, M, D)`` and words ``(B, M, L, D)`` from the
    sentence layers (``encode_sentences``), the words through the sentence projection as in LocVTP.
    Trained: the video encoder up to the clip features, the BERT embeddings and sentence layers, the
    clip and sentence projections and the two context heads. Frozen, as they take no part: the
    paragraph embeddings and layers, the video-global and paragraph projections, the cross-modal
    layers and heads, and with a local clip tap (``model.video.clip_features: local``) the video
    stages after the tap and the final norm (the LocVTP recipes tap the final map, as LocVTP does).
    """

    def __init__(self, model: LFVILA, cfg: TaskConfig):
        if model.word_context is None or model.clip_context is None:
            raise ValueError("task.name=locvtp needs the context projection heads: set model.context_projection: "
                             "true (a training recipe sets it from task.name)")
        text, video = model.text, model.video
        after_tap = [video.layers[video.tap_stage:], video.norm] if video.tap_stage is not None else []
        unused = {id(p) for p in _parameters(after_tap)}
        modules = [video, text.embeddings, text.sentence_layers, model.clip_proj, model.sentence_proj,
                   model.word_context, model.clip_context]
        super().__init__(model, cfg, [p for p in _parameters(modules) if id(p) not in unused])
        self.coarse_loss = SoftTargetContrastiveLoss(cfg.coarse_temperature, cfg.coarse_target_temperature,
                                                     cfg.coarse_reference_targets, gather=cfg.gather_across_ranks)
        self.fine_loss = ClipWordLoss(cfg.fine_temperature, cfg.fine_negatives)
        self.temporal_loss = TemporalShiftLoss(cfg.temporal_temperature)

    def losses(self, batch: dict[str, Any], generator: torch.Generator | None = None,
               gather: bool | None = None) -> dict[str, torch.Tensor]:
        """``{"coarse": ..., "fine": ..., "temporal": ...}`` weighted (a loss of weight 0 is left out);
        the random draws come from ``generator`` or the global CPU RNG; ``gather=False`` contrasts this
        rank's pairs alone, without any collective."""
        clip = self.model.encode_video(batch["video"])["clip"]  # (B, M, D)
        text = self.model.encode_sentences(batch["text_ids"], batch["text_mask"], batch["sentence_mask"])
        return self.losses_from_features(clip, text["sentence"], text["word"], batch["sentence_mask"],
                                         text["word_mask"], generator=generator, gather=gather)

    def held_out_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """:meth:`losses` of one val batch alone (no collective: ranks may hold different batch counts)."""
        return self.losses(batch, gather=False)

    def losses_from_features(self, clip: torch.Tensor, sentence: torch.Tensor, word: torch.Tensor,
                             sentence_mask: torch.Tensor, word_mask: torch.Tensor, *,
                             generator: torch.Generator | None = None,
                             gather: bool | None = None) -> dict[str, torch.Tensor]:
        """The weighted losses from ``clip``, ``sentence`` ``(B, M, D)``, ``word`` ``(B, M, L, D)`` and the
        masks ``(B, M)``, ``(B, M, L)``."""
        cfg = self.cfg
        if clip.shape[1] != sentence.shape[1]:
            raise ValueError(f"{clip.shape[1]} clips but {sentence.shape[1]} sentences per sample")
        out = {}
        if cfg.coarse_weight > 0:
            out["coarse"] = cfg.coarse_weight * self.coarse_loss(clip, sentence, sentence_mask, gather=gather)
        if cfg.fine_weight > 0 or cfg.temporal_weight > 0:
            draw = draw_clip_word(clip, word, sentence_mask, word_mask, cfg.fine_negatives, generator)
            if cfg.fine_weight > 0:
                out["fine"] = cfg.fine_weight * self.fine_loss(clip, word, sentence_mask, word_mask, draw=draw)
            if cfg.temporal_weight > 0:
                out["temporal"] = cfg.temporal_weight * self.temporal_loss(
                    clip, word, sentence_mask, draw, self.model.word_context, self.model.clip_context,
                    generator=generator)
        return out

    @staticmethod
    def retrieval_features(video: dict[str, torch.Tensor], text: dict[str, torch.Tensor],
                           sentence_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The video and paragraph features this task's retrieval is scored with, ``(B, D)`` each: the
        L2-normalised mean of the real clips and of the real sentences (LocVTP pools a segment's clip
        features by their mean; this task trains neither the video-global nor the paragraph feature).

        Window samples pair clip m with sentence m, so the clips of padded sentences are left out;
        whole-video samples (``lfvila eval --task retrieval``) have their own clip count, all real.
        """
        def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # (B, P, D), (B, P) -> (B, D)
            weights = mask.to(x.dtype)[..., None]
            return F.normalize((x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0), dim=-1)

        clip = video["clip"]  # (B, C, D)
        clip_mask = sentence_mask if clip.shape[1] == sentence_mask.shape[1] else clip.new_ones(clip.shape[:2])
        return masked_mean(clip, clip_mask), masked_mean(text["sentence"], sentence_mask)


def build_task(model: LFVILA, cfg: TaskConfig) -> Stage1Task | Stage2Task | RetrievalTask | LocVTPTask:
    """The task object of ``cfg.name`` (and ``cfg.stage``)."""
    if cfg.name == "retrieval":
        return RetrievalTask(model, cfg)
    if cfg.name == "locvtp":
        return LocVTPTask(model, cfg)
    return Stage1Task(model, cfg) if cfg.stage == 1 else Stage2Task(model, cfg)
