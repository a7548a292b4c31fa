"""The reference switches (docs/training.md, "lfvila's defaults and the release"): each changes exactly
its behaviour to the release's, the defaults stay lfvila's, and both reference recipes train."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lfvila.config import from_dict, load_config
from lfvila.data.config import DataConfig
from lfvila.data.sampling import _window
from lfvila.data.transforms import random_resized_crop_box
from lfvila.models.lfvila import ModelConfig, build_model
from lfvila.models.text import TextEncoder, TextEncoderConfig, read_state_dict
from lfvila.tasks import Stage2Task, TaskConfig
from lfvila.testing import write_synthetic_shards
from lfvila.trainer.config import OptimConfig, TrainConfig
from lfvila.trainer.optim import parameter_groups

RECIPES = Path(__file__).resolve().parents[1] / "train"


def test_torchvision_ratio_on_16_9_frames_is_always_the_fixed_centre_crop():
    """Absolute ratio (3/4, 4/3) at scale >= 0.8: no try fits a 16:9 frame, so every box is the
    full-height centre crop of aspect 4/3 (torchvision's fallback); the default stays random."""
    frame, out = (240, 426), (192, 320)
    centre = (0.0, (1 - 320 / 426) / 2, 1.0, 320 / 426)  # round(240 * 4/3) = 320 columns
    boxes = {random_resized_crop_box(np.random.default_rng(seed), frame, out, (0.8, 1.0), (3 / 4, 4 / 3),
                                     relative=False) for seed in range(200)}
    assert len(boxes) == 1
    assert all(math.isclose(a, b) for a, b in zip(boxes.pop(), centre))
    ours = {random_resized_crop_box(np.random.default_rng(seed), frame, out, (0.8, 1.0), (3 / 4, 4 / 3))
            for seed in range(200)}
    assert len(ours) > 150


def _sentences(n: int) -> list[dict]:
    return [{"text": f"s{i}", "frame_start": 4 * i, "frame_end": 4 * i + 4} for i in range(n)]


def test_released_window_choice_never_draws_the_last_window():
    released = DataConfig(window_excludes_last=True)
    firsts = {_window(_sentences(6), released, np.random.default_rng(seed))[0][0] for seed in range(300)}
    assert firsts == {"s0", "s1"}  # windows 0..1 of 0..2
    ours = {_window(_sentences(6), DataConfig(), np.random.default_rng(seed))[0][0] for seed in range(300)}
    assert ours == {"s0", "s1", "s2"}
    # exactly 4 sentences: the only window either way
    assert _window(_sentences(4), released, np.random.default_rng(0))[0] == ["s0", "s1", "s2", "s3"]


@pytest.fixture(scope="module")
def stage2_model(bert_dir):
    torch.manual_seed(0)
    cfg = ModelConfig.tiny()
    return build_model(dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, bert_dir=str(bert_dir))))


def test_released_optimizer_groups_have_exactly_the_expected_names(stage2_model):
    from lfvila.models.compat import released_key

    model = stage2_model
    task = Stage2Task(model, TaskConfig(stage=2))
    trained = {id(p) for p in task.trainable_parameters()}
    named = [(n, p) for n, p in model.named_parameters() if id(p) in trained]
    groups = parameter_groups(named, OptimConfig(param_groups="released"),
                              lambda n: released_key(n, model.cfg.text))
    names = [n for n, _ in named]
    # the release's rule restated on our names: biases, BERT LayerNorm weights and the video token
    # position embeddings ("pos_embed") are not decayed; the pooler is not trained at all
    excluded = [n for n in names if n.startswith("text.match_head.pooler.")]
    no_decay = [n for n in names if n not in excluded and (
        n.endswith("bias") or "LayerNorm.weight" in n or n in ("video_tokens.temporal", "video_tokens.spatial"))]
    assert groups["excluded"] == excluded == ["text.match_head.pooler.dense.weight", "text.match_head.pooler.dense.bias"]
    assert groups["no_decay"] == no_decay
    assert groups["decay"] == [n for n in names if n not in excluded and n not in no_decay]
    assert {"video_tokens.norm.weight", "text.mlm_head.predictions.decoder.weight"} <= set(groups["decay"])
    # stage 1 on the video side: Swin norm weights decayed, relative position bias tables not
    video = [(f"video.{n}", p) for n, p in model.video.named_parameters()]
    video_groups = parameter_groups(video, OptimConfig(param_groups="released"),
                                    lambda n: released_key(n, model.cfg.text))
    assert "video.layers.0.blocks.0.norm1.weight" in video_groups["decay"]
    assert "video.layers.0.blocks.0.attn.relative_position_bias_table" in video_groups["no_decay"]
    default = parameter_groups(video, OptimConfig())
    assert "video.layers.0.blocks.0.norm1.weight" in default["no_decay"]
    assert "video.layers.0.blocks.0.attn.relative_position_bias_table" in default["decay"]
    assert default["excluded"] == []


def _stage2_batch(b=4, m=4, l=8, t=8):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (b, m, l), generator=gen)
    labels = torch.full((b, m, l), -100)
    labels[:, :, 2] = ids[:, :, 2]
    return {"video": torch.randn(b, 3, t, 48, 80, generator=gen), "text_ids": ids, "mlm_ids": ids,
            "mlm_labels": labels, "text_mask": torch.ones(b, m, l, dtype=torch.long),
            "sentence_mask": torch.ones(b, m, dtype=torch.bool)}


@pytest.mark.parametrize("train_mode", [False, True])
def test_frozen_modules_run_in_train_mode_only_with_the_switch(stage2_model, train_mode):
    model = stage2_model
    task = Stage2Task(model, TaskConfig(stage=2, frozen_train_mode=train_mode))
    model.train()
    seen = []
    hook = model.text.paragraph_layers[-1].register_forward_hook(
        lambda _m, _i, out: seen.append((out[0] if isinstance(out, tuple) else out).detach().clone()))
    try:
        batch = _stage2_batch(t=model.cfg.max_frames)
        task.losses(batch)
        task.losses(batch)
    finally:
        hook.remove()
    assert model.text.sentence_layers[0].training is train_mode
    assert model.video.training is train_mode
    assert torch.equal(seen[0], seen[1]) is not train_mode  # dropout on the frozen layers changes them


def test_released_initialisations(bert_dir, tmp_path):
    cfg = dict(bert_dir=str(bert_dir), sentence_layers=2, paragraph_layers=2, cross_layers=2)
    torch.manual_seed(0)
    released = TextEncoder(TextEncoderConfig(segment_init_std=1.0, **cfg)).paragraph_embeddings
    ours = TextEncoder(TextEncoderConfig(**cfg)).paragraph_embeddings
    assert 0.95 < released.segment_embeddings.weight.std().item() < 1.05
    assert 0.015 < ours.segment_embeddings.weight.std().item() < 0.025
    # a BERT directory with an NSP head: lfvila starts the matching classifier from it, the release not
    state = read_state_dict(bert_dir)
    nsp = torch.full((2, state["embeddings.word_embeddings.weight"].shape[1]), 0.5)
    torch.save({**state, "cls.seq_relationship.weight": nsp, "cls.seq_relationship.bias": torch.ones(2)},
               tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text((bert_dir / "config.json").read_text())
    cfg["bert_dir"] = str(tmp_path)
    assert torch.equal(TextEncoder(TextEncoderConfig(**cfg)).match_head.classifier.weight, nsp)
    random = TextEncoder(TextEncoderConfig(match_classifier_init="random", **cfg)).match_head.classifier
    assert not torch.equal(random.weight, nsp) and torch.equal(random.bias, torch.zeros(2))
    assert random.weight.std().item() < 0.05


def test_reference_recipes_turn_every_switch_to_the_release():
    for stage in (1, 2):
        ref = load_config(TrainConfig, RECIPES / f"stage{stage}_reference.yaml")
        paper = load_config(TrainConfig, RECIPES / f"stage{stage}_paper.yaml")
        assert (ref.data.ratio_relative_to_output, ref.data.window_excludes_last) == (False, True)
        assert (paper.data.ratio_relative_to_output, paper.data.window_excludes_last) == (True, False)
        assert ref.model.video.clip_features == "final" and ref.optim.param_groups == "released"
        assert (ref.model.text.segment_init_std, ref.model.text.match_classifier_init) == (1.0, "random")
        assert ref.task.stage == stage
        assert paper.optim.param_groups == "lfvila" and paper.model.text.match_classifier_init == "bert_nsp"
        # everything else as the paper recipe (hyper-parameters, steps, model size)
        assert (ref.optim.lr, ref.data.batch_size, ref.trainer.max_steps) == \
            (paper.optim.lr, paper.data.batch_size, paper.trainer.max_steps)
    ref1 = load_config(TrainConfig, RECIPES / "stage1_reference.yaml")
    ref2 = load_config(TrainConfig, RECIPES / "stage2_reference.yaml")
    assert ref1.task.mtc_reference_negatives
    assert ref2.task.vtm_reference_pairing and ref2.task.frozen_train_mode
    assert ref2.trainer.init_from == ref1.trainer.out_dir


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


@pytest.mark.parametrize("stage", [1, 2])
def test_reference_recipe_trains_two_steps(stage, tmp_path):
    """The reference recipe at the tiny model's size (its switches, optimizer and task kept) runs."""
    from lfvila.trainer.loop import Trainer

    shards = write_synthetic_shards(tmp_path / "shards", n_samples=8, samples_per_shard=8, seed=stage)
    ref = yaml.safe_load((RECIPES / f"stage{stage}_reference.yaml").read_text())
    tiny = yaml.safe_load((RECIPES / "tiny.yaml").read_text())
    tiny["model"]["text"].update(sentence_layers=2, paragraph_layers=2, cross_layers=2)
    recipe = _merge(ref, {"data": {**tiny["data"], "train_shards": shards, "batch_size": 4, "num_workers": 0},
                          "model": {**tiny["model"], "video": {**tiny["model"]["video"], "init_2d": None}},
                          "schedule": {"warmup_steps": 1, "total_steps": 2},
                          "trainer": {**tiny["trainer"], "max_steps": 2, "log_every": 1, "ckpt_every": 2,
                                      "out_dir": str(tmp_path / "run"), "init_from": None,
                                      "eval_every": 0, "tensorboard": False}})
    cfg = from_dict(TrainConfig, recipe)
    assert not cfg.data.ratio_relative_to_output and cfg.optim.param_groups == "released"
    trainer = Trainer(cfg)
    assert not any(p.requires_grad for p in trainer.model.text.match_head.pooler.parameters())
    trainer.fit()
    assert trainer.step == 2 and all(math.isfinite(v) for v in trainer.last_losses.values())


def test_init_from_a_released_state_dict_loads_the_decoder_and_logs_every_key(tmp_path, caplog):
    """The CLI's loading path (trainer.init_from) takes a released checkpoint file and reports it."""
    from lfvila.models.compat import export_released
    from lfvila.trainer.loop import Trainer

    shards = write_synthetic_shards(tmp_path / "shards", n_samples=4, samples_per_shard=4)
    tiny = yaml.safe_load((RECIPES / "tiny.yaml").read_text())
    tiny["model"]["text"].update(sentence_layers=2, paragraph_layers=2, cross_layers=2)
    tiny["model"]["video"]["clip_features"] = "final"  # the released encoder has no (trained) local tap
    recipe = _merge(tiny, {"data": {"train_shards": shards, "batch_size": 2, "num_workers": 0},
                           "task": {"stage": 2}, "trainer": {"out_dir": str(tmp_path / "run"), "tensorboard": False}})
    cfg = from_dict(TrainConfig, recipe)
    torch.manual_seed(3)
    source = build_model(cfg.model)
    with torch.no_grad():
        source.text.mlm_head.predictions.decoder.weight.normal_()
    released = export_released(source)
    released["text_encoder.bert.embeddings.position_ids"] = torch.arange(4)[None]
    torch.save(released, tmp_path / "released.pt")
    cfg.trainer.init_from = str(tmp_path / "released.pt")
    with caplog.at_level("INFO"):
        trainer = Trainer(cfg)
    report = trainer.init_report
    assert report.missing == [] and report.unexpected == []
    assert report.dropped == {"text_encoder.bert.embeddings.position_ids": "a buffer this model recomputes"}
    assert torch.equal(trainer.model.text.mlm_head.predictions.decoder.weight,
                       source.text.mlm_head.predictions.decoder.weight)
    assert "dropped: text_encoder.bert.embeddings.position_ids" in caplog.text


def test_an_old_stage2_checkpoint_without_a_decoder_slot_is_refused_naming_init_from(tmp_path):
    """Before the decoder became its own parameter, stage 2 trained one parameter fewer: its optimizer
    state cannot be resumed; the error says why and how to continue from its weights."""
    from lfvila.errors import CheckpointError
    from lfvila.testing import rehash_checkpoint_file
    from lfvila.trainer.loop import Trainer

    shards = write_synthetic_shards(tmp_path / "shards", n_samples=4, samples_per_shard=4)
    tiny = yaml.safe_load((RECIPES / "tiny.yaml").read_text())
    tiny["model"]["text"].update(sentence_layers=2, paragraph_layers=2, cross_layers=2)
    recipe = _merge(tiny, {"data": {"train_shards": shards, "batch_size": 2, "num_workers": 0},
                           "task": {"stage": 2}, "schedule": {"warmup_steps": 0},
                           "trainer": {"out_dir": str(tmp_path / "run"), "tensorboard": False, "max_steps": 1}})
    trainer = Trainer(from_dict(TrainConfig, recipe))
    trainer.fit()
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000001"
    state = torch.load(ckpt / "train_state.pt", weights_only=True)
    decay = state["optimizer"]["param_groups"][0]
    decay["params"] = decay["params"][:-1]  # the old stage 2 had no decoder matrix to train
    torch.save(state, ckpt / "train_state.pt")
    rehash_checkpoint_file(ckpt, "train_state.pt")
    with pytest.raises(CheckpointError, match="MLM decoder.*trainer.init_from="):
        Trainer(from_dict(TrainConfig, recipe), resume=str(ckpt))
    # its weights still initialise a new run: the old model.pt holds the decoder key (then a copy of
    # the word embeddings), so nothing is missing
    recipe["trainer"] = {**recipe["trainer"], "out_dir": str(tmp_path / "new"), "init_from": str(ckpt)}
    assert Trainer(from_dict(TrainConfig, recipe)).init_report.missing == []
