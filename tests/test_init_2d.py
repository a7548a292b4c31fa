"""The paper recipe's initialisation: the video encoder from a 2D Swin checkpoint in either key
layout (Microsoft's and timm's), the text encoder from a local BERT directory, and one clear
error naming the file and what to download when either is absent."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lfvila.config import load_config
from lfvila.errors import ConfigError, InputError
from lfvila.models.text import TextEncoder, TextEncoderConfig
from lfvila.models.video import VideoEncoder, VideoEncoderConfig, load_swin2d
from lfvila.trainer.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
CFG = VideoEncoderConfig.tiny()  # 3D stages 32, 64, 64, 128 wide, 2 blocks each, merging after 0 and 2
# A tiny 2D Swin shaped to fill it: stages (width, depth, heads) 32x2, 64x4, 128x2, 2 patch mergings.
STAGES_2D = ((32, 2, 2), (64, 4, 4), (128, 2, 8))


def fake_swin2d(seed: int = 0) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]], dict]:
    """Weights of a tiny 2D Swin, by part: per-stage block tensors, the mergings, the rest."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen)

    blocks = []
    for width, depth, heads in STAGES_2D:
        stage = {}
        for j in range(depth):
            stage.update({
                f"{j}.norm1.weight": rand(width), f"{j}.norm1.bias": rand(width),
                f"{j}.attn.qkv.weight": rand(3 * width, width), f"{j}.attn.qkv.bias": rand(3 * width),
                f"{j}.attn.proj.weight": rand(width, width), f"{j}.attn.proj.bias": rand(width),
                f"{j}.attn.relative_position_bias_table": rand(13 * 13, heads),
                f"{j}.attn.relative_position_index": torch.zeros(49, 49, dtype=torch.long),
                f"{j}.norm2.weight": rand(width), f"{j}.norm2.bias": rand(width),
                f"{j}.mlp.fc1.weight": rand(4 * width, width), f"{j}.mlp.fc1.bias": rand(4 * width),
                f"{j}.mlp.fc2.weight": rand(width, 4 * width), f"{j}.mlp.fc2.bias": rand(width),
            })
        blocks.append(stage)
    merges = [{"norm.weight": rand(4 * w), "norm.bias": rand(4 * w), "reduction.weight": rand(2 * w, 4 * w)}
              for w, _, _ in STAGES_2D[:2]]
    rest = {"patch_embed.proj.weight": rand(32, 3, 4, 4), "patch_embed.proj.bias": rand(32),
            "patch_embed.norm.weight": rand(32), "patch_embed.norm.bias": rand(32),
            "norm.weight": rand(128), "norm.bias": rand(128)}
    return blocks, merges, rest


def microsoft_layout(parts) -> dict[str, torch.Tensor]:
    """Swin-Transformer's own checkpoints: stage i ends with its merging; a 21k-class head; under "model"."""
    blocks, merges, rest = parts
    sd = {f"layers.{i}.blocks.{k}": v for i, stage in enumerate(blocks) for k, v in stage.items()}
    sd.update({f"layers.{i}.downsample.{k}": v for i, m in enumerate(merges) for k, v in m.items()})
    sd["layers.1.blocks.1.attn_mask"] = torch.zeros(4, 49, 49)
    sd.update(rest, **{"head.weight": torch.zeros(5, 128), "head.bias": torch.zeros(5)})
    return sd


def timm_layout(parts) -> dict[str, torch.Tensor]:
    """timm >= 0.9: stage i starts with the merging before it (layers.1/2.downsample); head.fc."""
    blocks, merges, rest = parts
    sd = {f"layers.{i}.blocks.{k}": v for i, stage in enumerate(blocks) for k, v in stage.items()}
    sd.update({f"layers.{i + 1}.downsample.{k}": v for i, m in enumerate(merges) for k, v in m.items()})
    sd.update(rest, **{"head.fc.weight": torch.zeros(5, 128), "head.fc.bias": torch.zeros(5)})
    return sd


@pytest.fixture(scope="module")
def swin_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("swin2d")
    parts = fake_swin2d()
    torch.save({"model": microsoft_layout(parts)}, root / "swin_tiny_ms.pth")
    save_file({k: v.contiguous() for k, v in timm_layout(parts).items()}, str(root / "model.safetensors"))
    torch.save(timm_layout(parts), root / "swin_tiny_timm.pth")
    return {"microsoft": root / "swin_tiny_ms.pth", "timm": root / "model.safetensors",
            "timm_pth": root / "swin_tiny_timm.pth"}


@pytest.mark.parametrize("name", ["microsoft", "timm", "timm_pth"])
def test_every_encoder_key_loads_from_either_layout(swin_files, name):
    encoder = VideoEncoder(CFG)
    report = load_swin2d(encoder, swin_files[name])
    assert report.layout == ("microsoft" if name == "microsoft" else "timm")
    assert report.missing == [] and report.unexpected == []
    assert sorted(report.loaded) == sorted(encoder.state_dict())
    blocks, merges, rest = fake_swin2d()
    state = encoder.state_dict()
    # blocks in order: 2D stage 1 (4 blocks) fills 3D stages 1 and 2; mergings in order onto 3D stages 0 and 2
    assert torch.equal(state["layers.2.blocks.1.mlp.fc1.weight"], blocks[1]["3.mlp.fc1.weight"])
    assert torch.equal(state["layers.3.blocks.0.attn.qkv.weight"], blocks[2]["0.attn.qkv.weight"])
    assert torch.equal(state["layers.2.downsample.reduction.weight"], merges[1]["reduction.weight"])
    assert torch.equal(state["norm.weight"], rest["norm.weight"])


def test_both_layouts_give_the_same_encoder(swin_files):
    states = []
    for name in ("microsoft", "timm"):
        encoder = VideoEncoder(CFG)
        load_swin2d(encoder, swin_files[name])
        states.append(encoder.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_unused_2d_keys_are_reported(tmp_path):
    sd = microsoft_layout(fake_swin2d())
    sd["pos_drop.extra"] = torch.zeros(3)
    torch.save(sd, tmp_path / "extra.pth")  # bare state_dict, no "model" wrapper
    report = load_swin2d(VideoEncoder(CFG), tmp_path / "extra.pth")
    assert report.unexpected == ["pos_drop.extra"] and report.missing == []


def test_missing_2d_file_is_one_line_naming_it_and_the_download(tmp_path):
    with pytest.raises(InputError) as err:
        load_swin2d(VideoEncoder(CFG), tmp_path / "swin_base_patch4_window7_224_22k.pth")
    message = str(err.value)
    assert "\n" not in message and "model.video.init_2d" in message
    assert str(tmp_path / "swin_base_patch4_window7_224_22k.pth") in message and "Swin-B" in message


def test_missing_bert_is_one_line_naming_it_and_the_download(tmp_path, bert_dir):
    with pytest.raises(ConfigError) as err:
        TextEncoder(TextEncoderConfig(bert_dir=str(tmp_path / "bert-large-uncased")))
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "bert-large-uncased") in message
    assert "config.json" in message and "bert-large-uncased" in message and "download" in message
    # a directory with a config but no weights names what is missing too
    (tmp_path / "no_weights").mkdir()
    (tmp_path / "no_weights" / "config.json").write_text((bert_dir / "config.json").read_text())
    with pytest.raises(ConfigError, match="no model.safetensors or pytorch_model.bin.*download"):
        TextEncoder(TextEncoderConfig(bert_dir=str(tmp_path / "no_weights"), sentence_layers=2,
                                      paragraph_layers=2, cross_layers=2))


def test_paper_recipes_name_the_2d_checkpoint_and_bert_large():
    for name in ("stage1_paper", "stage1_small"):
        cfg = load_config(TrainConfig, REPO / "train" / f"{name}.yaml")
        assert cfg.model.video.init_2d.endswith("swin_base_patch4_window7_224_22k.pth")
        assert cfg.model.text.bert_dir.endswith("bert-large-uncased")


def _trainer(tmp_path, init_2d, resume=None):
    from lfvila.trainer.loop import Trainer

    spec = importlib.util.spec_from_file_location("train_throughput", REPO / "bench" / "train_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cfg = load_config(TrainConfig, REPO / "train" / "tiny.yaml", [
        f"model.video.init_2d={init_2d}", f"trainer.out_dir={tmp_path}", "trainer.tensorboard=false"])
    return Trainer(cfg, loader=bench._Stream(iter(())), resume=resume)


@pytest.mark.parametrize("resume", [None, "auto"])
def test_trainer_starts_from_the_2d_checkpoint(swin_files, tmp_path, bert_dir, resume):
    """A fresh run inflates init_2d, also under --resume auto with no checkpoint yet (the first launch)."""
    trainer = _trainer(tmp_path, swin_files["timm"], resume)
    expected = VideoEncoder(CFG)
    load_swin2d(expected, swin_files["timm"])
    got = trainer.model.video.state_dict()
    assert all(torch.equal(got[k], v) for k, v in expected.state_dict().items())


def test_train_cli_missing_2d_file_exits_2_with_one_line(tmp_path, bert_dir, capsys):
    from lfvila.cli import main
    from lfvila.testing import write_synthetic_shards

    shards = write_synthetic_shards(tmp_path / "shards", n_samples=4, samples_per_shard=4)
    missing = tmp_path / "checkpoints" / "swin_base_patch4_window7_224_22k.pth"
    code = main(["train", "--config", str(REPO / "train" / "tiny.yaml"), "--set", f"data.train_shards={json.dumps(shards)}",
                 "--set", f"trainer.out_dir={tmp_path / 'run'}", "--set", f"model.video.init_2d={missing}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("lfvila train: error: model.video.init_2d: ") and str(missing) in err[-1]
    assert not any("Traceback" in line for line in err)
