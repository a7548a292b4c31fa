"""Where the trainer's scalars go: TensorBoard and/or Weights & Biases, behind one ``add_scalar``.

Rank 0 opens them in ``Trainer.fit``; every scalar logged (train loss and lr, perf, data skips,
eval) goes to each open sink with its step. W&B is optional (``trainer.wandb``, the ``wandb``
extra): ``mode: offline`` writes the run under ``OUT/wandb/`` for a later ``wandb sync``, ``online``
streams it, ``disabled`` turns it off. A resumed run continues the same W&B run (its id is kept in
``OUT/wandb_run_id``); W&B ignores steps at or below what the run already logged.
"""
from __future__ import annotations

import logging
import uuid
from pathlib import Path

from lfvila.errors import ConfigError

log = logging.getLogger(__name__)
WANDB_ID_FILE = "wandb_run_id"


class TensorBoardSink:
    def __init__(self, out: Path, first_step: int):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops events a killed run wrote after its last checkpoint (all of them when
        # it was killed before its first one and this run starts from step 0)
        self.writer = SummaryWriter(str(out / "tb"), purge_step=first_step)

    def add_scalar(self, name: str, value: float, step: int) -> None:
        self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    def __init__(self, wandb_cfg, out: Path, run_config: dict):
        try:
            import wandb
        except ImportError:
            raise ConfigError("trainer.wandb is set but the wandb package is not installed: "
                              "pip install 'lfvila[wandb]' (or set trainer.wandb: null)") from None
        id_file = out / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:16]
        id_file.write_text(run_id + "\n")
        self.run = wandb.init(project=wandb_cfg.project, entity=wandb_cfg.entity, name=wandb_cfg.name,
                              mode=wandb_cfg.mode, dir=str(out), id=run_id, resume="allow", config=run_config,
                              settings=wandb.Settings(silent=True, console="off"))

    def add_scalar(self, name: str, value: float, step: int) -> None:
        self.run.log({name: value}, step=step)

    def close(self) -> None:
        self.run.finish()


class ScalarSinks:
    """Fan-out of ``add_scalar`` to the open sinks; ``close`` closes each once."""

    def __init__(self, sinks: list):
        self.sinks = sinks

    def add_scalar(self, name: str, value: float, step: int) -> None:
        for sink in self.sinks:
            sink.add_scalar(name, value, step)

    def close(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:  # a sink that fails to flush must not hide the run's own error
                log.warning("closing %s failed: %s", type(sink).__name__, exc)
        self.sinks = []


def open_sinks(trainer_cfg, out: Path, first_step: int, run_config: dict) -> ScalarSinks | None:
    """The sinks ``trainer_cfg`` asks for (None when none): TensorBoard, W&B."""
    sinks = []
    if trainer_cfg.tensorboard:
        sinks.append(TensorBoardSink(out, first_step))
    if trainer_cfg.wandb is not None and trainer_cfg.wandb.mode != "disabled":
        sinks.append(WandbSink(trainer_cfg.wandb, out, run_config))
    return ScalarSinks(sinks) if sinks else None
