"""AdamW with decay / no-decay groups and the warm-up + linear-decay (or step-decay) schedule."""
from __future__ import annotations

from typing import Iterable

import torch

from lfvila.trainer.config import OptimConfig, ScheduleConfig


def build_optimizer(named_params: Iterable[tuple[str, torch.nn.Parameter]], cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over the given trainable parameters; biases and norm weights (1-D) are not decayed."""
    decay, no_decay = [], []
    for _, param in named_params:
        (decay if cfg.decay_norm_and_bias or param.ndim > 1 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    # the fused kernel is the fastest AdamW on GPU; CPU keeps torch's default implementation
    fused = all(p.is_cuda for g in groups for p in g["params"]) or None
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused)


def lr_factor(step: int, warmup_steps: int, total_steps: int, final_ratio: float) -> float:
    """Multiplier of the base lr for optimizer step ``step`` (0-based): linear up, then linear down."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / decay_steps, 1.0)
    return final_ratio + (1.0 - final_ratio) * (1.0 - progress)


def step_lr_factor(step: int, warmup_steps: int, decay_every: int, rate: float) -> float:
    """Multiplier for optimizer step ``step`` (0-based): linear up, then ``rate ** (step // decay_every)``,
    the decay counted from step 0 (warm-up included), as timm's StepLRScheduler the release uses."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    return rate ** (step // decay_every)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, max_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    if cfg.decay == "step":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: step_lr_factor(step, cfg.warmup_steps, cfg.decay_every_steps, cfg.decay_rate))
    total = cfg.total_steps or max_steps
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg.warmup_steps, total, cfg.final_lr_ratio))
