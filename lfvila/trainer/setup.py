"""What training (``trainer.loop``) and evaluation (``trainer.evaluate``, ``eval.retrieval``) set up alike:
the random seeds and the model with its task object. Both import it; neither imports the other for it."""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from lfvila.models.lfvila import build_model
from lfvila.tasks import build_task
from lfvila.trainer.config import TrainConfig


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators from one integer."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def build_model_and_task(cfg: TrainConfig) -> Any:
    """A fresh model of ``cfg.model`` wrapped in the task object of ``cfg.task`` (``task.model`` is the model)."""
    return build_task(build_model(cfg.model), cfg.task)
