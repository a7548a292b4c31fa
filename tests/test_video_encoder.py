"""HTWA video encoder: shapes (paper and tiny), parameters, gradients, modes, pooling, key mapping."""
import dataclasses
from pathlib import Path

import pytest
import torch

from lfvila.config import from_dict, to_dict
from lfvila.models.video import (
    VideoEncoder,
    VideoEncoderConfig,
    inflate_swin2d_state_dict,
    pool_clip_features,
    remap_released_video_keys,
)

TINY_INPUT = (1, 3, 32, 48, 80)  # the tiny preset's documented input: 4 clips of 8 frames


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return VideoEncoder(VideoEncoderConfig.tiny())


def test_paper_parameter_count_and_shapes_on_meta():
    with torch.device("meta"):
        model = VideoEncoder(VideoEncoderConfig.paper())
        # 89.2M as published: that count includes the local tap's merge + LayerNorm.
        assert round(n_params(model) / 1e6, 1) == 89.2
        out = model(torch.empty(1, 3, 32, 192, 320))
    assert model.out_dim == 1024
    assert out.final.shape == (1, 32, 3, 5, 1024)
    assert out.clip_source.shape == (1, 32, 3, 5, 1024)
    clip, tokens = pool_clip_features(out.clip_source, n_clips=4)
    assert clip.shape == (1, 4, 1024) and tokens.shape == (1, 32 * 6, 1024)
    with torch.device("meta"):
        final_only = VideoEncoder(VideoEncoderConfig.paper(clip_features="final"))
    assert not hasattr(final_only, "local_merge")
    assert round(n_params(final_only) / 1e6, 1) == 87.1


def test_paper_stages_follow_the_published_table():
    cfg = VideoEncoderConfig.paper()
    assert cfg.tap_stage == 3  # input of the first stage whose temporal window exceeds 8
    with torch.device("meta"):
        model = VideoEncoder(cfg)
    assert [len(s.blocks) for s in model.layers] == [2, 2, 14, 2, 2, 2]
    assert [s.blocks[0].attn.window[0] for s in model.layers] == [2, 4, 8, 16, 16, 32]
    assert [s.downsample is not None for s in model.layers] == [True, True, False, False, True, False]
    # odd blocks shift by half a window in space, never in time
    assert model.layers[2].blocks[1].shift == (0, 1, 2) and model.layers[2].blocks[0].shift == (0, 0, 0)
    rates = [b.drop_path for s in model.layers for b in s.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.2) and rates == sorted(rates)


def test_tiny_shapes_and_size(tiny):
    assert 2e5 < n_params(tiny) < 2e6
    with torch.no_grad():
        out = tiny(torch.randn(*TINY_INPUT))
    assert tiny.out_dim == 128
    assert out.final.shape == (1, 32, 3, 5, 128) and out.clip_source.shape == (1, 32, 3, 5, 128)
    assert not torch.equal(out.final, out.clip_source)  # the local tap is a different feature
    clip, tokens = pool_clip_features(out.clip_source, n_clips=4)
    assert clip.shape == (1, 4, 128) and tokens.shape == (1, 192, 128)


@pytest.mark.parametrize("shape", [(1, 3, 7, 40, 72), (1, 3, 5, 50, 86), (1, 3, 1, 16, 16)])
def test_sizes_not_multiples_of_windows_or_patches(tiny, shape):
    with torch.no_grad():
        out = tiny(torch.randn(*shape))
    T, H, W = shape[2:]
    h, w = -(-H // 4), -(-W // 4)
    for _ in range(2):  # two 2x2 merges, ceil on odd sizes
        h, w = -(-h // 2), -(-w // 2)
    assert out.final.shape == (1, T, h, w, 128)
    assert torch.isfinite(out.final).all()


@pytest.mark.parametrize("clip_features", ["local", "final"])
def test_gradients_reach_every_parameter(clip_features):
    torch.manual_seed(0)
    # drop_path 0: a dropped residual branch legitimately gets no gradient
    model = VideoEncoder(VideoEncoderConfig.tiny(clip_features=clip_features, drop_path=0.0))
    out = model(torch.randn(1, 3, 8, 48, 80))
    clip, tokens = pool_clip_features(out.clip_source, n_clips=2)
    (clip.square().sum() + out.final.square().mean()).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_grad_checkpointing_gives_the_same_gradients():
    x = torch.randn(1, 3, 4, 48, 80)
    grads = []
    for enabled in (False, True):
        torch.manual_seed(0)
        model = VideoEncoder(VideoEncoderConfig.tiny(drop_path=0.0, grad_checkpointing=enabled))
        model(x).clip_source.sum().backward()
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_eval_returns_the_module_and_is_deterministic(tiny):
    assert tiny.eval() is tiny and not tiny.training
    x = torch.randn(1, 3, 8, 48, 80)
    with torch.no_grad():
        without_grad = tiny(x).final
    # the in-place GELU taken without autograd computes the same as the autograd path
    torch.testing.assert_close(tiny(x).final.detach(), without_grad)
    assert tiny.train() is tiny and tiny.training


def test_bf16_forward_is_finite():
    torch.manual_seed(0)
    model = VideoEncoder(VideoEncoderConfig.tiny()).eval()
    x = torch.randn(1, 3, 4, 52, 84)  # padded windows too
    with torch.no_grad():
        ref = model(x).final
        out = model.to(torch.bfloat16)(x.bfloat16())
    assert out.final.dtype == torch.bfloat16
    assert torch.isfinite(out.final).all() and torch.isfinite(out.clip_source).all()
    assert torch.nn.functional.cosine_similarity(out.final.float().flatten(), ref.flatten(), dim=0) > 0.99


def test_bf16_autocast_backward_is_finite():
    torch.manual_seed(0)
    model = VideoEncoder(VideoEncoderConfig.tiny())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, 4, 50, 86))  # shifted, padded and clamped windows
        loss = out.final.float().square().mean() + out.clip_source.float().mean()
    loss.backward()
    assert out.final.dtype == torch.bfloat16
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_pool_clip_features_by_hand():
    x = torch.randn(2, 6, 3, 5, 4)
    clip, tokens = pool_clip_features(x, n_clips=3, token_pool=(2, 3))
    assert clip.shape == (2, 3, 4) and tokens.shape == (2, 6 * 6, 4)
    for b in range(2):
        for t in range(6):
            for k, (i, j) in enumerate([(i, j) for i in range(2) for j in range(3)]):
                want = x[b, t, i:i + 2, j:j + 3].amax(dim=(0, 1))
                torch.testing.assert_close(tokens[b, t * 6 + k], want)
        for c in range(3):
            torch.testing.assert_close(clip[b, c], tokens[b, c * 12:(c + 1) * 12].mean(0))
    with pytest.raises(ValueError, match="n_clips"):
        pool_clip_features(x, n_clips=4)


def test_released_keys_load_strictly():
    torch.manual_seed(0)
    ours = VideoEncoder(VideoEncoderConfig.tiny(clip_features="final"))
    # A checkpoint named as the released model: prefixed, with the index buffers and the
    # (untrained) local tap modules, next to text-side keys that must be ignored.
    released = {"video_encoder." + k: v.clone() for k, v in ours.state_dict().items()}
    for name, module in ours.named_modules():
        if hasattr(module, "relative_position_bias_table"):
            released[f"video_encoder.{name}.relative_position_index"] = torch.zeros(1, dtype=torch.long)
    released["video_encoder.local_feat_proj.reduction.weight"] = torch.zeros(128, 256)
    released["video_encoder.norm_local.weight"] = torch.ones(128)
    released["text_encoder.bert.embeddings.word_embeddings.weight"] = torch.zeros(3, 3)

    fresh = VideoEncoder(VideoEncoderConfig.tiny(clip_features="final"))
    fresh.load_state_dict(remap_released_video_keys(released), strict=True)
    x = torch.randn(1, 3, 8, 48, 80)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x).final, ours.eval()(x).final)
    kept = remap_released_video_keys(released, keep_local_tap=True)
    assert "local_merge.reduction.weight" in kept and "local_norm.weight" in kept


def test_config_round_trip_and_validation():
    cfg = VideoEncoderConfig.tiny()
    assert from_dict(VideoEncoderConfig, to_dict(cfg)) == cfg
    assert VideoEncoderConfig() == VideoEncoderConfig.paper()
    bad = [
        (dict(patch_size=(2, 8, 8)), "patch_size"),
        (dict(depths=(2, 2)), "depths"),
        (dict(heads=(3, 8, 16, 16, 16, 32)), "heads"),
        (dict(widths=(128, 256, 512, 512, 512, 512)), "widths"),
        (dict(merges=(True, True, False, False, True, True)), "merges"),
        (dict(clip_features="middle"), "clip_features"),
        (dict(local_tap_window=32), "local_tap_window"),
        (dict(local_tap_stage=6), "local_tap_stage"),
        (dict(local_tap_stage=0), "clip_features"),
        (dict(drop_path=1.0), "drop_path"),
        (dict(token_pool=(0, 3)), "token_pool"),
    ]
    for overrides, field in bad:
        with pytest.raises(ValueError, match=field):
            VideoEncoderConfig.paper(**overrides)
    # no local tap needed when clip features come from the final stage
    assert VideoEncoderConfig.paper(clip_features="final", local_tap_window=32).tap_stage is None
    assert VideoEncoderConfig.paper(windows=((2, 3, 5),) * 6, local_tap_stage=3).tap_stage == 3
    assert dataclasses.replace(cfg, grad_checkpointing=True).grad_checkpointing


def test_inflate_2d_swin_fills_every_weight():
    # A 2D Swin shaped to the tiny encoder: layers of 2, 4, 2 blocks (widths 32, 64, 128), patch
    # 2x2, window 4 (7x7 bias tables), with keys a 2D checkpoint carries that have no 3D use.
    cfg = VideoEncoderConfig.tiny()
    torch.manual_seed(0)
    target = VideoEncoder(cfg).state_dict()
    blocks_2d = [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (1, 3), (2, 0), (2, 1)]
    blocks_3d = [(i, j) for i, d in enumerate(cfg.depths) for j in range(d)]
    swin2d = {"head.weight": torch.zeros(10, 128), "layers.0.blocks.1.attn_mask": torch.zeros(4, 16, 16)}
    for (i2, j2), (i3, j3) in zip(blocks_2d, blocks_3d):
        prefix = f"layers.{i3}.blocks.{j3}."
        for key, value in target.items():
            if key.startswith(prefix):
                swin2d[f"layers.{i2}.blocks.{j2}.{key[len(prefix):]}"] = torch.randn_like(value)
        heads = cfg.heads[i3]
        swin2d[f"layers.{i2}.blocks.{j2}.attn.relative_position_bias_table"] = torch.randn(49, heads)
        swin2d[f"layers.{i2}.blocks.{j2}.attn.relative_position_index"] = torch.zeros(16, 16, dtype=torch.long)
    for d2, d3 in [(0, 0), (1, 2)]:
        for name in ("norm.weight", "norm.bias", "reduction.weight"):
            swin2d[f"layers.{d2}.downsample.{name}"] = torch.randn_like(target[f"layers.{d3}.downsample.{name}"])
    swin2d["patch_embed.proj.weight"] = torch.randn(32, 3, 2, 2)
    for key in ("patch_embed.proj.bias", "patch_embed.norm.weight", "patch_embed.norm.bias", "norm.weight", "norm.bias"):
        swin2d[key] = torch.randn_like(target[key])

    inflated = inflate_swin2d_state_dict({"model": swin2d}, cfg)
    model = VideoEncoder(cfg)
    model.load_state_dict(inflated, strict=True)
    # bias table: resized 7x7 -> 5x9 spatial offsets, identical for every temporal offset
    table = model.layers[1].blocks[0].attn.relative_position_bias_table  # window (8, 3, 5)
    assert table.shape == (15 * 5 * 9, 4)
    torch.testing.assert_close(table[:45], table[45 * 7:45 * 8])
    # tiled patch kernel: a frame of constant colour gives the 2D response
    w2 = swin2d["patch_embed.proj.weight"]
    assert model.patch_embed.proj.weight.shape == (32, 3, 1, 4, 4)
    torch.testing.assert_close(model.patch_embed.proj.weight.sum(dim=(2, 3, 4)), w2.sum(dim=(2, 3)))
    torch.testing.assert_close(model.local_merge.reduction.weight, swin2d["layers.1.downsample.reduction.weight"])


def test_cost_benchmark_counts_attention_flops_exactly():
    # bench/htwa_cost.py's split of FLOPs into attention and the rest, against 4*N*C per token.
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "htwa_cost.py"
    spec = importlib.util.spec_from_file_location("htwa_cost", path)
    htwa_cost = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(htwa_cost)

    cfg = VideoEncoderConfig.tiny()
    T, H, W = 8, 48, 80
    flops = htwa_cost.count_flops(cfg, 1, T, H, W, train=False)
    expected, h, w = 0, H // 4, W // 4
    for width, depth, window, merge in zip(cfg.widths, cfg.depths, cfg.windows, cfg.merges):
        n = min(window[0], T) * window[1] * window[2]  # windows clamp to the 8 frames
        expected += depth * (T * h * w) * 4 * n * width  # QK^T and AV, 2 FLOPs per MAC
        if merge:
            h, w = h // 2, w // 2
    assert flops["attention_gflops"] * 1e9 == pytest.approx(expected)
    assert flops["gflops"] > flops["attention_gflops"]
    assert htwa_cost.windows_for("full", 64, cfg.windows)[0] == (64, 3, 5)


@pytest.mark.parametrize("spec, expected", [
    (True, (True,) * 4), (False, (False,) * 4), (2, (True, True, False, False)), (0, (False,) * 4),
    ([True, False, True, False], (True, False, True, False)),
])
def test_grad_checkpointing_per_stage_spec(spec, expected):
    assert VideoEncoderConfig.tiny(grad_checkpointing=spec).checkpoint_stages == expected
    model = VideoEncoder(VideoEncoderConfig.tiny(grad_checkpointing=spec))
    assert tuple(stage.grad_checkpointing for stage in model.layers) == expected


@pytest.mark.parametrize("spec", [5, -1, [True, False], [1, 0, 1, 0], "yes"])
def test_grad_checkpointing_bad_spec_names_the_field(spec):
    with pytest.raises(ValueError, match="grad_checkpointing"):
        VideoEncoderConfig.tiny(grad_checkpointing=spec)


def test_grad_checkpointing_per_stage_recomputes_those_stages_with_identical_results():
    """Checkpointed stages run their blocks twice (forward, then again in backward) and the
    others once; outputs and gradients equal the plain model's bitwise, stochastic depth included
    (training mode: the recomputation replays the saved RNG state)."""
    x = torch.randn(2, 3, 8, 48, 80)
    runs = []
    for spec in (False, [True, False, True, False]):
        torch.manual_seed(0)
        model = VideoEncoder(VideoEncoderConfig.tiny(drop_path=0.3, grad_checkpointing=spec)).train()
        calls = [0] * len(model.layers)
        for i, stage in enumerate(model.layers):
            stage.blocks[0].register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
        torch.manual_seed(1)
        out = model(x)
        (out.final.square().mean() + out.clip_source.mean()).backward()
        runs.append((out.final.detach(), [p.grad for p in model.parameters()], calls))
    (plain_out, plain_grads, plain_calls), (ckpt_out, ckpt_grads, ckpt_calls) = runs
    assert plain_calls == [1, 1, 1, 1]
    assert ckpt_calls == [2, 1, 2, 1]
    assert torch.equal(plain_out, ckpt_out)
    for a, b in zip(plain_grads, ckpt_grads):
        assert torch.equal(a, b)


def test_grad_checkpointing_from_the_recipe():
    from lfvila.config import load_config
    from lfvila.trainer.config import TrainConfig

    recipe = Path(__file__).resolve().parents[1] / "train" / "tiny.yaml"
    cfg = load_config(TrainConfig, recipe, ["model.video.grad_checkpointing=[true, true, false, false]"])
    assert cfg.model.video.checkpoint_stages == (True, True, False, False)
    assert load_config(TrainConfig, recipe, ["model.video.grad_checkpointing=3"]).model.video.checkpoint_stages == (
        True, True, True, False)
