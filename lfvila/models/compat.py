"""Released LF-VILA checkpoints <-> this model, and the switches that reproduce the released behaviour.

Key mapping (released ``LFVILA_Pretrain`` state_dict -> :class:`lfvila.models.lfvila.LFVILA`)::

    video_encoder.*                            -> video.*   (see lfvila.models.video.VIDEO_KEY_MAP_NOTES;
                                                             the untrained local tap is dropped)
    text_encoder.bert.embeddings.*             -> text.embeddings.*
    text_encoder.bert.encoder.layer.{i}.*      -> text.sentence_layers.{i}.*            i <  S
                                                  text.paragraph_layers.{i - S}.*       S <= i < S + P
                                                  text.cross_layers.{i - S - P}.*       S + P <= i
    text_encoder.bert.pooler.dense.*           -> text.match_head.pooler.dense.*
    text_encoder.seq_relationship.*            -> text.match_head.classifier.*
    text_encoder.cls.predictions.{bias,transform.*,decoder.weight} -> text.mlm_head.predictions.*
                                                  (the decoder is its own trained matrix, as released)
    text_encoder.cls.predictions.decoder.bias  -> text.mlm_head.predictions.decoder.bias (the tied bias)
    sent_embedding.position_embeddings.weight  -> text.paragraph_embeddings.position_embeddings.weight
    sent_embedding.segment_embeddings.weight   -> text.paragraph_embeddings.segment_embeddings.weight
    sent_embedding.norm.*                      -> text.paragraph_embeddings.norm.*
    video_token_pos.t_pos_embed                -> video_tokens.temporal      (1, 32, 1, C)
    video_token_pos.s_pos_embed                -> video_tokens.spatial       (1, 1, 6, C)
    video_token_pos.norm.*                     -> video_tokens.norm.*
    video_local_proj.*                         -> clip_proj.*
    text_local_proj.*                          -> sentence_proj.*
    video_global_proj.*                        -> video_proj.*
    text_global_proj.*                         -> paragraph_proj.*
    *.position_ids, *.relative_position_index, *.attn_mask  -> dropped (buffers, recomputed)

(S, P = ``text.sentence_layers``, ``text.paragraph_layers``: 8 and 4 for the released weights.)
Stage-1 checkpoints hold BERT layers 0-11 only and no ``video_token_pos``: the cross-modal part then
keeps its initialisation (BERT-large layers 12-23 when ``text.init_from_pretrained``), as in the released
stage-2 start. ``video_token_proj.*`` is this project's extension (video width != text width) and is
absent from released checkpoints, whose widths are equal.

Switches that reproduce the released behaviour (see :func:`released_compatible`):

* ``model.video.clip_features = "final"``: the released encoder lost its local tap, so clip features
  (MTC) pool the final stage, like the global feature.
* ``task.mtc_reference_negatives = True``: MTC "other video" negatives by roll 0, 1, 2 (the first is the
  key's own video).
* ``text.sentence_layers/paragraph_layers/cross_layers = 8/4/12``, ``text.max_sentences = 8``,
  ``model.max_frames = 32``, ``model.tokens_per_frame = 6`` (the paper presets).

* ``task.vtm_reference_pairing = True``: the released VTM negatives. The release rolls the first half
  of the batch by one among itself: text ``i < B//2`` gets video ``(i - 1) mod (B//2)`` (batch 4:
  ``[1, 0, 2, 3]``; with 2 or 3 samples the "mismatched" pair is the sample itself). lfvila's default
  gives it the next sample's video ``(i + 1) mod B`` (batch 4: ``[1, 2, 2, 3]``). The two differ on
  every batch of 4 or more samples.

Known remaining differences, none of which occurs on LF-VILA-8M pre-training data (every sample has its
4 sentences): with padded sentences the released paragraph token averaged the padded sentences' first
tokens too (here: real sentences only), and its per-sentence layers ran padded sentences with uniform
attention (their outputs are unused here). The released window attention defects at other resolutions
are described with the video mapping.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import torch

from lfvila.models.lfvila import LFVILA, ModelConfig
from lfvila.models.text import TextEncoderConfig, bert_layer_target
from lfvila.models.video import remap_released_video_keys

log = logging.getLogger(__name__)

BERT_LAYER = "text_encoder.bert.encoder.layer."
VIDEO_PREFIX = "video_encoder."

# Released prefix -> our prefix (longest first where one is a prefix of another).
PREFIXES: tuple[tuple[str, str], ...] = (
    ("text_encoder.bert.embeddings.", "text.embeddings."),
    ("text_encoder.bert.pooler.", "text.match_head.pooler."),
    ("text_encoder.seq_relationship.", "text.match_head.classifier."),
    ("text_encoder.cls.predictions.", "text.mlm_head.predictions."),
    ("sent_embedding.position_embeddings.", "text.paragraph_embeddings.position_embeddings."),
    ("sent_embedding.segment_embeddings.", "text.paragraph_embeddings.segment_embeddings."),
    ("sent_embedding.norm.", "text.paragraph_embeddings.norm."),
    ("video_token_pos.norm.", "video_tokens.norm."),
    ("video_token_proj.", "video_tokens.proj."),
    ("video_local_proj.", "clip_proj."),
    ("text_local_proj.", "sentence_proj."),
    ("video_global_proj.", "video_proj."),
    ("text_global_proj.", "paragraph_proj."),
)
EXACT: dict[str, str] = {
    "video_token_pos.t_pos_embed": "video_tokens.temporal",
    "video_token_pos.s_pos_embed": "video_tokens.spatial",
}
# Released buffers this model recomputes (never parameters): dropped with this reason.
DROPPED_SUFFIXES = ("position_ids", "token_type_ids", "relative_position_index", "attn_mask")
DROPPED_BUFFER = "a buffer this model recomputes"
DROPPED_LOCAL_TAP = "the released encoder's local tap, never used by the released model (untrained)"


@dataclass
class LoadReport:
    """What a load did, every key named.

    loaded / missing: our keys filled from the checkpoint / keeping their values (tied aliases of a
    loaded key count as loaded); unexpected: checkpoint keys with no place in this model;
    dropped: checkpoint key -> why it was deliberately not loaded.
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """The report as log lines: counts, then every missing, unexpected and dropped key."""
        out = [f"{len(self.loaded)} tensors loaded, {len(self.missing)} missing (keep their values), "
               f"{len(self.unexpected)} unexpected, {len(self.dropped)} dropped"]
        out += [f"  missing: {key}" for key in self.missing]
        out += [f"  unexpected: {key}" for key in self.unexpected]
        out += [f"  dropped: {key} ({why})" for key, why in sorted(self.dropped.items())]
        return out

    def log(self, logger: logging.Logger, source: object) -> None:
        """Every line at INFO, the missing and unexpected keys at WARNING."""
        head, *rest = self.lines()
        logger.info("loaded %s: %s", source, head)
        for line in rest:
            (logger.info if line.startswith("  dropped") else logger.warning)("%s", line)


def released_compatible(model_cfg: ModelConfig, task_cfg=None):
    """Copies of the configs with every switch that reproduces the released code turned on.

    Returns the model config (and the task config too when one is given).
    """
    model_cfg = dataclasses.replace(model_cfg, video=dataclasses.replace(model_cfg.video, clip_features="final"))
    if task_cfg is None:
        return model_cfg
    return model_cfg, dataclasses.replace(task_cfg, mtc_reference_negatives=True, vtm_reference_pairing=True)


def released_key_to_ours(key: str, text_cfg: TextEncoderConfig) -> str | None:
    """Our key for a released (non-video) key, or None when it has no place (or is a dropped buffer)."""
    if key.endswith(DROPPED_SUFFIXES):
        return None
    if key in EXACT:
        return EXACT[key]
    if key.startswith(BERT_LAYER):
        index, rest = key[len(BERT_LAYER):].split(".", 1)
        target = bert_layer_target(int(index), rest, text_cfg)
        return None if target is None else f"text.{target}"
    for released, ours in PREFIXES:
        if key.startswith(released):
            return ours + key[len(released):]
    return None


def _unwrap(state: dict) -> dict[str, torch.Tensor]:
    """Accept a bare state_dict or one nested under "model"/"module"/"state_dict"; strip a DDP "module." prefix."""
    for wrapper in ("model", "module", "state_dict"):
        if wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def convert_released_state_dict(
    state: dict, model_cfg: ModelConfig
) -> tuple[dict[str, torch.Tensor], list[str], dict[str, str]]:
    """Released keys -> our keys; returns the converted dict, the released keys that found no place,
    and the released keys deliberately dropped (key -> reason)."""
    state = _unwrap(state)
    converted: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    dropped: dict[str, str] = {}
    video_part = {k: v for k, v in state.items() if k.startswith(VIDEO_PREFIX)}
    video = remap_released_video_keys(video_part, prefix=VIDEO_PREFIX)
    for key, value in video.items():
        converted["video." + key] = value
    for key in video_part:
        if key.endswith("relative_position_index"):
            dropped[key] = DROPPED_BUFFER
        elif key[len(VIDEO_PREFIX):] not in video:
            dropped[key] = DROPPED_LOCAL_TAP
    for key, value in state.items():
        if key.startswith(VIDEO_PREFIX):
            continue
        target = released_key_to_ours(key, model_cfg.text)
        if target is None:
            if key.endswith(DROPPED_SUFFIXES):
                dropped[key] = DROPPED_BUFFER
            else:
                unexpected.append(key)
            continue
        converted[target] = value
    return converted, unexpected, dropped


def is_released_state_dict(state: dict) -> bool:
    """Whether ``state`` is laid out as a released LF-VILA checkpoint (not as this model's state_dict)."""
    return any(k.startswith((VIDEO_PREFIX, "text_encoder.")) for k in _unwrap(state))


def tied_aliases(model: torch.nn.Module) -> dict[str, str]:
    """Every parameter name that is a second name of another parameter -> the first name."""
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first:
            aliases[name] = first[id(param)]
        else:
            first[id(param)] = name
    return aliases


@torch.no_grad()
def load_released(model: LFVILA, source: str | PathLike | dict) -> LoadReport:
    """Load an official LF-VILA checkpoint (path to a ``torch.save``d state_dict, or the dict itself).

    Parameters the checkpoint does not hold keep their values (reported as ``missing``); a shape that
    differs raises ``ValueError`` naming the key. For the released numerics build the model with
    :func:`released_compatible` (``clip_features="final"``).
    """
    where = "released checkpoint (a state_dict)" if isinstance(source, dict) else f"released checkpoint {source}"
    if not isinstance(source, dict):
        source = torch.load(Path(source), map_location="cpu", weights_only=True)
    converted, unexpected, dropped = convert_released_state_dict(source, model.cfg)
    if model.cfg.video.clip_features != "final":
        log.warning("released weights were trained with clip features from the final stage; "
                    "set model.video.clip_features='final' to compute what the released model computes")
    own = model.state_dict()
    report = LoadReport(unexpected=sorted(unexpected), dropped=dropped)
    for key, value in converted.items():
        if key not in own:
            report.unexpected.append(key)
            continue
        if own[key].shape != value.shape:
            hint = " (set text.max_sentences to its rows)" if "segment_embeddings" in key else ""
            raise ValueError(f"released {key}: shape {tuple(value.shape)} != model {tuple(own[key].shape)}{hint}")
        own[key].copy_(value)
        report.loaded.append(key)
    loaded = set(report.loaded)
    for alias, name in tied_aliases(model).items():  # one tensor, two names: loading either fills both
        if name in loaded or alias in loaded:
            loaded |= {alias, name}
    report.missing = sorted(set(own) - loaded)
    report.log(log, where)
    return report


def released_key(key: str, text_cfg: TextEncoderConfig) -> str | None:
    """The released name of our state_dict key, or None when it has no released place."""
    if key.startswith("video."):
        rest = key[len("video."):]
        for ours, released in (("local_merge.", "local_feat_proj."), ("local_norm.", "norm_local.")):
            if rest.startswith(ours):
                rest = released + rest[len(ours):]
        return VIDEO_PREFIX + rest
    exact_inverse = {ours: released for released, ours in EXACT.items()}
    if key in exact_inverse:
        return exact_inverse[key]
    offsets = {"sentence_layers": 0, "paragraph_layers": text_cfg.sentence_layers,
               "cross_layers": text_cfg.sentence_layers + text_cfg.paragraph_layers}
    stack = next((name for name in offsets if key.startswith(f"text.{name}.")), None)
    if stack is not None:
        index, rest = key[len(f"text.{stack}."):].split(".", 1)
        return f"{BERT_LAYER}{offsets[stack] + int(index)}.{rest}"
    return next((r + key[len(o):] for r, o in PREFIXES if key.startswith(o)), None)


def export_released(model: LFVILA) -> dict[str, torch.Tensor]:
    """This model's weights under the released key names (the inverse of :func:`load_released`)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        released = released_key(key, model.cfg.text)
        if released is not None:
            out[released] = value
    return out
