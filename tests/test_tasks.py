"""The joint model and the two stage tasks at the tiny config (real MiniLM BERT, random video)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from lfvila.models.lfvila import ModelConfig, build_model
from lfvila.models.text import TextEncoderConfig
from lfvila.tasks import Stage1Task, Stage2Task, TaskConfig, build_task

B, M, L, T = 3, 4, 8, 4  # 4 clips of 1 frame keep the CPU test fast


@pytest.fixture(scope="module")
def model(bert_dir):
    torch.manual_seed(0)
    cfg = ModelConfig.tiny()
    cfg = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, bert_dir=str(bert_dir)), frames_per_clip=1,
                              max_frames=T)
    return build_model(cfg)


def make_batch(seed: int = 0, stage: int = 1) -> dict:
    gen = torch.Generator().manual_seed(seed)
    text_ids = torch.randint(1000, 2000, (B, M, L), generator=gen)
    text_mask = torch.ones(B, M, L, dtype=torch.long)
    text_mask[:, :, 6:] = 0
    sentence_mask = torch.ones(B, M, dtype=torch.bool)
    sentence_mask[B - 1, 3] = False  # one sample with 3 sentences
    text_mask[B - 1, 3] = 0
    text_ids[text_mask == 0] = 0
    batch = {"video": torch.randn(B, 3, T, 48, 80, generator=gen), "text_ids": text_ids, "text_mask": text_mask,
             "sentence_mask": sentence_mask, "keys": [f"k{i}" for i in range(B)]}
    if stage == 2:
        labels = torch.full((B, M, L), -100)
        mlm_ids = text_ids.clone()
        labels[:, :, 2] = text_ids[:, :, 2]
        labels[B - 1, 3] = -100
        mlm_ids[:, :, 2] = 103  # [MASK]
        batch.update(mlm_ids=mlm_ids, mlm_labels=labels)
    return batch


def test_encode_shapes_and_norms(model):
    batch = make_batch()
    d, cv, ct = model.cfg.embed_dim, model.video.out_dim, model.text.width
    with torch.no_grad():
        video = model.encode_video(batch["video"])
        text = model.encode_text(batch["text_ids"], batch["text_mask"], batch["sentence_mask"])
    assert video["clip"].shape == (B, M, d) and video["global"].shape == (B, d)
    assert video["tokens"].shape == (B, T * 6, cv)
    assert text["sentence"].shape == (B, M, d) and text["paragraph"].shape == (B, d)
    assert text["tokens"].shape == (B, 1 + M * L, ct) and text["token_mask"].dtype == torch.bool
    for x in (video["clip"], video["global"], text["sentence"], text["paragraph"]):
        torch.testing.assert_close(x.norm(dim=-1), torch.ones(x.shape[:-1]))
    with pytest.raises(ValueError, match="model.max_frames"):
        ModelConfig(frames_per_clip=8, max_frames=4)


def grads_by_name(model) -> dict[str, bool]:
    return {name: p.grad is not None and bool(p.grad.abs().sum() > 0) for name, p in model.named_parameters()}


def check_gradients(model, task) -> None:
    trainable = {id(p) for p in task.trainable_parameters()}
    got = grads_by_name(model)
    for name, p in model.named_parameters():
        if id(p) in trainable:
            assert p.requires_grad and got[name], f"trainable {name} got no gradient"
        else:
            assert not p.requires_grad and p.grad is None, f"frozen {name} got a gradient"


def test_stage1_losses_and_gradients(model):
    task = build_task(model, TaskConfig(stage=1))
    assert isinstance(task, Stage1Task)
    model.eval()  # no stochastic depth: every block must get a gradient
    model.zero_grad(set_to_none=True)
    losses = task.losses(make_batch(), generator=torch.Generator().manual_seed(0))
    assert set(losses) == {"global", "mtc"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    sum(losses.values()).backward()
    check_gradients(model, task)
    frozen = {id(p) for p in model.text.cross_layers.parameters()} | {id(p) for p in model.video_tokens.parameters()}
    assert not frozen & {id(p) for p in task.trainable_parameters()}


def test_stage1_weights_scale_losses(model):
    batch = make_batch()
    model.eval()
    with torch.no_grad():
        base = Stage1Task(model, TaskConfig()).losses(batch, generator=torch.Generator().manual_seed(1))
        scaled = Stage1Task(model, TaskConfig(global_weight=2.0, mtc_weight=0.5)).losses(
            batch, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(scaled["global"], 2 * base["global"])
    torch.testing.assert_close(scaled["mtc"], 2 * base["mtc"])  # 0.5 / 0.25
    batch["video"] = batch["video"][:, :, :2]  # 2 clips for 4 sentences
    with pytest.raises(ValueError, match="2 clips but 4 sentences"):
        with torch.no_grad():
            Stage1Task(model, TaskConfig()).losses(batch)


def test_stage2_freezes_and_trains_exactly_the_cross_modal_part(model):
    task = build_task(model, TaskConfig(stage=2))
    assert isinstance(task, Stage2Task)
    model.eval()
    model.zero_grad(set_to_none=True)
    losses = task.losses(make_batch(stage=2))
    assert set(losses) == {"mlm", "vtm"}
    sum(losses.values()).backward()
    check_gradients(model, task)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("text.cross_layers.") for n in names)
    assert not any(n.startswith(("video.", "text.sentence_layers.", "text.paragraph_layers.", "text.embeddings.",
                                 "text.paragraph_embeddings.", "clip_proj", "video_proj", "sentence_proj",
                                 "paragraph_proj")) for n in names)


def test_stage2_mlm_uses_matched_pairs_only_and_frozen_parts_stay_in_eval(model):
    """Changing the MLM labels of the mismatched half (first B // 2) changes nothing."""
    task = Stage2Task(model, TaskConfig(stage=2))
    model.train()
    batch = make_batch(stage=2)

    def mlm() -> torch.Tensor:
        torch.manual_seed(0)  # same dropout masks in the trained cross-modal layers
        return task.losses(batch)["mlm"]

    with torch.no_grad():
        base = mlm()
        assert not model.video.training and not model.text.sentence_layers.training
        assert model.text.cross_layers.training
        batch["mlm_labels"][: B // 2, :, 3] = 1000
        torch.testing.assert_close(mlm(), base)
        batch["mlm_labels"][B // 2:, :, 3] = 1000
        assert not torch.allclose(mlm(), base)


def test_task_config_validation():
    with pytest.raises(ValueError, match="task.stage"):
        TaskConfig(stage=3)
    with pytest.raises(ValueError, match="task.mtc_values"):
        TaskConfig(mtc_values=1)
    with pytest.raises(ValueError, match="task.global_temperature"):
        TaskConfig(global_temperature=0.0)


def test_stage2_needs_cross_modal_layers(bert_dir):
    cfg = ModelConfig.tiny()
    cfg = dataclasses.replace(cfg, text=TextEncoderConfig(bert_dir=str(bert_dir), sentence_layers=1,
                                                          paragraph_layers=1, cross_layers=0))
    stage1_only = build_model(cfg)
    assert stage1_only.video_tokens is None
    with pytest.raises(ValueError, match="cross_layers"):
        Stage2Task(stage1_only, TaskConfig(stage=2))
