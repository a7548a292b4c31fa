"""The step-based training loop.

One optimizer step (:meth:`Trainer.train_step`) = ``grad_accum`` micro-batches through
:meth:`Trainer.forward_backward`, gradient clipping, AdamW and the lr schedule. The stream
has no epochs that matter: the run is ``trainer.max_steps`` steps long, and the loader's
position is part of every checkpoint, so a resumed run sees exactly the batches, random
numbers and therefore losses the uninterrupted run would have seen.

Per step the losses stay on the device; at log steps they are averaged across ranks in one
collective, written to ``losses.jsonl`` and TensorBoard, and summarised in one log line.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from lfvila.atomic import atomic_write_text
from lfvila.config import to_dict, write_config
from lfvila.data.device import batch_to_device
from lfvila.trainer import checkpoint as ckpt
from lfvila.trainer.config import TrainConfig
from lfvila.trainer.evaluate import chance_level, evaluate, write_eval_json
from lfvila.trainer.flops import device_peak_tflops, format_throughput, training_step_flops
from lfvila.trainer.optim import build_optimizer, build_scheduler, parameter_groups
from lfvila.trainer.parallel import DistContext, setup_distributed
from lfvila.trainer.setup import build_model_and_task, seed_everything

log = logging.getLogger(__name__)


class TaskForward(nn.Module):
    """Makes ``task.losses(batch)`` the ``forward`` of one module, so DDP can wrap it.

    DDP synchronises gradients only for work done inside its wrapped module's ``forward``;
    the tasks call the model's ``encode_*`` methods, hence this thin adapter.
    """

    def __init__(self, task: Any) -> None:
        super().__init__()
        self.model = task.model
        self.task = task if isinstance(task, nn.Module) else None
        self._task = task

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self._task.losses(batch)


def drop_loss_records_after(path: Path, step: int) -> None:
    """Keep only ``path``'s records of steps <= ``step`` (atomically: ``lfvila.atomic``), so a
    resumed run's losses.jsonl has one record per step, like its TensorBoard events (purge_step).
    A torn last line (the kill came mid-write) goes too."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))


@dataclass
class _Window:
    """What happened since the last log line."""

    step_losses: list[tuple[int, torch.Tensor, float]] = field(default_factory=list)
    grad_norms: list[torch.Tensor] = field(default_factory=list)
    samples: int = 0
    data_wait_s: float = 0.0
    started: float = field(default_factory=time.perf_counter)


class Trainer:
    """Builds everything from a :class:`TrainConfig` and runs :meth:`fit`."""

    def __init__(self, cfg: TrainConfig, *, resume: str | None = None, ctx: DistContext | None = None,
                 loader: Any = None) -> None:
        if cfg.task.name == "locvtp" and cfg.data.sampling != "window":
            # (evaluation may read whole videos: lfvila eval --task retrieval of a LocVTP checkpoint)
            from lfvila.errors import ConfigError

            raise ConfigError(f"task.name=locvtp trains on clips paired with their own sentences: set "
                              f"data.sampling=window (got {cfg.data.sampling!r})")
        self.cfg = cfg
        self.ctx = ctx or setup_distributed(cfg.trainer.device)
        self.out = Path(cfg.trainer.out_dir)
        self.ckpt_root = self.out / "checkpoints"
        if resume is None and ckpt.newest_checkpoint(self.ckpt_root) is not None:
            # A fresh run would interleave its checkpoints and loss log with the old run's.
            from lfvila.errors import ConfigError

            raise ConfigError(f"trainer.out_dir {self.out} already holds checkpoints: continue it with "
                             "--resume auto, or choose another out_dir")
        self.step = 0
        self.init_report = None  # the LoadReport of trainer.init_from, when it applied
        tcfg = cfg.trainer
        if tcfg.cpu_threads is not None and self.ctx.device.type == "cpu":
            torch.set_num_threads(tcfg.cpu_threads)
        # Same seed on every rank for the weights; each rank then gets its own stream.
        seed_everything(tcfg.seed)
        self.task = build_model_and_task(cfg)
        self.model = self.task.model.to(self.ctx.device)
        self._freeze_untrained()
        # Decided before any initialisation: `--resume auto` with no checkpoint yet is a fresh start,
        # which takes the recipe's initial weights like a run without --resume.
        resume_from = None if resume is None else self._choose_checkpoint(resume)
        if resume_from is None:
            if resume is not None and self.ctx.is_main:
                log.info("--resume auto: no checkpoint under %s, starting from step 0", self.ckpt_root)
            if cfg.model.video.init_2d:
                self._init_video_2d(cfg.model.video.init_2d)
            if tcfg.init_from:
                self._init_weights(tcfg.init_from)
        self.optimizer = build_optimizer(self._trainable_named(), cfg.optim, self._released_name)
        self._freeze_excluded()
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule, tcfg.max_steps)
        use_cuda = self.ctx.device.type == "cuda"
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(tcfg.precision) if use_cuda else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_cuda and tcfg.precision == "fp16")
        self.forward_module: nn.Module = TaskForward(self.task)
        if self.ctx.distributed:
            self.forward_module = nn.parallel.DistributedDataParallel(
                self.forward_module, device_ids=[self.ctx.device.index] if use_cuda else None,
                find_unused_parameters=tcfg.find_unused_parameters)
        self.ddp = self.forward_module if self.ctx.distributed else None
        if tcfg.compile:
            self.forward_module = torch.compile(self.forward_module, backend=tcfg.compile_backend)
        if loader is None:  # benchmarks pass a synthetic stream
            from lfvila.data import build_loader

            loader = build_loader(cfg.loader_data(), "train", rank=self.ctx.rank, world_size=self.ctx.world_size,
                                  stage=cfg.task.stage)
        self.loader = loader
        seed_everything(tcfg.seed + 1_000_003 * self.ctx.rank + 1)
        if resume_from is not None:
            self._resume(resume_from)
        self.scalars = None  # TensorBoard / W&B (lfvila/trainer/scalars.py), rank 0 only
        self.loss_log = None
        self.last_losses: dict[str, float] = {}
        # FLOPs of one sample's forward + backward, counted on the first batch (see _count_flops)
        self.flops_per_sample: float | None = None
        self.peak_tflops, self.peak_source = device_peak_tflops(self.ctx.device, tcfg.peak_tflops)

    # ---- setup helpers -------------------------------------------------------------------

    def _trainable_named(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def _released_name(self, name: str) -> str | None:
        from lfvila.models.compat import released_key

        return released_key(name, self.model.cfg.text)

    def _freeze_excluded(self) -> None:
        """Parameters the optimizer leaves out (optim.param_groups: released, the pooler) stop training."""
        groups = parameter_groups(self._trainable_named(), self.cfg.optim, self._released_name)
        named = dict(self.model.named_parameters())
        for name in groups["excluded"]:
            named[name].requires_grad_(False)
        if groups["excluded"] and self.ctx.is_main:
            log.info("optim.param_groups=released: not trained (as released): %s", ", ".join(groups["excluded"]))
        self.parameter_counts["trained"] = sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def _freeze_untrained(self) -> None:
        """Parameters the task does not train get no gradient (and DDP does not wait for them)."""
        trainable = {id(p) for p in self.task.trainable_parameters()}
        for param in self.model.parameters():
            if id(param) not in trainable:
                param.requires_grad_(False)
        n_train = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in self.model.parameters())
        self.parameter_counts = {"all": n_all, "trained": n_train}
        if self.ctx.is_main:
            task = self.cfg.task
            log.info("model: %.2fM parameters, %.2fM trained by %s", n_all / 1e6, n_train / 1e6,
                     f"stage {task.stage}" if task.name == "pretrain" else f"task {task.name}")

    def _init_weights(self, spec: str) -> None:
        """Weights from an lfvila checkpoint or a released LF-VILA state_dict (recognised by its key
        names); every missing, unexpected and dropped key is logged and kept in ``self.init_report``."""
        from lfvila.models.compat import LoadReport, is_released_state_dict, load_released

        state = ckpt.load_model_weights(spec)
        if is_released_state_dict(state):
            report = load_released(self.model, state)
        else:
            result = self.model.load_state_dict(state, strict=False)
            unexpected = set(result.unexpected_keys)
            report = LoadReport(loaded=[k for k in state if k not in unexpected],
                                missing=sorted(result.missing_keys), unexpected=sorted(unexpected))
            if self.ctx.is_main:
                report.log(log, f"init_from {spec}")
        if not report.loaded:
            raise ValueError(f"init_from {spec!r}: no parameter of the checkpoint matches this model")
        self.init_report = report

    def _init_video_2d(self, path: str) -> None:
        """The video encoder from a 2D Swin checkpoint, inflated to 3D (``model.video.init_2d``)."""
        from lfvila.models.video import load_swin2d

        report = load_swin2d(self.model.video, path)
        if not report.loaded:
            raise ValueError(f"model.video.init_2d {path}: no tensor of the checkpoint fits the video encoder")
        if self.ctx.is_main:
            log.info("video encoder: %d tensors inflated from the 2D Swin checkpoint %s (%s key layout); "
                     "%d keep their initialisation%s, %d unused%s", len(report.loaded), path, report.layout,
                     len(report.missing), f" ({', '.join(report.missing[:3])})" if report.missing else "",
                     len(report.unexpected), f" ({', '.join(report.unexpected[:3])})" if report.unexpected else "")

    def _resume(self, path: Path) -> None:
        state = ckpt.load_checkpoint(path, rank=self.ctx.rank, world_size=self.ctx.world_size, verify=False)
        rank_file = ckpt.rank_file(self.ctx.rank)
        parts = [  # (file, what, how it is restored)
            (ckpt.MODEL, "model", lambda: self.model.load_state_dict(state["model"])),
            (ckpt.TRAIN_STATE, "optimizer", lambda: self.optimizer.load_state_dict(state["train_state"]["optimizer"])),
            (ckpt.TRAIN_STATE, "scheduler", lambda: self.scheduler.load_state_dict(state["train_state"]["scheduler"])),
            (ckpt.TRAIN_STATE, "grad scaler", lambda: self.scaler.load_state_dict(state["train_state"]["scaler"])),
            (rank_file, "loader position", lambda: self.loader.load_state_dict(state["rank_state"]["loader"])),
            (rank_file, "RNG states", lambda: ckpt.restore_rng_state(state["rank_state"]["rng"])),
        ]
        for name, what, restore in parts:
            try:
                restore()
            except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as exc:
                from lfvila.errors import CheckpointError

                detail = " ".join(str(exc).split())  # load_state_dict lists its mismatches on several lines
                hint = ""
                if what == "optimizer" and self.cfg.task.stage == 2 and self.cfg.task.name == "pretrain":
                    # lfvila before the untied MLM decoder trained one parameter fewer in stage 2
                    hint = (" A stage-2 checkpoint written before the MLM decoder became its own trained "
                            "matrix cannot be resumed; start a new run from its weights with "
                            f"--set trainer.init_from={path}.")
                raise CheckpointError(f"{path / name}: cannot restore the {what} from it ({type(exc).__name__}: "
                                      f"{detail[:300]}); was it written with another model or config?{hint}") from None
        self.step = state["train_state"].get("step")
        if type(self.step) is not int or self.step != state["meta"]["step"]:
            from lfvila.errors import CheckpointError

            raise CheckpointError(f"{path / ckpt.TRAIN_STATE}: step {self.step!r}, meta.json says "
                                  f"{state['meta']['step']}")
        if self.ctx.is_main:
            log.info("resumed from %s at step %d", path, self.step)

    def _choose_checkpoint(self, resume: str) -> Path | None:
        """The verified checkpoint to resume from (None: ``auto`` found none), decided on rank 0.

        Rank 0 alone reads and hashes the files (once, not once per rank) and tells the others
        the step it chose, so every rank loads the same checkpoint; when it finds none intact it
        raises the error naming the files and the others raise too instead of waiting."""
        NONE, FAILED = -1, -2
        chosen, error = NONE, None
        if self.ctx.is_main:
            try:
                if resume == "auto":
                    found = ckpt.latest_checkpoint(self.ckpt_root)
                    chosen = NONE if found is None else ckpt.read_meta(found)["step"]
                else:
                    ckpt.require_intact(resume)
                    chosen = 0
            except Exception as exc:
                chosen, error = FAILED, exc
        chosen = int(self.ctx.broadcast_from_main(torch.tensor([chosen], dtype=torch.int64)).item())
        if error is not None:
            raise error
        if chosen == FAILED:
            from lfvila.errors import CheckpointError

            raise CheckpointError(f"rank 0 found no usable checkpoint for --resume {resume} (its error says why)")
        if chosen == NONE:
            return None
        return ckpt.checkpoint_path(self.ckpt_root, chosen) if resume == "auto" else Path(resume)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.ctx.device.type, dtype=self.amp_dtype)

    def _count_flops(self, batch: dict[str, Any]) -> float:
        """FLOPs per sample of one forward + backward of ``batch``, counted once, before the first step.

        Runs the task uncompiled and outside DDP, with the random streams forked, and takes the
        backward with ``autograd.grad`` (no ``.grad`` written): training computes exactly what it
        would have without the count (every rank counts; the gathers are collectives).
        """
        params = [p for p in self.model.parameters() if p.requires_grad]
        cuda = self.ctx.device.type == "cuda"

        def losses() -> dict[str, torch.Tensor]:
            with self.autocast():
                return self.task.losses(batch)

        with torch.random.fork_rng(devices=[self.ctx.device] if cuda else []):
            flops = training_step_flops(losses, params) / len(batch["keys"])
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.ctx.device)
        if self.ctx.is_main:
            peak = f"{self.peak_tflops:g} TFLOP/s ({self.peak_source})" if self.peak_tflops else self.peak_source
            log.info("flops: %.4g GFLOP per sample (forward + backward, FlopCounterMode on the first batch); "
                     "MFU peak: %s", flops / 1e9, peak)
        return flops

    # ---- one step --------------------------------------------------------------------------

    def forward_backward(self, batch: dict[str, Any], *, sync: bool) -> dict[str, torch.Tensor]:
        """Losses of one micro-batch and their gradients (accumulated; all-reduced when ``sync``)."""
        no_sync = self.ddp.no_sync() if (self.ddp is not None and not sync) else contextlib.nullcontext()
        with no_sync:
            with self.autocast():
                losses = self.forward_module(batch)
            total = sum(losses.values())
            self.scaler.scale(total / self.cfg.trainer.grad_accum).backward()
        return {name: value.detach() for name, value in losses.items()}

    def train_step(self, batches: Iterator[dict[str, Any]], window: _Window) -> dict[str, torch.Tensor]:
        """One optimizer step over ``grad_accum`` micro-batches; returns the mean losses (on device)."""
        accum = self.cfg.trainer.grad_accum
        sums: dict[str, torch.Tensor] = {}
        for micro in range(accum):
            waited = time.perf_counter()
            batch = next(batches)
            window.data_wait_s += time.perf_counter() - waited
            window.samples += len(batch["keys"]) * self.ctx.world_size
            batch = batch_to_device(batch, self.ctx.device)
            if self.flops_per_sample is None:
                counting = time.perf_counter()
                self.flops_per_sample = self._count_flops(batch)
                window.started += time.perf_counter() - counting  # not part of the measured rate
            losses = self.forward_backward(batch, sync=micro == accum - 1)
            for name, value in losses.items():
                sums[name] = sums[name] + value if name in sums else value
        self.scaler.unscale_(self.optimizer)
        if self.cfg.trainer.clip_grad_norm > 0:
            window.grad_norms.append(torch.nn.utils.clip_grad_norm_(
                [p for p in self.model.parameters() if p.requires_grad], self.cfg.trainer.clip_grad_norm))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return {name: value / accum for name, value in sums.items()}

    # ---- the run ---------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Train to ``max_steps``, evaluating and checkpointing on schedule; return the last metrics."""
        tcfg = self.cfg.trainer
        if self.ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            write_config(self.cfg, self.out / "config.yaml")
            from lfvila.config import to_dict
            from lfvila.trainer.scalars import open_sinks

            self.scalars = open_sinks(tcfg, self.out, self.step + 1, to_dict(self.cfg))
            if tcfg.loss_log:
                # Drop what a killed run logged after its last checkpoint, or everything when this run
                # starts from step 0 over a killed run that never checkpointed: one record per step.
                drop_loss_records_after(self.out / "losses.jsonl", self.step)
                self.loss_log = open(self.out / "losses.jsonl", "a", encoding="utf-8")
        metrics: dict[str, Any] = {}
        bar = self._progress_bar()
        window = _Window()
        batches = iter(self.loader)
        last_saved = self.step if self.step else -1
        started = time.monotonic()
        out_of_time = False
        first_step, first_done, warned_slow = self.step, started, tcfg.expected_minutes is None
        try:
            while self.step < tcfg.max_steps and not out_of_time:
                lr = self.scheduler.get_last_lr()[0]
                losses = self.train_step(batches, window)
                self.step += 1
                window.step_losses.append((self.step, torch.stack([losses[k] for k in sorted(losses)]), lr))
                self._loss_names = sorted(losses)
                if bar is not None:
                    bar.update(1)
                out_of_time = self._out_of_time(started)
                if self.step == first_step + 1:
                    first_done = time.monotonic()  # the rate is measured past loader start-up
                if self.step % tcfg.log_every == 0 or self.step == tcfg.max_steps or out_of_time:
                    self._flush_log(window)
                    window = _Window()
                    if not warned_slow and self.step > first_step + 1:
                        warned_slow = self._warn_if_slow(first_done, self.step - first_step - 1)
                if tcfg.eval_every and self.step % tcfg.eval_every == 0 and self.step != tcfg.max_steps:
                    metrics = self.run_eval()
                if self.step % tcfg.ckpt_every == 0:
                    self.save()
                    last_saved = self.step
            if last_saved != self.step:
                self.save()
            metrics = self.run_eval() or metrics
        finally:
            if bar is not None:
                bar.close()
            if self.scalars is not None:
                self.scalars.close()
            if self.loss_log is not None:
                self.loss_log.close()
        return metrics

    def _warn_if_slow(self, since: float, steps: int) -> bool:
        """Warn when ``steps`` steps since ``since`` project the run past ``trainer.expected_minutes``.

        Returns True once the projection has been checked (it is made once per run)."""
        tcfg = self.cfg.trainer
        per_step = (time.monotonic() - since) / steps
        projected_min = per_step * (tcfg.max_steps - self.step) / 60 + (time.monotonic() - since) / 60
        if self.ctx.is_main and projected_min > tcfg.expected_minutes:
            log.warning("this machine is slower than expected for this step budget: %.2f s per step, so %d steps "
                        "will take about %.3g minutes, more than the %.3g expected (trainer.expected_minutes); "
                        "training still runs all %d steps (fewer steps finish sooner)", per_step,
                        tcfg.max_steps, projected_min, tcfg.expected_minutes, tcfg.max_steps)
        return True

    def _out_of_time(self, started: float) -> bool:
        """Whether ``trainer.time_limit_minutes`` has passed; rank 0 decides for every rank."""
        limit = self.cfg.trainer.time_limit_minutes
        if limit is None:
            return False
        over = self.ctx.broadcast_from_main(torch.tensor([float(time.monotonic() - started > 60 * limit)]))
        if over.item() and self.ctx.is_main:
            log.warning("time limit of %.1f minutes reached at step %d of %d: finishing early", limit,
                        self.step, self.cfg.trainer.max_steps)
        return bool(over.item())

    def _progress_bar(self):
        if not (self.ctx.is_main and sys.stderr.isatty()):
            return None
        from tqdm import tqdm

        return tqdm(total=self.cfg.trainer.max_steps, initial=self.step, desc="train", unit="step",
                    dynamic_ncols=True, leave=False)

    def _flush_log(self, window: _Window) -> None:
        """Average the window's per-step losses across ranks; write jsonl, TensorBoard and one line."""
        if not window.step_losses:
            return
        names = self._loss_names
        stacked = torch.stack([v for _, v, _ in window.step_losses]).float()  # (n_steps, n_losses)
        per_step = self.ctx.mean(stacked).cpu().tolist()
        counters = self._loader_counters()
        elapsed = time.perf_counter() - window.started
        grad_norm = torch.stack(window.grad_norms).float().mean().item() if window.grad_norms else None
        if not self.ctx.is_main:
            return
        for (step, _, lr), values in zip(window.step_losses, per_step):
            record = {"step": step, "loss": sum(values), "lr": lr, **dict(zip(names, values))}
            if self.loss_log is not None:
                self.loss_log.write(json.dumps(record) + "\n")
            if self.scalars is not None:
                self.scalars.add_scalar("train/loss", record["loss"], step)
                self.scalars.add_scalar("train/lr", lr, step)
                for name, value in zip(names, values):
                    self.scalars.add_scalar(f"train/{name}", value, step)
        if self.loss_log is not None:
            self.loss_log.flush()
        # The line shows means over the window, the total included, so its parts add up.
        mean = {n: sum(v[i] for v in per_step) / len(per_step) for i, n in enumerate(names)}
        self.last_losses = {"step": self.step, **mean}  # the end-of-run summary shows the last window
        samples_per_s = window.samples / max(elapsed, 1e-9)
        wait_frac = window.data_wait_s / max(elapsed, 1e-9)
        memory = self._memory_gb()
        # TFLOP/s and MFU per device, as torchtitan reports them
        flops_text, tflops, mfu = format_throughput(self.flops_per_sample, samples_per_s / self.ctx.world_size,
                                                    self.peak_tflops)
        if self.scalars is not None:
            self.scalars.add_scalar("perf/samples_per_s", samples_per_s, self.step)
            if tflops is not None:
                self.scalars.add_scalar("perf/tflops_per_device", tflops, self.step)
            if mfu is not None:
                self.scalars.add_scalar("perf/mfu", mfu, self.step)
            self.scalars.add_scalar("perf/data_wait_fraction", wait_frac, self.step)
            self.scalars.add_scalar("perf/memory_gb", memory, self.step)
            if grad_norm is not None:
                self.scalars.add_scalar("train/grad_norm", grad_norm, self.step)
            self.scalars.add_scalar("data/skipped", sum(counters.values()), self.step)
            for reason, count in counters.items():
                self.scalars.add_scalar(f"data/skipped_{reason}", count, self.step)
        loss_text = " ".join(f"{n} {mean[n]:.4f}" for n in names)
        # the loader's skip counters by reason, job totals
        skipped = " ".join(f"{k}={v}" for k, v in sorted(counters.items()) if v)
        line = (f"step {self.step}/{self.cfg.trainer.max_steps} | loss {sum(mean.values()):.4f} ({loss_text}) "
                f"| lr {window.step_losses[-1][2]:.3g} | {samples_per_s:.1f} samples/s{flops_text} | data wait {wait_frac:.0%} "
                f"| {'gpu' if self.ctx.device.type == 'cuda' else 'rss'} mem {memory:.2f}G"
                + (f" | grad norm {grad_norm:.3g}" if grad_norm is not None else "")
                + f" | skipped {sum(counters.values())}" + (f" ({skipped})" if skipped else ""))
        self._write_line(line)

    def _write_line(self, line: str) -> None:
        if sys.stderr.isatty():
            from tqdm.contrib.logging import logging_redirect_tqdm

            with logging_redirect_tqdm():
                log.info(line)
        else:
            log.info(line)

    def _loader_counters(self) -> dict[str, int]:
        """The loader's skip counters, summed over ranks."""
        counters = getattr(self.loader, "counters", None)
        local = dict(counters()) if counters is not None else {}
        total: dict[str, int] = {}
        for part in self.ctx.gather_objects(local):
            for reason, count in part.items():
                total[reason] = total.get(reason, 0) + int(count)
        return total

    def _memory_gb(self) -> float:
        if self.ctx.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.ctx.device) / 2**30
        # ru_maxrss is in KiB on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    # ---- checkpoints and evaluation --------------------------------------------------------

    def save(self) -> Path:
        """Write the checkpoint of the current step (every rank must call this)."""
        def shared() -> dict[str, Any]:
            return {
                "model": self.model.state_dict(),
                "train_state": {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                                "scaler": self.scaler.state_dict(), "step": self.step},
            }

        per_rank = {"rng": ckpt.capture_rng_state(), "loader": self.loader.state_dict(), "step": self.step}
        path = ckpt.save_checkpoint(self.ckpt_root, self.step, rank=self.ctx.rank, world_size=self.ctx.world_size,
                                    shared=shared, per_rank=per_rank, config=to_dict(self.cfg),
                                    keep_last=self.cfg.trainer.keep_last, barrier=self.ctx.barrier)
        if self.ctx.is_main:
            log.info("saved checkpoint %s", path)
        return path

    def has_val_data(self) -> bool:
        return bool(self.cfg.data.val_shards)

    def run_eval(self) -> dict[str, float]:
        """Evaluate on the val shards; log, write ``eval/step_N.json`` and ``eval.json`` in the checkpoint."""
        if not self.has_val_data():
            return {}
        from lfvila.data import build_loader

        loader = build_loader(self.cfg.loader_data(), "val", rank=self.ctx.rank, world_size=self.ctx.world_size,
                              stage=self.cfg.task.stage, epoch_mode=True)
        if hasattr(self.task, "evaluate"):  # a downstream task scores its own way (e.g. the whole val set)
            metrics = self.task.evaluate(loader, self.ctx, autocast=self.autocast())
        else:
            metrics = evaluate(self.task, loader, self.ctx, max_batches=self.cfg.trainer.eval_max_batches,
                               autocast=self.autocast(), loss_batch_size=self.cfg.data.batch_size)
        if self.ctx.is_main:
            metrics = {"step": self.step, **metrics}
            write_eval_json(metrics, self.out / "eval" / f"step_{self.step:08d}.json")
            step_ckpt = ckpt.checkpoint_path(self.ckpt_root, self.step)
            if (step_ckpt / ckpt.META).is_file():
                write_eval_json(metrics, step_ckpt / "eval.json")
            log.info("eval step %d: %s", self.step, format_metrics(metrics))
            if self.scalars is not None:
                for name, value in metrics.items():
                    if name != "step" and not name.endswith("_chance") and math.isfinite(value):
                        self.scalars.add_scalar(f"eval/{name}", value, self.step)
        return metrics


def format_metrics(metrics: dict[str, Any]) -> str:
    """A compact one-line summary: each figure with its chance level in brackets."""
    parts = []
    for name, value in metrics.items():
        if name.endswith("_chance") or name == "step":
            continue
        chance = chance_level(metrics, name)
        parts.append(f"{name} {value:.4g}" + (f" (chance {chance:.3g})" if chance is not None else ""))
    return ", ".join(parts)


def train(cfg: TrainConfig, *, resume: str | None = None) -> dict[str, Any]:
    """Run a whole training job in this process (one rank of it under torchrun)."""
    trainer = Trainer(cfg, resume=resume)
    return trainer.fit()
