"""Sample plans -> batch tensors: JPEG decoding, tokenization, stage-2 masking.

Batch contract (see README, "Batches"): ``video`` uint8 ``(B, 3, T, H, W)``, ``text_ids`` and
``text_mask`` long ``(B, M, L)``, ``sentence_mask`` bool ``(B, M)``, ``keys``; stage 2 adds
``mlm_ids`` and ``mlm_labels`` ``(B, M, L)`` (-100 where not masked).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import simplejpeg
import torch

from lfvila.data.config import DataConfig
from lfvila.data.sampling import SamplePlan, SkipSample
from lfvila.data.transforms import decode_min_size, resize_crop_frames

IGNORE_INDEX = -100  # label of tokens MLM does not predict (torch cross-entropy's ignore_index)


def decode_frames(jpegs: list[bytes], min_hw: tuple[int, int], fast: bool = False) -> torch.Tensor:
    """Decode JPEGs to uint8 ``(N, H, W, 3)``, DCT-downscaled as far as ``min_hw`` allows.

    Raises SkipSample("corrupt_jpeg") for undecodable data and ("frame_size_mismatch") when the
    frames of one sample differ in size.
    """
    frames = []
    for i, data in enumerate(jpegs):
        try:
            frames.append(simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=fast, fastupsample=fast,
                                                 min_height=min_hw[0], min_width=min_hw[1]))
        except (ValueError, TypeError, OSError) as exc:
            raise SkipSample("corrupt_jpeg", f"frame {i}: {exc}") from None
    if any(f.shape != frames[0].shape for f in frames):
        raise SkipSample("frame_size_mismatch", str(sorted({f.shape for f in frames})))
    return torch.from_numpy(np.stack(frames))


def render_video(plan: SamplePlan, cfg: DataConfig) -> torch.Tensor:
    """The sample's clip frames: uint8 ``(T, 3, H, W)`` (channels-last memory), cropped, resized, flipped."""
    frames = decode_frames(plan.jpegs, decode_min_size(plan.box, cfg.crop), cfg.jpeg_fast)  # (N, h, w, 3)
    distinct = resize_crop_frames(frames, plan.box, cfg.crop, plan.flip)  # (N, 3, H, W)
    return distinct[torch.as_tensor(plan.frame_ids)]  # (T, 3, H, W), repeats where clips are short


class Tokenizer:
    """BERT uncased WordPiece from a local directory: ``[CLS] ... [SEP]`` padded/truncated to L."""

    def __init__(self, bert_dir: str, max_tokens: int):
        from transformers import BertTokenizerFast

        from lfvila.text import resolve_bert_dir

        # Our batches are a few dozen sentences: tokenizers' thread pool gains nothing here and,
        # once used, makes forked DataLoader workers warn and fall back to one thread anyway.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.tokenizer = BertTokenizerFast.from_pretrained(str(resolve_bert_dir(bert_dir)))
        self.max_tokens = max_tokens
        self.special_ids = np.array(sorted(self.tokenizer.all_special_ids), dtype=np.int64)
        self.mask_id = self.tokenizer.mask_token_id
        self.vocab_size = len(self.tokenizer)

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """``texts`` -> ids, mask int64 ``(len(texts), L)``."""
        enc = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.max_tokens,
                             return_tensors="np", return_token_type_ids=False)
        return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)


def mask_tokens(ids: np.ndarray, mask: np.ndarray, tokenizer: Tokenizer, probability: float,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """BERT MLM masking of one sample's ``(M, L)`` ids: ``probability`` of the real, non-special
    tokens are chosen; of those 80 % become [MASK], 10 % a random token, 10 % stay. Returns
    (masked ids, labels with IGNORE_INDEX where not chosen)."""
    candidates = (mask == 1) & ~np.isin(ids, tokenizer.special_ids)
    chosen = candidates & (rng.random(ids.shape) < probability)
    labels = np.where(chosen, ids, IGNORE_INDEX)
    action = rng.random(ids.shape)
    random_tokens = rng.integers(0, tokenizer.vocab_size, ids.shape)
    masked = np.where(chosen & (action < 0.8), tokenizer.mask_id, ids)
    masked = np.where(chosen & (action >= 0.8) & (action < 0.9), random_tokens, masked)
    return masked, labels


@dataclass
class RenderedSample:
    plan: SamplePlan
    video: torch.Tensor  # uint8 (T, 3, H, W)


def collate(samples: list[RenderedSample], cfg: DataConfig, tokenizer: Tokenizer, stage: int) -> dict:
    """Stack rendered samples into the batch dict (see module docstring)."""
    b, m, length = len(samples), cfg.n_sentences, cfg.max_tokens
    video = torch.empty((b, 3, cfg.n_frames, *cfg.crop), dtype=torch.uint8)
    for i, s in enumerate(samples):
        video[i].copy_(s.video.permute(1, 0, 2, 3))  # (T, 3, H, W) -> (3, T, H, W)
    texts = [t for s in samples for t in s.plan.texts]
    flat_ids, flat_mask = tokenizer(texts)  # (sum of n_i, L)
    ids = np.zeros((b, m, length), dtype=np.int64)  # padded sentences: all-zero ids and mask
    mask = np.zeros((b, m, length), dtype=np.int64)
    sentence_mask = np.zeros((b, m), dtype=bool)
    row = 0
    for i, s in enumerate(samples):
        n = len(s.plan.texts)
        ids[i, :n], mask[i, :n], sentence_mask[i, :n] = flat_ids[row:row + n], flat_mask[row:row + n], True
        row += n
    batch = {
        "video": video,
        "text_ids": torch.from_numpy(ids),
        "text_mask": torch.from_numpy(mask),
        "sentence_mask": torch.from_numpy(sentence_mask),
        "keys": [s.plan.key for s in samples],
    }
    if stage == 2:
        masked = [mask_tokens(ids[i], mask[i], tokenizer, cfg.mlm_probability,
                              np.random.default_rng(list(s.plan.mlm_seed))) for i, s in enumerate(samples)]
        batch["mlm_ids"] = torch.from_numpy(np.stack([x for x, _ in masked]))
        batch["mlm_labels"] = torch.from_numpy(np.stack([y for _, y in masked]))
    return batch
