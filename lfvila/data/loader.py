"""The streaming loader: shards -> batches, deterministic, distributed, exactly resumable.

Each DataLoader worker of each rank runs one *stream*: a pure function of (seed, pass, global
worker id, number of global workers). A stream reads its shards (``shardlists.worker_shards``),
plans every sample with a generator seeded by the sample's read position (``sampling``), shuffles
the small plans in a seeded buffer, and only then decodes JPEGs and batches (``collate``).

Resume state = how many shuffled items each worker's stream has handed to batches that the
trainer consumed, plus which worker the DataLoader's round robin serves next. To resume, every
stream replays its reads and plans (cheap: tar bytes and JSON, no JPEG decoding) and discards
that many items; the DataLoader is then started with its round robin rotated to the saved worker.
Batches carry their worker id, stream position and skip counts in ``__meta__``, which
:class:`StreamingLoader` removes before the trainer sees the batch.
"""
from __future__ import annotations

import functools
import logging
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from itertools import islice

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from lfvila.data.buffers import IN_PROCESS_BUFFERS, BatchBuffers, BatchCanvas, BufferReleases, buffers_per_worker
from lfvila.data.collate import collate
from lfvila.data.frames import render_geometry, render_sample
from lfvila.data.tokenize import Tokenizer
from lfvila.data.config import DataConfig
from lfvila.data.reader import HttpTimeouts, read_shard
from lfvila.data.shardlists import expand_shards, fingerprint, worker_shards
from lfvila.data.sampling import SamplePlan, SkipSample, plan_sample

logger = logging.getLogger("lfvila.data")

STATE_FORMAT = "lfvila.loader/1"
# A stream that skips this many items in a row has no usable data (every shard broken, wrong
# URLs): raise with the reason instead of spinning forever in an infinite mode.
MAX_CONSECUTIVE_SKIPS = 10_000
SHARD_REASONS = ("shard_open_error", "shard_read_error", "shard_timeout", "truncated_tar")


@functools.lru_cache(maxsize=4)
def _tokenizer(bert_dir: str, max_tokens: int) -> Tokenizer:
    return Tokenizer(bert_dir, max_tokens)


class SkipLog:
    """Logs skipped samples at most once per reason per interval (with the number suppressed);
    a broken shard is logged with its URL the first time this process meets it."""

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self.last: dict[str, float] = {}
        self.suppressed: Counter = Counter()
        self.shards_seen: set[str] = set()

    def __call__(self, reason: str, url: str, key: str | None, detail: str) -> None:
        if reason in SHARD_REASONS:
            if url not in self.shards_seen:
                self.shards_seen.add(url)
                logger.warning("shard %s: %s (%s)", url, reason, detail)
            return
        now = time.monotonic()
        if now - self.last.get(reason, -float("inf")) < self.interval_s:
            self.suppressed[reason] += 1
            return
        more = f" (+{self.suppressed.pop(reason)} more since last report)" if self.suppressed[reason] else ""
        self.last[reason] = now
        logger.warning("skipped sample %s in %s: %s (%s)%s", key, url, reason, detail, more)


def shuffled(items: Iterator, size: int, rng: np.random.Generator) -> Iterator:
    """A seeded shuffle buffer of up to ``size`` items (webdataset's scheme: start yielding after
    size // 8 items, grow the buffer by one per item until full)."""
    buffer: list = []
    initial = max(1, size // 8)
    items = iter(items)
    for item in items:
        buffer.append(item)
        if len(buffer) < size:
            buffer.extend(islice(items, 1))
        if len(buffer) >= initial:
            i = int(rng.integers(len(buffer)))
            buffer[i], buffer[-1] = buffer[-1], buffer[i]
            yield buffer.pop()
    while buffer:
        i = int(rng.integers(len(buffer)))
        buffer[i], buffer[-1] = buffer[-1], buffer[i]
        yield buffer.pop()


class ShardStream(IterableDataset):
    """The per-worker streams of one rank, as a torch IterableDataset yielding whole batches.

    The resume fields (``pass_index``, ``positions``, ``rotation``) are set by StreamingLoader
    before each DataLoader is created; workers receive a copy of this object.
    """

    def __init__(self, cfg: DataConfig, split: str, urls: list[str], *, rank: int, world_size: int,
                 stage: int, mode: str):
        super().__init__()
        self.cfg, self.split, self.urls = cfg, split, urls
        self.rank, self.world_size, self.stage, self.mode = rank, world_size, stage, mode
        self.train = split == "train"
        self.n_local = max(1, cfg.num_workers)
        self.pass_index = 0
        self.positions = [0] * self.n_local
        self.rotation = 0
        # Shared int8 flags, one per batch buffer of each local worker: 1 while the main process
        # may still read the batch (set by StreamingLoader; see lfvila.data.buffers).
        self.release_flags: torch.Tensor | None = None

    def __iter__(self) -> Iterator[dict]:
        import cv2

        # One stream = one core (torch does the same for its ops in workers); OpenCV's thread pool
        # only adds overhead on 192x320 frames and competes with the trainer in-process.
        cv2.setNumThreads(1)
        info = get_worker_info()
        local = ((info.id if info else 0) + self.rotation) % self.n_local
        return self.worker_batches(local)

    def sample_seeds(self, worker: int, read_position: int, key: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(planning seed, MLM seed) of one sample. Training draws depend on the stream position
        (a key read twice gets new crops); validation draws depend on the key only, so
        evaluation does not depend on the number of ranks or workers."""
        if self.train:
            base = (self.cfg.seed, self.pass_index, worker, read_position)
        else:
            base = (self.cfg.seed, zlib.crc32(key.encode()))
        return base, base + (1,)

    def items(self, worker: int, n_workers: int) -> Iterator:
        """Global worker ``worker``'s stream of sample plans and error records, shuffled."""
        cfg = self.cfg
        urls = worker_shards(self.urls, seed=cfg.seed, pass_index=self.pass_index, worker=worker,
                             n_workers=n_workers, mode=self.mode, shuffle=self.train)

        timeouts = HttpTimeouts.of(cfg)

        def planned() -> Iterator:
            read_position = 0
            empty_run = 0  # shards in a row that held no member at all
            for url in urls:
                n_items = 0
                for raw in read_shard(url, timeouts):
                    n_items += 1
                    read_position += 1
                    if "__error__" in raw:
                        yield raw
                        continue
                    seed, mlm_seed = self.sample_seeds(worker, read_position - 1, raw["__key__"])
                    try:
                        yield plan_sample(raw, cfg, np.random.default_rng(list(seed)), self.train, mlm_seed)
                    except SkipSample as exc:
                        yield {"__error__": exc.reason, "__url__": raw["__url__"], "__key__": raw["__key__"],
                               "__detail__": exc.detail}
                empty_run = 0 if n_items else empty_run + 1
                if empty_run > 2 * len(self.urls):
                    # Infinite modes over empty tars would otherwise spin without ever yielding.
                    raise RuntimeError(f"{self.split}: {empty_run} shards in a row hold no samples (last: {url})")

        if self.train and cfg.shuffle_buffer > 1:
            rng = np.random.default_rng([cfg.seed, self.pass_index, worker, 0x5EED])
            return shuffled(planned(), cfg.shuffle_buffer, rng)
        return planned()

    def worker_batches(self, local: int) -> Iterator[dict]:
        """Batches of local worker ``local``, starting after ``positions[local]`` items."""
        cfg = self.cfg
        worker, n_workers = self.rank * self.n_local + local, self.world_size * self.n_local
        position = self.positions[local]
        items = self.items(worker, n_workers)
        # Fast-forward: plans and error records only; no JPEG is decoded for skipped items.
        for _ in islice(items, position):
            pass
        tokenizer = _tokenizer(cfg.bert_dir, cfg.max_tokens)
        log = SkipLog(cfg.error_log_interval_s)
        rendered: list[SamplePlan] = []
        boxes: list = []  # what render_sample returned for each rendered plan
        in_worker = get_worker_info() is not None
        ring = buffers_per_worker(cfg) if in_worker else IN_PROCESS_BUFFERS
        buffers = BatchBuffers(cfg, ring, self.release_flags if in_worker else None, first_slot=local * ring)
        canvas = BatchCanvas(buffers)  # the batch buffer: samples are rendered straight into it
        skips: Counter = Counter()
        consecutive_skips = 0
        while chunk := list(islice(items, cfg.batch_size - len(rendered))):
            # The frame sizes of the whole chunk first (one JPEG header each), so the batch buffer
            # is taken at its final size and no rendered sample is ever copied to a larger one.
            geometry = [self.geometry(item) for item in chunk]
            canvas.reserve([g[1] for g in geometry if isinstance(g, tuple)])
            for item, geo in zip(chunk, geometry):
                position += 1
                reason = None
                if isinstance(item, dict):
                    reason, url, key, detail = item["__error__"], item["__url__"], item["__key__"], item["__detail__"]
                else:
                    try:
                        if isinstance(geo, SkipSample):
                            raise geo
                        boxes.append(render_sample(item, cfg, canvas, len(rendered), geo))
                        rendered.append(item)
                    except SkipSample as exc:
                        reason, url, key, detail = exc.reason, item.url, item.key, exc.detail
                if reason is None:
                    consecutive_skips = 0
                else:
                    skips[reason] += 1
                    log(reason, url, key, detail)
                    consecutive_skips += 1
                    if consecutive_skips >= MAX_CONSECUTIVE_SKIPS:
                        raise RuntimeError(
                            f"{self.split} stream of rank {self.rank} worker {local}: {consecutive_skips} unusable "
                            f"items in a row (last: {reason} in {url}: {detail}); counts so far {dict(skips)}")
            if len(rendered) == cfg.batch_size:
                yield self.finish_batch(rendered, boxes, canvas, skips, tokenizer, local, position)
                rendered, boxes, skips = [], [], Counter()
        if rendered or skips:
            # A final short batch, or only the skip counts of the stream's tail (no samples).
            yield self.finish_batch(rendered, boxes, canvas, skips, tokenizer, local, position)

    def geometry(self, item) -> tuple[int, tuple[int, int]] | SkipSample | None:
        """render_geometry of a plan, its SkipSample when that fails, None for an error record."""
        if isinstance(item, dict):
            return None
        try:
            return render_geometry(item, self.cfg)
        except SkipSample as exc:
            return exc

    def finish_batch(self, plans: list[SamplePlan], boxes: list, canvas: BatchCanvas, skips: Counter,
                     tokenizer: Tokenizer, local: int, position: int) -> dict:
        # The canvas lets go of the frames, so the ring can tell when the consumer is done with them.
        frames, release = canvas.hand_over(len(plans))
        batch = collate(plans, frames, self.cfg, tokenizer, self.stage, boxes) if plans else {}
        del frames
        batch["__meta__"] = {"worker": local, "position": position, "skips": dict(skips), "release": release}
        return batch


class StreamingLoader:
    """Iterable of batch dicts for one rank, with exact-resume state and skip counters.

    Infinite (``repeat`` or ``resampled`` mode) unless built with ``epoch_mode=True``, where each
    ``iter()`` is one pass over the split and the next ``iter()`` starts the next pass.
    """

    def __init__(self, stream: ShardStream):
        self.stream = stream
        self.cfg = stream.cfg
        self.n_local = stream.n_local
        self.pass_index = 0
        self.positions = [0] * self.n_local
        self.next_worker = 0
        self._counters: Counter = Counter()

    def __iter__(self) -> Iterator[dict]:
        stream, cfg = self.stream, self.cfg
        stream.pass_index, stream.positions, stream.rotation = self.pass_index, list(self.positions), self.next_worker
        pinned = cfg.pin_memory and torch.cuda.is_available()
        releases = BufferReleases(cfg, self.n_local)
        stream.release_flags = releases.flags
        loader = DataLoader(
            stream, batch_size=None, num_workers=cfg.num_workers,
            prefetch_factor=cfg.prefetch_factor if cfg.num_workers > 0 else None,
            pin_memory=pinned, persistent_workers=False,
            # DataLoader draws its workers' base seed from this generator; without one it draws from
            # torch's global RNG, and a resumed run (whose loader starts at another moment) would
            # then see a different training RNG stream. Our streams never use that seed.
            generator=torch.Generator().manual_seed(cfg.seed),
        )
        for batch in loader:
            meta = batch.pop("__meta__")
            releases.sweep()
            releases.received(meta["release"], batch, pinned)
            worker = meta["worker"]
            self.positions[worker] = meta["position"]
            # torch's DataLoader serves active workers in a fixed cycle; a resumed loader is
            # started with its cycle rotated so this worker's successor comes first.
            self.next_worker = (worker + 1) % self.n_local
            self._counters.update(meta["skips"])
            if "keys" not in batch:
                continue
            self._counters["samples"] += len(batch["keys"])
            yield batch
        if stream.mode == "epoch":
            self.pass_index += 1
            self.positions = [0] * self.n_local
            self.next_worker = 0

    def counters(self) -> dict[str, int]:
        """Skipped items by reason for this rank, summed over its workers, e.g. ``{"corrupt_jpeg": 2}``
        (sum over ranks for a job total). Samples yielded are in ``samples_yielded``."""
        return {k: v for k, v in sorted(self._counters.items()) if k != "samples"}

    @property
    def samples_yielded(self) -> int:
        """Samples this rank's loader has yielded since the start of training (restored on resume)."""
        return self._counters["samples"]

    def state_dict(self) -> dict:
        """This rank's position in the stream (small, JSON-serialisable)."""
        s = self.stream
        return {
            "format": STATE_FORMAT, "split": s.split, "mode": s.mode, "seed": self.cfg.seed,
            "rank": s.rank, "world_size": s.world_size, "num_workers": self.n_local,
            "shards": fingerprint(s.urls), "pass_index": self.pass_index,
            "positions": list(self.positions), "next_worker": self.next_worker,
            "counters": dict(self._counters),
        }

    def load_state_dict(self, state: dict | list[dict]) -> None:
        """Continue from a saved position. ``state`` is one rank's ``state_dict()`` or the list of
        every rank's (then this rank's entry is used).

        Exact when rank count, workers per rank, seed, mode and shard list are unchanged. Otherwise
        the saved pass cannot be continued: the loader starts a fresh pass (``pass_index + 1``, new
        shard order and draws, nothing from the old pass replayed in order) and logs a warning.
        """
        s = self.stream
        if isinstance(state, list):
            matches = [x for x in state if x.get("rank") == s.rank]
            if len(matches) != 1:
                raise ValueError(f"loader state list has no unique entry for rank {s.rank}")
            state = matches[0]
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a loader state ({STATE_FORMAT}): format={state.get('format')!r}")
        if state["split"] != s.split:
            raise ValueError(f"loader state is for split {state['split']!r}, this loader reads {s.split!r}")
        self._counters = Counter(state["counters"])
        same = {
            "world_size": (state["world_size"], s.world_size), "num_workers": (state["num_workers"], self.n_local),
            "seed": (state["seed"], self.cfg.seed), "mode": (state["mode"], s.mode),
            "shards": (state["shards"], fingerprint(s.urls)), "rank": (state["rank"], s.rank),
        }
        changed = {k: v for k, v in same.items() if v[0] != v[1]}
        if not changed:
            self.pass_index = state["pass_index"]
            self.positions = list(state["positions"])
            self.next_worker = state["next_worker"]
            return
        logger.warning("loader state saved with different %s; starting a fresh pass %d instead of resuming "
                       "pass %d exactly", ", ".join(f"{k} ({a} -> {b})" for k, (a, b) in changed.items()),
                       state["pass_index"] + 1, state["pass_index"])
        self.pass_index = state["pass_index"] + 1
        self.positions = [0] * self.n_local
        self.next_worker = 0


def build_loader(cfg: DataConfig, split: str, *, rank: int = 0, world_size: int = 1, stage: int = 1,
                 epoch_mode: bool = False) -> StreamingLoader:
    """The loader of ``split`` ("train" or "val") for ``rank`` of ``world_size``.

    ``epoch_mode=True``: each iteration is one pass over the split (every sample once across all
    ranks and workers). Otherwise infinite: passes repeat reshuffled, or with ``cfg.resampled``
    shards are drawn with replacement. Stage 2 batches add ``mlm_ids``/``mlm_labels``.
    """
    if not cfg.bert_dir:
        raise ValueError("data.bert_dir is empty: name the BERT directory whose tokenizer to use "
                         "(a training recipe fills it from model.text.bert_dir)")
    urls = expand_shards(cfg.shards(split))
    if not urls:
        raise ValueError(f"data.{split}_shards is empty: nothing to load for split {split!r}")
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {stage}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world_size {world_size}")
    # Load the tokenizer here, not in the workers: a bad bert_dir fails now, and forked workers
    # inherit it instead of each importing transformers again (seconds per worker).
    _tokenizer(cfg.bert_dir, cfg.max_tokens)
    mode = "epoch" if epoch_mode else ("resampled" if cfg.resampled else "repeat")
    n_streams = world_size * max(1, cfg.num_workers)
    if mode == "repeat" and len(urls) < n_streams:
        raise ValueError(
            f"data.{split}_shards: {len(urls)} shard(s) for {n_streams} streams (world_size {world_size} x "
            f"num_workers {cfg.num_workers}); every stream needs a shard: write more, smaller shards, lower "
            f"data.num_workers, or set data.resampled=true")
    if mode == "epoch" and len(urls) < n_streams:
        logger.warning("%s: %d shard(s) for %d streams; %d stream(s) will be idle", split, len(urls),
                       n_streams, n_streams - len(urls))
    stream = ShardStream(cfg, split, urls, rank=rank, world_size=world_size, stage=stage, mode=mode)
    return StreamingLoader(stream)
