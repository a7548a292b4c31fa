"""The retrieval task (task.name=retrieval) and the step-decay schedule on hand-made inputs."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lfvila.losses import GlobalContrastiveLoss
from lfvila.tasks import RetrievalTask, TaskConfig, build_task
from lfvila.trainer.optim import step_lr_factor
from test_tasks import T, model  # noqa: F401  (the tiny model fixture: 4 clips of 1 frame)

RECIPES = Path(__file__).resolve().parents[1] / "train"
B, M_TEXT, L = 3, 8, 8  # 8 paragraph slots


def batch() -> dict:
    gen = torch.Generator().manual_seed(0)
    text_ids = torch.randint(1000, 2000, (B, M_TEXT, L), generator=gen)
    text_mask = torch.ones(B, M_TEXT, L, dtype=torch.long)
    sentence_mask = torch.zeros(B, M_TEXT, dtype=torch.bool)
    for b, n in enumerate((8, 5, 2)):  # real sentences per paragraph; the rest are padding
        sentence_mask[b, :n] = True
    text_mask[~sentence_mask] = 0
    text_ids[text_mask == 0] = 0
    return {"video": torch.randn(B, 3, T, 48, 80, generator=gen), "text_ids": text_ids, "text_mask": text_mask,
            "sentence_mask": sentence_mask, "keys": ["a", "b", "c"]}


def test_retrieval_task_trains_the_two_towers_and_the_global_projections_only(model):
    task = build_task(model, TaskConfig(name="retrieval"))
    assert isinstance(task, RetrievalTask)
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("video.") for n in trained) and any(n.startswith("text.paragraph_layers") for n in trained)
    assert {n.split(".")[0] for n in trained} == {"video", "text", "video_proj", "paragraph_proj"}
    assert not any(n.startswith(("clip_proj", "sentence_proj", "video.local_")) for n in trained)
    losses = task.losses(batch())
    assert set(losses) == {"global"}
    b = batch()
    model.eval()  # the same features without dropout on both sides
    expected = GlobalContrastiveLoss(0.05)(model.encode_video(b["video"])["global"],
                                           model.encode_text(b["text_ids"], b["text_mask"],
                                                             b["sentence_mask"])["paragraph"])
    assert task.losses(b)["global"].item() == pytest.approx(expected.item(), rel=1e-5)
    model.train()
    model.zero_grad(set_to_none=True)
    task.losses(b)["global"].backward()
    # every trained parameter gets a gradient (DDP never waits for one that does not)
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


def test_step_decay_schedule_by_hand():
    # warm-up 2 steps, then x0.25 every 5 steps counted from step 0
    got = [step_lr_factor(s, 2, 5, 0.25) for s in range(13)]
    assert got == [0.5, 1, 1, 1, 1, 0.25, 0.25, 0.25, 0.25, 0.25, 0.0625, 0.0625, 0.0625]


def test_activitynet_recipe_is_the_released_schedule_in_steps():
    from lfvila.config import load_config
    from lfvila.trainer.config import TrainConfig

    cfg = load_config(TrainConfig, RECIPES / "retrieval_activitynet.yaml")
    per_epoch = 10009 // (16 * 8)  # collaborative-experts train list, 8 GPUs x 16, drop_last
    s = cfg.schedule
    assert (cfg.trainer.max_steps, s.warmup_steps, s.decay_every_steps) == (20 * per_epoch, per_epoch, 5 * per_epoch)
    factors = {step: step_lr_factor(step, s.warmup_steps, s.decay_every_steps, s.decay_rate)
               for step in (0, per_epoch, 5 * per_epoch - 1, 5 * per_epoch, 10 * per_epoch, 20 * per_epoch - 1)}
    assert factors == {0: 1 / per_epoch, per_epoch: 1.0, 5 * per_epoch - 1: 1.0, 5 * per_epoch: 0.25,
                       10 * per_epoch: 0.0625, 20 * per_epoch - 1: 0.25 ** 3}
    assert (cfg.optim.lr, cfg.data.batch_size, cfg.task.global_temperature, cfg.data.n_frames) == (5e-5, 16, 0.05, 32)


def test_retrieval_needs_whole_video_samples_and_stage_1():
    from lfvila.config import load_config
    from lfvila.trainer.config import TrainConfig

    with pytest.raises(ValueError, match="data.sampling"):
        load_config(TrainConfig, RECIPES / "retrieval_tiny.yaml", ["data.sampling=window"])
    with pytest.raises(ValueError, match="task.stage"):
        TaskConfig(name="retrieval", stage=2)
    with pytest.raises(ValueError, match="task.name"):
        TaskConfig(name="qa")
    with pytest.raises(ValueError, match="decay_every_steps"):
        load_config(TrainConfig, RECIPES / "retrieval_tiny.yaml", ["schedule.decay_every_steps=0"])


def test_the_trainer_scheduler_applies_the_step_decay():
    from lfvila.trainer.config import ScheduleConfig
    from lfvila.trainer.optim import build_scheduler

    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(optimizer, ScheduleConfig(warmup_steps=2, decay="step", decay_every_steps=5),
                                max_steps=13)
    lrs = []
    for _ in range(13):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs == [step_lr_factor(s, 2, 5, 0.25) for s in range(13)]
