"""AdamW with decay / no-decay groups and the warm-up + linear-decay (or step-decay) schedule."""
from __future__ import annotations

from typing import Callable, Iterable

import torch

from lfvila.trainer.config import OptimConfig, ScheduleConfig


# The release's rule (LF-VILA src/optimization/optimizer.py), on released parameter names.
RELEASED_NO_DECAY = ("bias", "LayerNorm.bias", "LayerNorm.weight", "pos_embed", "relative_position_bias_table")
RELEASED_EXCLUDED = "pooler"


def parameter_groups(named_params: Iterable[tuple[str, torch.nn.Parameter]], cfg: OptimConfig,
                     released_name: Callable[[str], str | None] | None = None) -> dict[str, list[str]]:
    """Names of the parameters decayed, not decayed and left out of the optimizer.

    ``optim.param_groups: lfvila``: 1-D parameters (biases, norm weights) are not decayed unless
    ``decay_norm_and_bias``. ``released``: the release's substring rule applied to each parameter's
    released name (``released_name``; a name without one is judged as it is), the pooler left out.
    """
    groups: dict[str, list[str]] = {"decay": [], "no_decay": [], "excluded": []}
    for name, param in named_params:
        if cfg.param_groups == "released":
            judged = (released_name(name) if released_name else None) or name
            group = ("excluded" if RELEASED_EXCLUDED in judged
                     else "no_decay" if any(part in judged for part in RELEASED_NO_DECAY) else "decay")
        else:
            group = "decay" if cfg.decay_norm_and_bias or param.ndim > 1 else "no_decay"
        groups[group].append(name)
    return groups


def build_optimizer(named_params: Iterable[tuple[str, torch.nn.Parameter]], cfg: OptimConfig,
                    released_name: Callable[[str], str | None] | None = None) -> torch.optim.AdamW:
    """AdamW over the given trainable parameters, grouped by :func:`parameter_groups` (the excluded
    ones get no optimizer slot: the caller freezes them)."""
    named_params = list(named_params)
    names = parameter_groups(named_params, cfg, released_name)
    by_name = dict(named_params)
    decay, no_decay = [by_name[n] for n in names["decay"]], [by_name[n] for n in names["no_decay"]]
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
