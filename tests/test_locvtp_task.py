"""The LocVTP task on the tiny model: features, losses, what trains, config, retrieval features."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lfvila.config import load_config
from lfvila.errors import ConfigError
from lfvila.models.lfvila import ModelConfig, build_model
from lfvila.tasks import LocVTPTask, TaskConfig, build_task
from lfvila.trainer.config import TrainConfig
from lfvila.trainer.loop import Trainer
from test_tasks import T, check_gradients, make_batch

RECIPES = Path(__file__).resolve().parents[1] / "train"


@pytest.fixture(scope="module")
def model(bert_dir):
    torch.manual_seed(0)
    cfg = ModelConfig.tiny()
    cfg = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, bert_dir=str(bert_dir)), frames_per_clip=1,
                              max_frames=T, context_projection=True)
    return build_model(cfg)


def test_sentence_features_equal_encode_text_and_words_are_real_tokens(model):
    batch = make_batch()
    model.eval()
    with torch.no_grad():
        full = model.encode_text(batch["text_ids"], batch["text_mask"], batch["sentence_mask"])
        alone = model.encode_sentences(batch["text_ids"], batch["text_mask"], batch["sentence_mask"])
    real = batch["sentence_mask"]
    torch.testing.assert_close(alone["sentence"][real], full["sentence"][real])
    assert alone["word"].shape == (*batch["text_ids"].shape, model.cfg.embed_dim)
    torch.testing.assert_close(alone["word"].norm(dim=-1), torch.ones(batch["text_ids"].shape))
    # make_batch: 6 real tokens per real sentence -> [CLS], 4 words, [SEP]
    expected = torch.zeros_like(alone["word_mask"])
    expected[:, :, 1:5] = True
    expected[~real] = False
    assert torch.equal(alone["word_mask"], expected)


def test_losses_are_finite_and_train_exactly_what_they_use(model):
    task = build_task(model, TaskConfig(name="locvtp"))
    assert isinstance(task, LocVTPTask)
    model.eval()  # no stochastic depth: every used block must get a gradient
    model.zero_grad(set_to_none=True)
    losses = task.losses(make_batch(), generator=torch.Generator().manual_seed(0))
    assert set(losses) == {"coarse", "fine", "temporal"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    sum(losses.values()).backward()
    check_gradients(model, task)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("word_context.") for n in trained) and any(n.startswith("clip_context.") for n in trained)
    assert not any(n.startswith(("text.paragraph_layers.", "text.paragraph_embeddings.", "video_proj",
                                 "paragraph_proj", "video.norm")) for n in trained)
    # the tiny encoder taps its clips before stage 2: the stages after the tap take no part
    assert model.video.tap_stage == 2 and not any(n.startswith(("video.layers.2.", "video.layers.3."))
                                                  for n in trained)


def test_weights_scale_and_zero_weights_drop_losses(model):
    batch = make_batch()
    model.eval()
    with torch.no_grad():
        base = LocVTPTask(model, TaskConfig(name="locvtp")).losses(batch, generator=torch.Generator().manual_seed(1))
        cfg = TaskConfig(name="locvtp", coarse_weight=2.0, fine_weight=5.0, temporal_weight=0.0)
        scaled = LocVTPTask(model, cfg).losses(batch, generator=torch.Generator().manual_seed(1))
    assert set(scaled) == {"coarse", "fine"}
    torch.testing.assert_close(scaled["coarse"], 2 * base["coarse"])
    torch.testing.assert_close(scaled["fine"], base["fine"] / 2)  # 5 / 10


def test_retrieval_features_are_masked_means(model):
    clip = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [5.0, 5.0]]])
    sentence = torch.tensor([[[0.0, 1.0], [0.0, 1.0]], [[0.0, 2.0], [9.0, 0.0]]])
    mask = torch.tensor([[True, True], [True, False]])
    video, paragraph = LocVTPTask.retrieval_features({"clip": clip}, {"sentence": sentence}, mask)
    s = 2 ** -0.5
    torch.testing.assert_close(video, torch.tensor([[s, s], [1.0, 0.0]]))
    torch.testing.assert_close(paragraph, torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    # whole-video samples: three clips for two sentence slots, every clip real
    three = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]] * 2)
    video, _ = LocVTPTask.retrieval_features({"clip": three}, {"sentence": sentence}, mask)
    torch.testing.assert_close(video, F.normalize(torch.tensor([[2.0, 1.0]] * 2), dim=-1))


def test_config_needs_heads_stage_1_and_window_samples(model):
    with pytest.raises(ValueError, match="task.stage must be 1 for task.name=locvtp"):
        TaskConfig(name="locvtp", stage=2)
    with pytest.raises(ValueError, match="fine_negatives"):
        TaskConfig(name="locvtp", fine_negatives=0)
    cfg = load_config(TrainConfig, RECIPES / "tiny.yaml", ["task.name=locvtp"])
    assert cfg.model.context_projection  # derived from the task
    assert not load_config(TrainConfig, RECIPES / "tiny.yaml").model.context_projection
    whole = load_config(TrainConfig, RECIPES / "tiny.yaml", ["task.name=locvtp", "data.sampling=whole_video"])
    with pytest.raises(ConfigError, match="data.sampling=window"):  # evaluation may read whole videos, not training
        Trainer(whole)
    plain = dataclasses.replace(model.cfg, context_projection=False,
                                text=dataclasses.replace(model.cfg.text, init_from_pretrained=False))
    with pytest.raises(ValueError, match="model.context_projection"):
        LocVTPTask(build_model(plain), TaskConfig(name="locvtp"))
