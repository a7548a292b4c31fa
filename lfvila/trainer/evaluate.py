"""Held-out evaluation: retrieval, within-video alignment, stage-2 accuracies, held-out losses.

The metric functions take plain feature tensors, so they are checked on hand-made inputs;
:func:`evaluate` runs the model over the val shards on every rank, gathers the features
(each sample once, deduplicated by key) and computes the metrics identically everywhere.

Ranks may hold any share of the val data, none included: while the model runs over a rank's
batches no collective is made (ranks with fewer batches would otherwise fall out of step: a
size mismatch on gloo, a hang on NCCL); the one all-gather comes after. Every stage-1 figure,
held-out losses included, is then a function of the set of val samples alone, equal to a
single-process evaluation of the same data: the held-out contrastive losses are computed
from the gathered features in key order, in chunks of ``loss_batch_size`` samples (the
per-rank training batch size), never from whichever samples shared a rank's batch.
Stage-2 figures (MLM / VTM losses and accuracies) pair each text with another sample's video
within the loader's batch, as in training, so they are sums over the ranks' batches and
depend on how samples fall into batches (``trainer.eval_max_batches`` also counts per rank);
so do the LocVTP task's held-out losses (its coarse loss contrasts the pairs of one batch).
A task may score retrieval with its own video and paragraph features (``retrieval_features``:
the LocVTP task's are the means of its clips and of its sentences).

Ranks are 1-based; a tie with the true item counts against it, so a model that maps every
input to the same feature scores chance level, never better.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
from pathlib import Path
from typing import Any, Iterable

import torch

from lfvila.atomic import atomic_write_text
from lfvila.trainer.parallel import DistContext

log = logging.getLogger(__name__)

RECALL_AT = (1, 5, 10)


def retrieval_ranks(sim: torch.Tensor) -> torch.Tensor:
    """1-based rank of the true item for each query; ``sim`` is ``(N, N)`` with truth on the diagonal."""
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"sim must be square (N, N), got {tuple(sim.shape)}")
    true = sim.diagonal().unsqueeze(1)  # (N, 1)
    others = ~torch.eye(sim.shape[0], dtype=torch.bool, device=sim.device)
    # pessimistic: every other item scoring >= the true one ranks before it
    return 1 + ((sim >= true) & others).sum(dim=1)


def recall_metrics(ranks: torch.Tensor, prefix: str) -> dict[str, float]:
    """R@1/5/10 (percent) and median rank from 1-based ranks, with their chance levels."""
    n = ranks.numel()
    out: dict[str, float] = {}
    for k in RECALL_AT:
        out[f"{prefix}_r{k}"] = 100.0 * (ranks <= k).float().mean().item()
        out[f"{prefix}_r{k}_chance"] = 100.0 * min(k, n) / n
    out[f"{prefix}_medr"] = float(ranks.float().median().item()) if n % 2 else float(ranks.float().quantile(0.5))
    out[f"{prefix}_medr_chance"] = (n + 1) / 2
    return out


def paragraph_video_retrieval(paragraph: torch.Tensor, video: torch.Tensor) -> dict[str, float]:
    """Paragraph-to-video and video-to-paragraph recall; row i of both is the same sample.

    paragraph, video: ``(N, D)`` L2-normalised features.
    """
    sim = paragraph.float() @ video.float().T  # (N_paragraphs, N_videos)
    return {**recall_metrics(retrieval_ranks(sim), "p2v"), **recall_metrics(retrieval_ranks(sim.T), "v2p")}


def alignment_accuracy(sentence: torch.Tensor, clip: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Within each video, how often a sentence's most similar clip is its own (and vice versa).

    sentence, clip: ``(N, M, D)``; mask: ``(N, M)`` bool, True for real sentences. Only the
    video's real positions compete; chance is the mean of ``1 / n_real`` over the rows.
    """
    sim = torch.einsum("nid,njd->nij", sentence.float(), clip.float())  # (N, M_sentences, M_clips)
    valid = mask.bool()
    pair_valid = valid.unsqueeze(2) & valid.unsqueeze(1)  # (N, M, M)
    sim = sim.masked_fill(~pair_valid, -math.inf)
    target = torch.arange(sim.shape[1], device=sim.device).expand(sim.shape[0], -1)  # (N, M)
    rows = valid.sum()
    if rows == 0:
        raise ValueError("alignment_accuracy: no real sentences")
    # a tie with the true position counts as a miss (strictly greater than every other)
    def hits(s: torch.Tensor) -> torch.Tensor:
        true = s.gather(2, target.unsqueeze(2))  # (N, M, 1)
        others = ~torch.eye(s.shape[1], dtype=torch.bool, device=s.device)
        return ~(((s >= true) & others & pair_valid).any(dim=2))

    n_real = valid.sum(dim=1, keepdim=True).expand_as(valid).float()
    return {
        "sentence_to_clip_acc": 100.0 * (hits(sim) & valid).sum().item() / rows.item(),
        "clip_to_sentence_acc": 100.0 * (hits(sim.transpose(1, 2)) & valid).sum().item() / rows.item(),
        "alignment_chance": 100.0 * (1.0 / n_real)[valid].mean().item(),
    }


def _cpu(x: torch.Tensor) -> torch.Tensor:
    return x.detach().float().cpu()


@torch.no_grad()
def collect_features(task: Any, batches: Iterable[dict], ctx: DistContext, *, max_batches: int | None,
                     autocast: contextlib.AbstractContextManager | None = None) -> dict[str, Any]:
    """Run the model over this rank's val batches; return CPU features, keys and, for a task without
    ``feature_losses`` (stage 2, LocVTP), held-out loss sums (``task.held_out_losses(batch)`` where the
    task has it, a form that makes no collective; else ``task.losses(batch)``) and accuracy counts.
    Makes no cross-rank collective (any number of batches per rank is fine)."""
    from lfvila.data.device import batch_to_device

    model = task.model
    per_batch_losses = not hasattr(task, "feature_losses")  # stage 1 scores gathered features later
    batch_losses = getattr(task, "held_out_losses", None) or getattr(task, "losses", None)
    rows: dict[str, list] = {"paragraph": [], "video": [], "sentence": [], "clip": [], "mask": [], "keys": []}
    loss_sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    n_batches = 0
    for batch in batches:
        if max_batches is not None and n_batches >= max_batches:
            break
        batch = batch_to_device(batch, ctx.device)
        with autocast or contextlib.nullcontext():
            video = model.encode_video(batch["video"])
            text = model.encode_text(batch["text_ids"], batch["text_mask"], batch["sentence_mask"])
            losses = batch_losses(batch) if per_batch_losses else {}
            if "mlm_ids" in batch:
                reference_pairing = getattr(getattr(task, "cfg", None), "vtm_reference_pairing", False)
                for name, count in stage2_counts(model, batch, video, reference_pairing).items():
                    counts[name] = counts.get(name, 0) + count
        for name, value in losses.items():
            loss_sums[name] = loss_sums.get(name, 0.0) + float(value)
        if hasattr(task, "retrieval_features"):  # a task that trains other video / paragraph features
            video_feature, paragraph_feature = task.retrieval_features(video, text, batch["sentence_mask"])
        else:
            video_feature, paragraph_feature = video["global"], text["paragraph"]
        rows["paragraph"].append(_cpu(paragraph_feature))
        rows["sentence"].append(_cpu(text["sentence"]))
        rows["video"].append(_cpu(video_feature))
        rows["clip"].append(_cpu(video["clip"]))
        rows["mask"].append(batch["sentence_mask"].bool().cpu())
        if "clip_order" in batch:  # a shuffle-test pass (lfvila.eval.shuffle): which clip each slot shows
            rows.setdefault("clip_order", []).append(batch["clip_order"].cpu())
        rows["keys"].extend(batch["keys"])
        n_batches += 1
    out: dict[str, Any] = {k: (torch.cat(v) if v and k != "keys" else v) for k, v in rows.items()}
    out["loss_sums"] = loss_sums
    out["counts"] = counts
    out["n_batches"] = n_batches
    return out


def merge_rank_features(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate every rank's features, keeping the first occurrence of each key."""
    seen: set[str] = set()
    keep: dict[str, list] = {"paragraph": [], "video": [], "sentence": [], "clip": [], "mask": []}
    if any("clip_order" in part for part in parts):
        keep["clip_order"] = []
    keys: list[str] = []
    for part in parts:
        for i, key in enumerate(part["keys"]):
            if key in seen:
                continue
            seen.add(key)
            keys.append(key)
            for name in keep:
                keep[name].append(part[name][i])
    merged: dict[str, Any] = {k: torch.stack(v) if v else torch.empty(0) for k, v in keep.items()}
    merged["keys"] = keys
    return merged


@torch.no_grad()
def held_out_feature_losses(task: Any, merged: dict[str, Any], loss_batch_size: int) -> dict[str, float]:
    """Mean of ``task.feature_losses`` over the samples sorted by key, ``loss_batch_size`` at a time.

    Local computation on gathered CPU features (no collective); MTC draws come from a generator
    seeded 0, so the result depends on the set of samples only.
    """
    if loss_batch_size < 1:
        raise ValueError(f"loss_batch_size must be >= 1, got {loss_batch_size}")
    order = sorted(range(len(merged["keys"])), key=merged["keys"].__getitem__)
    generator = torch.Generator().manual_seed(0)
    sums: dict[str, float] = {}
    n_chunks = 0
    for start in range(0, len(order), loss_batch_size):
        rows = torch.tensor(order[start:start + loss_batch_size])
        losses = task.feature_losses(merged["video"][rows], merged["paragraph"][rows], merged["sentence"][rows],
                                     merged["clip"][rows], merged["mask"][rows], generator=generator, gather=False)
        for name, value in losses.items():
            sums[name] = sums.get(name, 0.0) + float(value)
        n_chunks += 1
    return {f"val_{name}": total / n_chunks for name, total in sums.items()}


def evaluate(task: Any, batches: Iterable[dict], ctx: DistContext, *, max_batches: int | None = None,
             autocast: contextlib.AbstractContextManager | None = None,
             loss_batch_size: int = 8) -> dict[str, float]:
    """Every metric on the val batches, gathered over ranks; identical on every rank.

    Returns retrieval (``p2v_*``, ``v2p_*``), alignment (``sentence_to_clip_acc`` ...),
    held-out losses (``val_<name>``), any task accuracies and ``n_samples``, each recall and
    accuracy next to its ``*_chance`` level. Any split of the data over ranks gives the same
    stage-1 figures (see the module docstring); ``loss_batch_size`` is the number of samples
    per held-out contrastive loss.
    """
    from lfvila.trainer.checkpoint import capture_rng_state, restore_rng_state

    model = task.model
    was_training = model.training
    # Evaluation draws its own fixed random numbers (e.g. MTC key positions in the held-out
    # losses), so its result does not depend on when it runs and training's streams are untouched.
    rng = capture_rng_state()
    torch.manual_seed(0)
    model.eval()
    try:
        local = collect_features(task, batches, ctx, max_batches=max_batches, autocast=autocast)
    finally:
        model.train(was_training)
        restore_rng_state(rng)
    parts = ctx.gather_objects(local)
    merged = merge_rank_features(parts)
    n = len(merged["keys"])
    metrics: dict[str, float] = {"n_samples": float(n)}
    if n == 0:
        log.warning("evaluation saw no samples")
        return metrics
    metrics.update(paragraph_video_retrieval(merged["paragraph"], merged["video"]))
    metrics.update(alignment_accuracy(merged["sentence"], merged["clip"], merged["mask"]))
    if "clip_order" in merged:  # shuffled clips: also score each sentence against its own, moved clip
        from lfvila.eval.shuffle import followed_clips

        followed = alignment_accuracy(merged["sentence"], followed_clips(merged["clip"], merged["clip_order"]),
                                      merged["mask"])
        metrics.update({f"{k}_followed": v for k, v in followed.items() if k != "alignment_chance"})
    if hasattr(task, "feature_losses"):
        metrics.update(held_out_feature_losses(task, merged, loss_batch_size))
    n_batches = sum(p["n_batches"] for p in parts)
    names = sorted({name for p in parts for name in p["loss_sums"]})
    for name in names:
        metrics[f"val_{name}"] = sum(p["loss_sums"].get(name, 0.0) for p in parts) / max(n_batches, 1)
    counts = {name: sum(p["counts"].get(name, 0) for p in parts) for p in parts for name in p["counts"]}
    for name in ("mlm", "vtm"):
        if counts.get(f"{name}_total"):
            metrics[f"{name}_acc"] = 100.0 * counts[f"{name}_correct"] / counts[f"{name}_total"]
    if counts.get("vtm_total"):
        metrics["vtm_acc_chance"] = 100.0 * counts["vtm_majority"] / counts["vtm_total"]
    return metrics


def stage2_counts(model: Any, batch: dict[str, Any], video: dict[str, torch.Tensor],
                  reference_pairing: bool = False) -> dict[str, int]:
    """Correct / total masked-token predictions and video-text matching decisions of one batch.

    Pairs and masks as in training (``lfvila.tasks.Stage2Task``): the first B // 2 texts get
    another sample's video (``mismatch_pairs``; ``reference_pairing`` is the task's
    ``vtm_reference_pairing``); MLM is scored on the matched pairs' masked tokens.
    """
    from lfvila.losses import mismatch_pairs

    text = model.encode_text(batch["mlm_ids"], batch["text_mask"], batch["sentence_mask"])
    b = text["tokens"].shape[0]
    video_index, vtm_labels = mismatch_pairs(b, device=text["tokens"].device, reference=reference_pairing)
    hidden = model.fuse(text["tokens"], text["token_mask"], video["tokens"][video_index])  # (B, S+N, C)
    vtm_pred = model.match_logits(hidden).argmax(dim=-1)  # (B,)
    matched = vtm_labels.bool()
    labels = batch["mlm_labels"][matched].flatten(1)  # (B', M*L)
    masked = labels != -100
    mlm_pred = model.mlm_logits(hidden[matched, 1 : 1 + labels.shape[1]][masked]).argmax(dim=-1)  # (K,)
    n_matched = int(matched.sum())
    return {
        "vtm_correct": int((vtm_pred == vtm_labels).sum()), "vtm_total": b,
        # always answering the more frequent label scores this
        "vtm_majority": max(n_matched, b - n_matched),
        "mlm_correct": int((mlm_pred == labels[masked]).sum()), "mlm_total": int(masked.sum()),
    }


def chance_level(metrics: dict[str, Any], name: str) -> float | None:
    """The chance level recorded for metric ``name`` (None for losses and MLM accuracy)."""
    if f"{name}_chance" in metrics:
        return metrics[f"{name}_chance"]
    if name.removesuffix("_followed") in ("sentence_to_clip_acc", "clip_to_sentence_acc"):
        return metrics.get("alignment_chance")
    return None


def metric_table(columns: list[tuple[str, dict[str, Any]]], names: Iterable[str] | None = None) -> list[str]:
    """Rows ``metric  <column>...  chance``, figures rounded to 2 decimals; chance from the last column.

    ``names``: the metrics to show, in order (default: every figure of the last column except the
    chance levels, ``n_samples`` and ``step``); a metric missing from the last column is left out.
    """
    last = columns[-1][1]
    if names is None:
        names = [k for k in last if not k.endswith("_chance") and k not in ("n_samples", "step")]
    lines = [f"{'metric':<24}" + "".join(f"{title:>12}" for title, _ in columns) + f"{'chance':>12}"]
    for name in names:
        if name not in last:
            continue
        chance = chance_level(last, name)
        lines.append(f"{name:<24}" + "".join(f"{m.get(name, float('nan')):>12.2f}" for _, m in columns)
                     + (f"{chance:>12.2f}" if chance is not None else f"{'-':>12}"))
    return lines


# URL schemes a checkpoint's own config may name as val shards: ones read without running a
# command. ``pipe:CMD`` runs CMD in a shell (webdataset's gopen), and gs:, ais:, hf:, scp: ...
# run external tools; such a URL is used only when the user gave it (command line or own config).
_SAFE_SCHEMES = ("", "file", "http", "https")
_FROM_CHECKPOINT = "\0val_shards of the checkpoint\0"


def command_urls(spec: str | list[str]) -> list[str]:
    """The URLs of shard spec ``spec`` that opening would run a command for (``pipe:`` and the like),
    scheme parsed as webdataset's ``gopen`` parses it (case and leading blanks ignored)."""
    from urllib.parse import urlparse

    from lfvila.data.shardlists import expand_shards

    return [url for url in expand_shards(spec) if urlparse(url).scheme not in _SAFE_SCHEMES]


def checkpoint_eval_config(path: Path, *, overrides: list[str] | None = None,
                           val_shards: str | list[str] | None = None) -> Any:
    """The :class:`TrainConfig` to evaluate checkpoint ``path`` with: its ``config.yaml``, then
    ``overrides``, then ``val_shards`` when given (the caller's, e.g. ``--data``).

    The checkpoint's config is data, not a recipe the user wrote: when the val shards come from it
    (neither ``overrides`` nor ``val_shards`` set them), a URL that would run a command
    (:func:`command_urls`, e.g. ``pipe:...``) is refused with a ``ConfigError`` saying how to pass
    it explicitly."""
    import copy
    import shlex

    import yaml

    from lfvila.config import apply_overrides, from_dict
    from lfvila.errors import ConfigError
    from lfvila.trainer.checkpoint import CONFIG
    from lfvila.trainer.config import TrainConfig

    try:
        saved = yaml.safe_load((path / CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path / CONFIG} cannot be read as YAML: {exc}") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("data", {}), dict):
        raise ConfigError(f"{path / CONFIG} is not a training config (a mapping with a data section)")
    overrides = list(overrides or [])
    if val_shards is not None:
        overrides.append(f"data.val_shards={json.dumps(val_shards)}")
    # Whether the caller set the val shards, whatever the form of its overrides (data.val_shards=,
    # data={...}): apply them over a marker in place of the checkpoint's value.
    probe = apply_overrides({**copy.deepcopy(saved), "data": {**saved.get("data", {}), "val_shards": _FROM_CHECKPOINT}},
                            overrides)
    if (probe.get("data") or {}).get("val_shards") == _FROM_CHECKPOINT:
        spec = saved.get("data", {}).get("val_shards") or ""
        commands = command_urls(spec) if isinstance(spec, (str, list)) and spec else []
        if commands:
            shown = spec if isinstance(spec, str) else "::".join(spec)
            raise ConfigError(
                f"{path / CONFIG}: data.val_shards holds {commands[0]!r}, which would run a command; lfvila runs "
                "pipe: (and other command) URLs only from your own command line or config file, never from a "
                f"checkpoint. To evaluate on it anyway, pass it yourself: --data {shlex.quote(shown)} (or "
                "--config RECIPE whose data.val_shards names the shards)")
    return from_dict(TrainConfig, apply_overrides(saved, overrides))


def write_eval_json(metrics: dict[str, Any], path: Path) -> None:
    """``metrics`` as indented JSON at ``path`` (its directory made), atomically (``lfvila.atomic``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(metrics, indent=2) + "\n")


def evaluate_checkpoint(path: Path, *, overrides: list[str] | None = None, max_batches: int | None = None,
                        out: Path | None = None, val_shards: str | list[str] | None = None,
                        shuffle_seed: int | None = None) -> tuple[dict[str, float], Path | None, dict | None]:
    """Evaluate a checkpoint with its own config (plus ``overrides``) on ``val_shards`` or else
    the val shards of its config (see :func:`checkpoint_eval_config`: never a command URL from there).

    ``path``: a checkpoint, or a run / checkpoints directory (its newest intact checkpoint is taken).
    Writes the metrics JSON on rank 0 to ``out`` or ``CKPT/eval-<hash of the data>.json``, never
    the training run's own ``CKPT/eval.json``; the JSON also records which checkpoint and data
    (``val_shards``, ``max_batches``) were evaluated. With ``shuffle_seed`` the same data is then
    evaluated again with each sample's clips shuffled in time (``lfvila.eval.shuffle``), and the
    shuffle test's record (both passes and the drop) goes to ``OUT_STEM.shuffle_test.json`` beside
    the metrics JSON. Returns ``(metrics, json_path, shuffle-test record or None)``; off rank 0 the
    path is None.
    """
    import hashlib

    from lfvila.data import build_loader
    from lfvila.eval import shuffle
    from lfvila.trainer.checkpoint import MODEL, load_file, read_meta, resolve_checkpoint
    from lfvila.trainer.parallel import setup_distributed
    from lfvila.trainer.setup import build_model_and_task, seed_everything

    path = resolve_checkpoint(path)
    meta = read_meta(path)
    cfg = checkpoint_eval_config(path, overrides=overrides, val_shards=val_shards)
    if not cfg.data.val_shards:
        from lfvila.errors import ConfigError

        raise ConfigError(f"{path}: no val shards in its config; pass --data URLS")
    ctx = setup_distributed(cfg.trainer.device)
    seed_everything(cfg.trainer.seed)
    task = build_model_and_task(cfg)
    task.model.load_state_dict(load_file(path / MODEL))
    task.model.to(ctx.device)
    use_cuda = ctx.device.type == "cuda"
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.trainer.precision) if use_cuda else None
    autocast = torch.autocast("cuda", dtype=amp) if amp is not None else None

    def one_pass(clip_shuffle_seed: int | None) -> dict[str, float]:
        batches: Iterable[dict] = build_loader(cfg.loader_data(), "val", rank=ctx.rank, world_size=ctx.world_size,
                                               stage=cfg.task.stage, epoch_mode=True)
        if clip_shuffle_seed is not None:
            batches = shuffle.shuffled_clips(batches, clip_shuffle_seed, cfg.data.frames_per_sentence,
                                             whole_video=cfg.data.sampling == "whole_video")
        return {"step": meta["step"], **evaluate(task, batches, ctx, max_batches=max_batches, autocast=autocast,
                                                 loss_batch_size=cfg.data.batch_size)}

    metrics = one_pass(None)
    evaluated = {"checkpoint": str(path), "val_shards": cfg.data.val_shards, "max_batches": max_batches}
    record = None
    if shuffle_seed is not None:
        record = shuffle.shuffle_test_record(metrics, one_pass(shuffle_seed), shuffle_seed,
                                             {"task": cfg.task.name, **evaluated, "world_size": ctx.world_size})
    if not ctx.is_main:
        return metrics, None, record
    if out is None:
        digest = hashlib.sha1(json.dumps(evaluated, sort_keys=True).encode()).hexdigest()[:8]
        out = path / f"eval-{digest}.json"
    write_eval_json({**evaluated, **metrics}, out)
    if record is not None:
        shuffle.write_shuffle_test(record, shuffle.shuffle_test_path(Path(out)))
    return metrics, out, record
