"""Text to ids: BERT WordPiece tokenization padded to L, and stage 2's MLM masking."""
from __future__ import annotations

import os

import numpy as np

IGNORE_INDEX = -100  # label of tokens MLM does not predict (torch cross-entropy's ignore_index)


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
        # The Rust tokenizer underneath, set up once to truncate and pad to L: the same ids as
        # ``self.tokenizer(texts, padding="max_length", truncation=True, max_length=L)`` at half
        # the CPU time (the Python wrapper re-applies its settings on every call; BENCHMARKS.md).
        from tokenizers import Tokenizer as RustTokenizer

        self.encoder = RustTokenizer.from_str(self.tokenizer.backend_tokenizer.to_str())
        self.encoder.enable_truncation(max_length=max_tokens)
        self.encoder.enable_padding(length=max_tokens, pad_id=self.tokenizer.pad_token_id,
                                    pad_token=self.tokenizer.pad_token)

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """``texts`` -> ids, mask int64 ``(len(texts), L)``."""
        encodings = self.encoder.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64).reshape(len(texts), self.max_tokens)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64).reshape(len(texts), self.max_tokens)
        return ids, mask


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
