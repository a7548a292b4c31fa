"""The lines a training run prints at its start and end (and writes to ``out_dir/train.log``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from lfvila.data.shardcheck import ShardCheck

LOG_NAME = "train.log"


def start_lines(trainer: Any, config_path: str | Path, n_overrides: int, checks: list[ShardCheck]) -> list[str]:
    """Config, world size and device, model size, data found, step budget."""
    cfg, ctx = trainer.cfg, trainer.ctx
    counts = trainer.parameter_counts
    tcfg = cfg.trainer
    lines = [
        f"config: {config_path}" + (f" with {n_overrides} --set override(s)" if n_overrides else "")
        + (f"; stage {cfg.task.stage}" if cfg.task.name == "pretrain" else f"; task {cfg.task.name}")
        + f"; world size {ctx.world_size} on {ctx.device.type}",
        f"model: {counts['all'] / 1e6:.2f}M parameters, {counts['trained'] / 1e6:.2f}M trained",
        *(f"data {check.summary()}" for check in checks),
        f"run: steps {trainer.step}..{tcfg.max_steps}, batch {cfg.data.batch_size} per rank "
        f"(x {tcfg.grad_accum} accumulation), checkpoints every {tcfg.ckpt_every} steps to {trainer.ckpt_root}",
    ]
    return lines


def end_lines(trainer: Any, metrics: dict[str, Any], checkpoint: Path | None) -> list[str]:
    """Steps done, final losses (the last log window's means), checkpoint, eval results, the log."""
    from lfvila.trainer.loop import format_metrics

    last = dict(trainer.last_losses)
    lines = [f"finished: step {trainer.step}/{trainer.cfg.trainer.max_steps}"]
    if last:
        step = last.pop("step")
        parts = ", ".join(f"{name} {value:.4f}" for name, value in last.items())
        lines.append(f"final losses (mean of the last log window, to step {step}): "
                     f"loss {sum(last.values()):.4f} ({parts})")
    lines.append(f"checkpoint: {checkpoint}")
    shown = {k: v for k, v in metrics.items() if k != "step"}
    lines.append(f"eval: {format_metrics(shown)}" if shown else "eval: none (no data.val_shards)")
    lines.append(f"log: {trainer.out / LOG_NAME}")
    return lines
