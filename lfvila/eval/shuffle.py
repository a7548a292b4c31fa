"""The shuffle test: the held-out figures with each video's clips in order and shuffled in time.

HiTeA (2022) proposed evaluating with the frames of each video shuffled to measure how much a
dataset or a model relies on temporal order. Here the unit shuffled is the *clip*: a loader sample's
``T`` frames are ``T / K`` consecutive groups of ``K = data.frames_per_sentence`` frames (clip ``i``
owns frames ``i*K:(i+1)*K``, ``lfvila.data.sampling``), and the test reorders those groups while
keeping the frames inside each group, and everything else of the sample (its sentences and their
order, the paragraph, the crop), as it was. So each clip's own content is intact; what changes is
where it sits in the video. Why clips and not single frames: the clip-sentence alignment figures
pair clip slot ``i`` with sentence ``i``; moving whole clips breaks exactly that pairing, while
shuffling frames across clips would also change what each clip shows.

Which clips move: with the pre-training window (``data.sampling: window``) the sample's real clips,
one per real sentence (``sentence_mask``); padded slots (repeats of the last real clip) stay. With
``whole_video`` every group moves (the frames span the whole video; the paragraph's sentences are
not tied to groups). The order is a derangement (no real clip stays in its slot) for two or more
clips, drawn from a generator seeded by ``(seed, crc32(sample key))``: the same for a key whatever
the rank, worker or batch it falls in, so any number of ranks gives the same figures. A sample with
one clip is left as it is.

What the figures then say:
- retrieval (``p2v_*``, ``t2v_*`` ...) compares the same frames in another order against the same
  text: a drop is how much the video feature depends on temporal order;
- alignment (``sentence_to_clip_acc``, ``clip_to_sentence_acc``) still scores sentence ``i``
  against slot ``i``, which now holds another clip: a model that matches content drops towards 0,
  one that only learnt "the i-th sentence goes with the i-th slot" does not drop at all;
- the ``*_followed`` figures (shuffled pass only) score each sentence against its own clip wherever
  it moved: their drop is how much a clip's feature depends on where and among what it sits.

``drop`` is in-order minus shuffled for every figure, so for figures where lower is better (ranks,
losses) a worse shuffled figure gives a negative drop.
"""
from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

# the shuffled pass's alignment scored against each sentence's own (moved) clip: name -> in-order name
FOLLOWED = {"sentence_to_clip_acc_followed": "sentence_to_clip_acc",
            "clip_to_sentence_acc_followed": "clip_to_sentence_acc"}
WHAT_IS_SHUFFLED = (
    "each sample's clips (consecutive groups of data.frames_per_sentence frames) are reordered in time by a "
    "derangement seeded by (seed, crc32(key)); frames inside a clip, sentences, paragraph and crop are unchanged. "
    "window sampling: the real clips (one per real sentence) move, padded slots stay; whole_video: every group "
    "moves. Alignment still pairs sentence i with slot i (now another clip); *_followed pairs it with its own "
    "moved clip. drop = in_order - shuffled (negative for a worse rank or loss).")


def clip_order(key: str, n_clips: int, seed: int) -> list[int]:
    """The shuffled order of a sample's ``n_clips`` clips: slot ``j`` shows clip ``order[j]``.

    A derangement (``order[j] != j`` for every ``j``) for ``n_clips >= 2``, uniform over
    derangements (rejection sampling: about e draws); ``[0]`` for one clip. Deterministic in
    ``(key, n_clips, seed)``.
    """
    if n_clips < 2:
        return list(range(n_clips))
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    identity = np.arange(n_clips)
    while True:
        order = rng.permutation(n_clips)
        if (order != identity).all():
            return order.tolist()


def frame_index(order: list[int], frames_per_clip: int) -> torch.Tensor:
    """Frame indices ``(len(order) * K,)`` that put clip ``order[j]``'s ``K`` frames in slot ``j``."""
    return torch.tensor([c * frames_per_clip + f for c in order for f in range(frames_per_clip)])


def shuffle_batch_clips(batch: dict[str, Any], seed: int, frames_per_clip: int, *,
                        whole_video: bool) -> dict[str, Any]:
    """A loader batch with every sample's clips reordered (see the module docstring).

    ``video``: ``(B, 3, T, H, W)`` or a list of B ``(3, T, h, w)`` (``resize_on: device``); both kept
    in their form, frames copied. Adds ``clip_order`` ``(B, T / K)`` long: slot ``j`` of sample ``b``
    shows its clip ``clip_order[b, j]``. Everything else is the batch's own.
    """
    if not batch.get("keys"):
        return batch
    video = batch["video"]
    n_frames = (video[0] if isinstance(video, list) else video[0]).shape[1]
    if n_frames % frames_per_clip:
        raise ValueError(f"{n_frames} frames are not whole clips of {frames_per_clip} frames")
    n_slots = n_frames // frames_per_clip
    orders = []
    for i, key in enumerate(batch["keys"]):
        n_real = n_slots if whole_video else min(n_slots, int(batch["sentence_mask"][i].sum()))
        orders.append(clip_order(key, n_real, seed) + list(range(n_real, n_slots)))
    shuffled = [sample[:, frame_index(order, frames_per_clip)] for sample, order in zip(video, orders)]
    return {**batch, "video": shuffled if isinstance(video, list) else torch.stack(shuffled),
            "clip_order": torch.tensor(orders, dtype=torch.long)}


def shuffled_clips(batches: Iterable[dict], seed: int, frames_per_clip: int, *,
                   whole_video: bool) -> Iterator[dict]:
    """``batches`` with :func:`shuffle_batch_clips` applied to each."""
    for batch in batches:
        yield shuffle_batch_clips(batch, seed, frames_per_clip, whole_video=whole_video)


def followed_clips(clip: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Clip features put back in clip order: ``clip`` ``(N, M, D)`` of the shuffled pass, slot ``j``
    holding clip ``order[n, j]``; returns ``(N, M, D)`` whose slot ``i`` is clip ``i``'s feature."""
    slot_of_clip = order.argsort(dim=1)  # (N, M): where clip i sits
    return clip.gather(1, slot_of_clip.unsqueeze(2).expand_as(clip))


def _figures(metrics: dict[str, Any]) -> list[str]:
    return [k for k, v in metrics.items() if isinstance(v, (int, float)) and not k.endswith("_chance")
            and k not in ("n_samples", "n_videos", "step")]


def shuffle_test_record(in_order: dict[str, Any], shuffled: dict[str, Any], seed: int,
                        provenance: dict[str, Any]) -> dict[str, Any]:
    """The ``shuffle_test.json`` record: provenance, seed, what was shuffled, both passes' metrics
    and ``drop`` (in-order minus shuffled) for every figure both have (``*_followed`` against its
    in-order figure)."""
    drop = {name: in_order[name] - shuffled[name] for name in _figures(in_order) if name in shuffled}
    drop.update({name: in_order[base] - shuffled[name] for name, base in FOLLOWED.items()
                 if name in shuffled and base in in_order})
    return {**provenance, "shuffle_seed": seed, "shuffled": WHAT_IS_SHUFFLED,
            "metrics": {"in_order": in_order, "shuffled": shuffled, "drop": drop}}


def shuffle_test_path(metrics_json: Path) -> Path:
    """Where the shuffle test of ``lfvila eval`` (pre-training figures) goes: ``DIR/NAME.shuffle_test.json``
    beside its metrics file ``DIR/NAME.json`` (``--task retrieval`` writes ``OUT/shuffle_test.json``)."""
    return metrics_json.with_name(f"{metrics_json.stem}.shuffle_test.json")


def write_shuffle_test(record: dict[str, Any], path: Path) -> Path:
    import json

    from lfvila.atomic import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return path


def shuffle_table(record: dict[str, Any], names: Iterable[str] | None = None) -> list[str]:
    """Rows ``metric  in order  shuffled  drop  chance`` of a shuffle-test record (2 decimals)."""
    from lfvila.trainer.evaluate import chance_level

    metrics = record["metrics"]
    in_order, shuffled, drop = metrics["in_order"], metrics["shuffled"], metrics["drop"]
    names = list(names) if names is not None else list(drop)
    lines = [f"{'metric':<30}{'in order':>12}{'shuffled':>12}{'drop':>12}{'chance':>12}"]
    for name in names:
        if name not in drop:
            continue
        chance = chance_level(shuffled, name)
        before = in_order.get(FOLLOWED.get(name, name), float("nan"))
        lines.append(f"{name:<30}{before:>12.2f}{shuffled[name]:>12.2f}"
                     f"{drop[name]:>12.2f}" + (f"{chance:>12.2f}" if chance is not None else f"{'-':>12}"))
    return lines
