"""Paragraph-to-video retrieval over a whole test set, on any number of ranks.

As the release evaluates retrieval (``tools/trainer_retrieval.py``): every test video is read whole
(``data.sampling: whole_video``: a fixed linspace of frames over the whole video, its paragraph
merged to ``data.paragraph_sentences`` sentences), its paragraph feature and global video feature
(the projected, L2-normalised mean of its clip features) computed, and the metrics read off the
single ``(texts, videos)`` cosine-similarity matrix of the whole set, never per batch
(``lfvila.eval.retrieval_metrics``).

Each rank runs the model over its share of the shards without any collective (ranks may hold any
number of batches, none included); the one gather comes after. Features are then deduplicated by
sample key (each video once, the first copy kept) and sorted by key, so the matrix, and therefore
every figure, is the same for any number of ranks, workers or batch size.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from lfvila.atomic import atomic_write, atomic_write_text
from lfvila.eval.retrieval_metrics import retrieval_metrics
from lfvila.trainer.parallel import DistContext

log = logging.getLogger(__name__)

HEADLINE = tuple(f"{d}_{m}" for d in ("t2v", "v2t") for m in ("r1", "r5", "r10", "r50", "medr", "meanr"))
# What a retrieval evaluation overrides in a checkpoint's config: whole videos, no window.
WHOLE_VIDEO = ["data.sampling=whole_video"]

# (encode_video's output, encode_text's output, sentence_mask (B, M)) -> video, paragraph (B, D)
RetrievalFeatures = Callable[[dict, dict, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class RetrievalResult:
    metrics: dict[str, float]
    keys: list[str]  # row i of ``similarity`` is key i's paragraph, column j key j's video
    similarity: np.ndarray  # (texts, videos) float32


@torch.no_grad()
def collect_features(model: Any, batches: Iterable[dict], ctx: DistContext,
                     autocast: contextlib.AbstractContextManager | None = None,
                     features: RetrievalFeatures | None = None) -> dict[str, Any]:
    """This rank's ``keys``, ``paragraph`` and ``video`` ``(N, D)`` CPU float features. No collective.

    ``features``: how a task makes them from ``encode_video`` / ``encode_text``'s outputs (default the
    video-global and paragraph features)."""
    from lfvila.data.device import batch_to_device

    keys: list[str] = []
    paragraphs, videos = [], []
    for batch in batches:
        if not batch.get("keys"):  # a stream's tail can carry only skip counts
            continue
        batch = batch_to_device(batch, ctx.device)
        with autocast or contextlib.nullcontext():
            video_out = model.encode_video(batch["video"])
            text_out = model.encode_text(batch["text_ids"], batch["text_mask"], batch["sentence_mask"])
            if features is None:
                video, paragraph = video_out["global"], text_out["paragraph"]  # (B, D) each
            else:
                video, paragraph = features(video_out, text_out, batch["sentence_mask"])
        videos.append(video.float().cpu())
        paragraphs.append(paragraph.float().cpu())
        keys.extend(batch["keys"])
    empty = torch.empty(0)
    return {"keys": keys, "paragraph": torch.cat(paragraphs) if paragraphs else empty,
            "video": torch.cat(videos) if videos else empty}


def merge_by_key(parts: list[dict[str, Any]]) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Every rank's features, each key once (its first copy in rank order), sorted by key:
    ``(keys, paragraph (N, D), video (N, D))``."""
    first: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    duplicates = 0
    for part in parts:
        for i, key in enumerate(part["keys"]):
            if key in first:
                duplicates += 1
                continue
            first[key] = (part["paragraph"][i], part["video"][i])
    if duplicates:
        log.warning("retrieval evaluation: %d duplicate sample key(s) in the test shards, each counted once",
                    duplicates)
    keys = sorted(first)
    if not keys:
        return [], torch.empty(0, 0), torch.empty(0, 0)
    return keys, torch.stack([first[k][0] for k in keys]), torch.stack([first[k][1] for k in keys])


def evaluate_retrieval(model: Any, batches: Iterable[dict], ctx: DistContext,
                       autocast: contextlib.AbstractContextManager | None = None,
                       features: RetrievalFeatures | None = None) -> RetrievalResult:
    """Features of every rank's batches, gathered; metrics of the whole set (identical on every rank).

    ``batches`` should come from a loader with ``data.sampling: whole_video`` in val mode. The
    model is put in eval mode and back. An empty set gives ``{"n_videos": 0}``. ``features``: see
    :func:`collect_features`.
    """
    was_training = model.training
    model.eval()
    try:
        local = collect_features(model, batches, ctx, autocast, features)
    finally:
        model.train(was_training)
    keys, paragraph, video = merge_by_key(ctx.gather_objects(local))
    if not keys:
        log.warning("retrieval evaluation saw no samples")
        return RetrievalResult({"n_videos": 0.0}, [], np.zeros((0, 0), dtype=np.float32))
    similarity = (paragraph @ video.T).numpy().astype(np.float32)  # (texts, videos)
    return RetrievalResult({"n_videos": float(len(keys)), **retrieval_metrics(similarity)}, keys, similarity)


def write_retrieval_outputs(result: RetrievalResult, out_dir: Path, provenance: dict[str, Any]) -> Path:
    """``OUT/retrieval.json`` (provenance, ``n_videos``, ``metrics``), ``OUT/similarity.npy`` (texts x
    videos) and ``OUT/keys.json`` (their order); the JSON is written last. Returns its path."""
    out_dir.mkdir(parents=True, exist_ok=True)

    with atomic_write(out_dir / "similarity.npy") as f:
        np.save(f, result.similarity)
    atomic_write_text(out_dir / "keys.json", json.dumps(result.keys) + "\n")
    record = {**provenance, "n_videos": len(result.keys),
              "metrics": {k: v for k, v in result.metrics.items() if k != "n_videos"},
              "similarity": "similarity.npy", "keys": "keys.json",
              "similarity_layout": "rows: paragraphs, columns: videos, both in the order of keys.json"}
    path = out_dir / "retrieval.json"
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return path


def evaluate_retrieval_checkpoint(path: str | os.PathLike, *, data: str | list[str] | None, out: Path | None,
                                  overrides: list[str] | None = None, shuffle_seed: int | None = None,
                                  ) -> tuple[RetrievalResult, Path | None, dict, dict | None]:
    """Zero-shot (a stage-1 checkpoint) or fine-tuned (a retrieval checkpoint) retrieval on ``data``.

    The checkpoint's own config builds the model and the loader, with ``data.sampling=whole_video``,
    ``data.val_shards=data`` (default: its own val shards) and ``overrides`` on top. On rank 0 the
    outputs go to ``out`` (default ``CKPT/retrieval-<hash of the data>``). With ``shuffle_seed`` the
    set is evaluated again with each video's clip groups shuffled in time (``lfvila.eval.shuffle``)
    and ``OUT/shuffle_test.json`` records both passes and the drop. Returns ``(result, the
    retrieval.json path or None off rank 0, the provenance written, the shuffle-test record or None)``.
    """
    from lfvila.data import build_loader
    from lfvila.errors import ConfigError
    from lfvila.eval import shuffle
    from lfvila.models.lfvila import build_model
    from lfvila.tasks import LocVTPTask
    from lfvila.trainer.checkpoint import MODEL, load_file, read_meta, resolve_checkpoint
    from lfvila.trainer.evaluate import checkpoint_eval_config
    from lfvila.trainer.parallel import setup_distributed
    from lfvila.trainer.setup import seed_everything

    path = resolve_checkpoint(path)
    meta = read_meta(path)
    # the checkpoint's own val shards only when they run no command (see checkpoint_eval_config)
    cfg = checkpoint_eval_config(path, overrides=list(WHOLE_VIDEO) + list(overrides or []), val_shards=data or None)
    if not cfg.data.val_shards:
        raise ConfigError(f"{path}: no val shards in its config; pass --data URLS")
    ctx = setup_distributed(cfg.trainer.device)
    seed_everything(cfg.trainer.seed)
    model = build_model(cfg.model)
    model.load_state_dict(load_file(path / MODEL))
    model.to(ctx.device)
    # a LocVTP checkpoint trains neither the video-global nor the paragraph feature: its own pooling
    features = LocVTPTask.retrieval_features if cfg.task.name == "locvtp" else None
    use_cuda = ctx.device.type == "cuda"
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.trainer.precision) if use_cuda else None
    autocast = torch.autocast("cuda", dtype=amp) if amp is not None else None

    def one_pass(clip_shuffle_seed: int | None) -> RetrievalResult:
        batches: Iterable[dict] = build_loader(cfg.loader_data(), "val", rank=ctx.rank, world_size=ctx.world_size,
                                               stage=1, epoch_mode=True)
        if clip_shuffle_seed is not None:
            batches = shuffle.shuffled_clips(batches, clip_shuffle_seed, cfg.data.frames_per_sentence,
                                             whole_video=cfg.data.sampling == "whole_video")
        return evaluate_retrieval(model, batches, ctx, autocast, features)

    result = one_pass(None)
    provenance = {"task": "retrieval", "checkpoint": str(path), "step": meta["step"], "data": cfg.data.val_shards,
                  "frames": cfg.data.n_frames, "paragraph_sentences": cfg.data.paragraph_sentences,
                  "overrides": list(overrides or []), "world_size": ctx.world_size}
    record = None
    if shuffle_seed is not None:
        record = shuffle.shuffle_test_record(result.metrics, one_pass(shuffle_seed).metrics, shuffle_seed, provenance)
    if not ctx.is_main:
        return result, None, provenance, record
    if out is None:
        evaluated = {k: v for k, v in provenance.items() if k != "world_size"}  # any world size: the same figures
        digest = hashlib.sha1(json.dumps(evaluated, sort_keys=True).encode()).hexdigest()[:8]
        out = path / f"retrieval-{digest}"
    written = write_retrieval_outputs(result, Path(out), provenance)
    if record is not None:
        shuffle.write_shuffle_test(record, Path(out) / "shuffle_test.json")
    return result, written, provenance, record
