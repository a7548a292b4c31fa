"""The training config tree: data, model, task, optimiser, schedule and loop settings.

``TrainConfig`` is the root a recipe (``train/*.yaml``) fills; every section is the
dataclass its component owns, so a recipe is plain YAML and ``--set a.b=c`` reaches any
field. The resolved tree is written next to every checkpoint.
"""
from __future__ import annotations


from dataclasses import dataclass, field, replace

from lfvila.data.config import DataConfig
from lfvila.models.lfvila import ModelConfig
from lfvila.tasks import TaskConfig

PRECISIONS = ("bf16", "fp16", "fp32")


@dataclass
class OptimConfig:
    """AdamW; the defaults are the released LF-VILA hyper-parameters."""

    lr: float = 5e-5
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    weight_decay: float = 0.05
    # Parameters with ndim > 1 (weight matrices and embedding tables) are decayed; 1-D ones (biases,
    # norm weights) are not unless this is true (lfvila/trainer/optim.py).
    decay_norm_and_bias: bool = False
    # "lfvila": the rule above. "released": the release's groups, by released parameter name: no decay
    # for names holding bias, LayerNorm.weight, pos_embed or relative_position_bias_table (so Swin's
    # and the paragraph embedding's norm weights and all embedding tables are decayed, the video
    # position embeddings and relative position bias tables are not), and the BERT pooler (the
    # matching head's pooler) is left out of the optimizer: it keeps its BERT weights.
    param_groups: str = "lfvila"

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must lie in [0, 1), got {self.betas}")
        if not self.eps > 0:
            raise ValueError(f"optim.eps must be > 0, got {self.eps}")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if self.param_groups not in ("lfvila", "released"):
            raise ValueError(f"optim.param_groups must be 'lfvila' or 'released', got {self.param_groups!r}")


@dataclass
class ScheduleConfig:
    """Linear warm-up from 0 to ``optim.lr``, then ``decay``: "linear" to ``final_lr_ratio * lr``
    (pre-training), or "step": ``lr * decay_rate ** (step // decay_every_steps)`` (the release's
    retrieval fine-tuning: x0.25 every 5 epochs, counted from step 0 as timm's StepLRScheduler)."""

    warmup_steps: int = 0
    # Steps over which the decay runs; None means ``trainer.max_steps``.
    total_steps: int | None = None
    final_lr_ratio: float = 0.0
    decay: str = "linear"
    decay_every_steps: int = 0  # decay: step
    decay_rate: float = 0.25  # decay: step

    def __post_init__(self) -> None:
        if self.decay not in ("linear", "step"):
            raise ValueError(f"schedule.decay must be 'linear' or 'step', got {self.decay!r}")
        if self.decay == "step" and self.decay_every_steps < 1:
            raise ValueError(f"schedule.decay_every_steps must be >= 1 with decay=step, got {self.decay_every_steps}")
        if not 0 < self.decay_rate <= 1:
            raise ValueError(f"schedule.decay_rate must lie in (0, 1], got {self.decay_rate}")
        if self.warmup_steps < 0:
            raise ValueError(f"schedule.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.total_steps is not None and self.total_steps < 1:
            raise ValueError(f"schedule.total_steps must be >= 1 or null, got {self.total_steps}")
        if not 0 <= self.final_lr_ratio <= 1:
            raise ValueError(f"schedule.final_lr_ratio must lie in [0, 1], got {self.final_lr_ratio}")


@dataclass
class WandbConfig:
    """Weights & Biases logging (``trainer.wandb``): the same scalars as TensorBoard."""

    project: str = "lfvila"
    # offline: written under OUT/wandb for a later `wandb sync`; online: streamed; disabled: off
    mode: str = "offline"
    entity: str | None = None
    name: str | None = None  # the run's display name (default: W&B's)

    def __post_init__(self) -> None:
        if self.mode not in ("online", "offline", "disabled"):
            raise ValueError(f"trainer.wandb.mode must be online, offline or disabled, got {self.mode!r}")
        if not self.project:
            raise ValueError("trainer.wandb.project must not be empty")


@dataclass
class TrainerConfig:
    """The loop: how long, how often to log, save and evaluate, where to write, numerics."""

    max_steps: int = 1000
    grad_accum: int = 1
    # Clip the global gradient norm to this value; 0 disables clipping.
    clip_grad_norm: float = 1.0
    log_every: int = 10
    ckpt_every: int = 500
    keep_last: int = 3
    # Evaluate on the val split every N steps (0: only at the end); needs data val shards.
    eval_every: int = 0
    # Stop evaluation after this many batches per rank (None: the whole val split).
    eval_max_batches: int | None = None
    out_dir: str = "runs/lfvila"
    seed: int = 0
    # bf16 autocast (or fp16 with a gradient scaler) applies on GPU; CPU runs are fp32.
    precision: str = "bf16"
    compile: bool = False
    # torch.compile backend with compile: true ("inductor"; "aot_eager" traces and runs the same
    # graphs without code generation, to tell a tracing problem from a code-generation one).
    compile_backend: str = "inductor"
    tensorboard: bool = True
    # Weights & Biases next to TensorBoard (None: off); needs the wandb extra. See WandbConfig.
    wandb: WandbConfig | None = None
    # "auto": CUDA when available; "cpu" or "cuda" to force.
    device: str = "auto"
    # Initialise the model from this checkpoint (a checkpoint directory or its model.pt), e.g.
    # stage 2 from stage 1. Ignored when resuming, which restores everything.
    init_from: str | None = None
    # Write every step's rank-averaged losses to out_dir/losses.jsonl (flushed at log steps).
    loss_log: bool = True
    # torch intra-op threads on CPU (None: torch's default, one per core). The demo uses 1: the
    # loader worker takes the other core, and oversubscribed cores spin instead of compute.
    cpu_threads: int | None = None
    # Stop early (then checkpoint and evaluate as at the end) once this many minutes of training
    # have passed; a safety net for time-boxed runs such as the demo. None: no limit.
    time_limit_minutes: float | None = None
    # Warn (once, at the first log step) when the measured step rate projects the whole run past
    # this many minutes; training still runs to max_steps, so its figures do not depend on the
    # machine's load (the demo sets it). None: no warning.
    expected_minutes: float | None = None
    # DDP must be told when some trainable parameters get no gradient in a step.
    find_unused_parameters: bool = False
    # The device's peak TFLOP/s for the MFU of the log line (None: the dense bf16 peak of an A100,
    # H100 or H200 by its name; a CPU or another GPU then logs "MFU n/a").
    peak_tflops: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_steps", "grad_accum", "log_every", "ckpt_every", "keep_last"):
            if getattr(self, name) < 1:
                raise ValueError(f"trainer.{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_every < 0:
            raise ValueError(f"trainer.eval_every must be >= 0, got {self.eval_every}")
        if self.eval_max_batches is not None and self.eval_max_batches < 1:
            raise ValueError(f"trainer.eval_max_batches must be >= 1 or null, got {self.eval_max_batches}")
        if self.clip_grad_norm < 0:
            raise ValueError(f"trainer.clip_grad_norm must be >= 0, got {self.clip_grad_norm}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"trainer.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"trainer.device must be auto, cpu or cuda, got {self.device!r}")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ValueError(f"trainer.cpu_threads must be >= 1 or null, got {self.cpu_threads}")
        if self.time_limit_minutes is not None and not self.time_limit_minutes > 0:
            raise ValueError(f"trainer.time_limit_minutes must be > 0 or null, got {self.time_limit_minutes}")
        if self.expected_minutes is not None and not self.expected_minutes > 0:
            raise ValueError(f"trainer.expected_minutes must be > 0 or null, got {self.expected_minutes}")
        if not self.compile_backend:
            raise ValueError("trainer.compile_backend must name a torch.compile backend, e.g. inductor")
        if self.peak_tflops is not None and not self.peak_tflops > 0:
            raise ValueError(f"trainer.peak_tflops must be > 0 or null, got {self.peak_tflops}")
        if not self.out_dir:
            raise ValueError("trainer.out_dir must not be empty")


@dataclass
class TrainConfig:
    """Root of a training recipe."""

    data: DataConfig = field(default_factory=DataConfig)  # its bert_dir: leave empty (see loader_data)
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def __post_init__(self) -> None:
        self.model = model_for_data(self.model, self.data)
        if self.task.name == "locvtp" and not self.model.context_projection:
            # the task's heads are the model's (checkpointed with it); the task decides they exist
            self.model = replace(self.model, context_projection=True)
        if self.data.bert_dir and self.data.bert_dir != self.model.text.bert_dir:
            raise ValueError(f"data.bert_dir ({self.data.bert_dir!r}) differs from model.text.bert_dir "
                             f"({self.model.text.bert_dir!r}): the tokenizer must be the model's BERT; "
                             f"leave data.bert_dir empty")
        if self.task.name == "retrieval" and self.data.sampling != "whole_video":
            raise ValueError(f"task.name=retrieval reads whole videos: set data.sampling=whole_video "
                             f"(got {self.data.sampling!r})")
        if self.data.text_slots > self.model.text.max_sentences:
            slots = "paragraph_sentences" if self.data.sampling == "whole_video" else "n_sentences"
            raise ValueError(f"data.{slots} ({self.data.text_slots}) exceeds model.text.max_sentences "
                             f"({self.model.text.max_sentences}), the number of sentence segment embeddings")
        total = self.schedule.total_steps
        if total is not None and total < self.schedule.warmup_steps:
            raise ValueError(f"schedule.total_steps ({total}) must be >= schedule.warmup_steps "
                             f"({self.schedule.warmup_steps})")

    def loader_data(self) -> DataConfig:
        """The data section as the loader takes it: the tokenizer is the model's BERT."""
        return replace(self.data, bert_dir=self.model.text.bert_dir)


def model_for_data(model: ModelConfig, data: DataConfig) -> ModelConfig:
    """``model`` with the settings the data decides filled in, or a ValueError naming both keys.

    A sample has ``data.n_sentences`` clips of ``data.frames_per_sentence`` frames and sentences
    of at most ``data.max_tokens`` tokens; the model's copies of these exist only because a model
    can be built without a recipe. Left out of a recipe they are taken from the data; set, they
    must agree: the clip length is the sentence's frame count, and the temporal embedding
    (``max_frames``, a parameter shape a checkpoint fixes) and the token cap may be larger than a
    sample needs, never smaller.
    """
    frames_per_clip = model.frames_per_clip or data.frames_per_sentence
    if frames_per_clip != data.frames_per_sentence:
        raise ValueError(f"model.frames_per_clip ({frames_per_clip}) differs from data.frames_per_sentence "
                         f"({data.frames_per_sentence}): a clip is one sentence's frames; leave "
                         f"model.frames_per_clip out of the recipe")
    max_frames = model.max_frames or data.n_frames
    if max_frames < data.n_frames:
        raise ValueError(f"model.max_frames ({max_frames}) is less than the {data.n_frames} frames of a sample "
                         f"(data.n_sentences x data.frames_per_sentence); leave model.max_frames out of the recipe")
    max_tokens = model.text.max_tokens or data.max_tokens
    if max_tokens < data.max_tokens:
        raise ValueError(f"model.text.max_tokens ({max_tokens}) is less than data.max_tokens ({data.max_tokens}); "
                         f"leave model.text.max_tokens out of the recipe")
    return replace(model, frames_per_clip=frames_per_clip, max_frames=max_frames,
                   text=replace(model.text, max_tokens=max_tokens))
