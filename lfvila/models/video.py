"""HTWA video encoder: a 3D Swin transformer whose temporal window grows stage by stage.

Hierarchical Temporal Window Attention (LF-VILA, Sun et al. 2022): early stages attend within
short temporal windows (2, 4, 8 frames), later ones within long windows (16, 32), so attention
cost and activation memory stay linear in the number of frames while late features still see
the whole video. Time is never downsampled; space is halved by 2x2 patch merging.

The file reads top-down: config, MLP / stochastic depth, block, patch merging, patch embedding,
stage, encoder, clip pooling, released-checkpoint key mapping, 2D Swin initialisation. Feature maps are channels-last
``(B, T, H, W, C)`` throughout; the window attention itself is in ``window_attention.py``.

Paper configuration (``VideoEncoderConfig.paper()``), input ``(B, 3, 32, 192, 320)``::

    patch embed (1, 8, 8) -> (B, 32, 24, 40, 128)
    stage  width depth heads window(t,h,w) merge   output
      0     128    2     4    (2, 3, 5)    yes    (B, 32, 12, 20, 256)
      1     256    2     8    (4, 3, 5)    yes    (B, 32,  6, 10, 512)
      2     512   14    16    (8, 3, 5)    no     (B, 32,  6, 10, 512)
      3     512    2    16   (16, 3, 5)    no     <- its input is the "local" clip tap
      4     512    2    16   (16, 3, 5)    yes    (B, 32,  3,  5, 1024)
      5    1024    2    32   (32, 3, 5)    no     (B, 32,  3,  5, 1024) -> LayerNorm
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lfvila.models.window_attention import WindowAttention

Size3 = tuple[int, int, int]


# --------------------------------------------------------------------------- config
@dataclasses.dataclass
class VideoEncoderConfig:
    """Architecture of the HTWA video encoder. Defaults are the paper's configuration.

    Per-stage tuples (``widths``, ``depths``, ``heads``, ``windows``, ``merges``) have one entry per
    stage; ``merges[i]`` puts a 2x2 patch merging (width x2, space /2) after stage i.
    ``clip_features`` picks where clip features come from: ``"local"`` (the paper: the input of
    the first stage whose temporal window exceeds ``local_tap_window`` frames, or of stage
    ``local_tap_stage`` when set, patch-merged to the final width and LayerNorm'd) or ``"final"``
    (the encoder output; what the released checkpoints were trained with, because the released
    code loses the local tap).
    """

    patch_size: Size3 = (1, 8, 8)
    in_chans: int = 3
    widths: tuple[int, ...] = (128, 256, 512, 512, 512, 1024)
    depths: tuple[int, ...] = (2, 2, 14, 2, 2, 2)
    heads: tuple[int, ...] = (4, 8, 16, 16, 16, 32)
    windows: tuple[Size3, ...] = ((2, 3, 5), (4, 3, 5), (8, 3, 5), (16, 3, 5), (16, 3, 5), (32, 3, 5))
    merges: tuple[bool, ...] = (True, True, False, False, True, False)
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    patch_norm: bool = True
    drop_path: float = 0.2  # stochastic depth, rising linearly from 0 over all blocks
    clip_features: str = "local"
    local_tap_window: int = 8
    local_tap_stage: int | None = None  # explicit tap stage, overrides local_tap_window
    token_pool: tuple[int, int] = (2, 3)  # per-frame max-pool kernel (h, w), stride 1
    # Activation checkpointing per stage: True / False for all stages, an int N for the first N
    # stages (the widest maps, most activation memory), or one bool per stage.
    grad_checkpointing: bool | int | tuple[bool, ...] = False
    # A 2D Swin checkpoint (Microsoft's .pth or timm's .safetensors / .pth) the trainer inflates into
    # the encoder when a run starts fresh (the paper: Swin-B ImageNet-22k); see load_swin2d.
    init_2d: str | None = None

    def __post_init__(self):
        def fail(field: str, why: str):
            raise ValueError(f"VideoEncoderConfig.{field}: {why}")

        self.patch_size = tuple(self.patch_size)
        self.widths, self.depths, self.heads = tuple(self.widths), tuple(self.depths), tuple(self.heads)
        self.windows = tuple(tuple(w) for w in self.windows)
        self.merges = tuple(bool(m) for m in self.merges)
        self.token_pool = tuple(self.token_pool)

        if len(self.patch_size) != 3 or any(p < 1 for p in self.patch_size):
            fail("patch_size", f"expected 3 positive ints (t, h, w), got {self.patch_size}")
        if self.patch_size[0] != 1:
            fail("patch_size", "time is never downsampled: the temporal patch size must be 1")
        if self.in_chans < 1:
            fail("in_chans", f"must be positive, got {self.in_chans}")
        n = len(self.widths)
        if n == 0:
            fail("widths", "at least one stage is needed")
        for name in ("depths", "heads", "windows", "merges"):
            if len(getattr(self, name)) != n:
                fail(name, f"has {len(getattr(self, name))} entries but widths has {n}")
        for i in range(n):
            if self.depths[i] < 1:
                fail("depths", f"stage {i} depth must be >= 1, got {self.depths[i]}")
            if self.heads[i] < 1 or self.widths[i] % self.heads[i]:
                fail("heads", f"stage {i}: width {self.widths[i]} not divisible by {self.heads[i]} heads")
            if len(self.windows[i]) != 3 or any(w < 1 for w in self.windows[i]):
                fail("windows", f"stage {i}: expected 3 positive ints (t, h, w), got {self.windows[i]}")
        for i in range(n - 1):
            expected = self.widths[i] * (2 if self.merges[i] else 1)
            if self.widths[i + 1] != expected:
                fail("widths", f"stage {i + 1} must be {expected} wide (stage {i} is {self.widths[i]}, "
                               f"merge={self.merges[i]})")
        if self.merges[-1]:
            fail("merges", "the last stage cannot merge (no stage follows to take the doubled width)")
        if self.mlp_ratio <= 0:
            fail("mlp_ratio", f"must be positive, got {self.mlp_ratio}")
        if not 0.0 <= self.drop_path < 1.0:
            fail("drop_path", f"must be in [0, 1), got {self.drop_path}")
        if self.clip_features not in ("local", "final"):
            fail("clip_features", f"must be 'local' or 'final', got {self.clip_features!r}")
        if self.local_tap_stage is not None and not 0 <= self.local_tap_stage < n:
            fail("local_tap_stage", f"must be a stage index in [0, {n}), got {self.local_tap_stage}")
        if self.clip_features == "local":
            tap = self.tap_stage
            if tap is None:
                fail("local_tap_window", f"no stage has a temporal window above {self.local_tap_window}")
            if self.widths[tap] * 2 != self.widths[-1] or sum(self.merges[tap:]) != 1:
                fail("clip_features", f"the local tap (input of stage {tap}) must become the final width and "
                                      "grid after one 2x2 merge: needs widths[tap]*2 == widths[-1] and "
                                      "exactly one merge from the tap stage on")
        if len(self.token_pool) != 2 or any(k < 1 for k in self.token_pool):
            fail("token_pool", f"expected 2 positive ints (h, w), got {self.token_pool}")
        if isinstance(self.grad_checkpointing, (list, tuple)):
            self.grad_checkpointing = tuple(self.grad_checkpointing)
        try:
            checkpoint_stages(self.grad_checkpointing, n)
            bad_checkpointing = None
        except ValueError as e:
            bad_checkpointing = str(e)
        if bad_checkpointing:
            fail("grad_checkpointing", bad_checkpointing)

    @property
    def checkpoint_stages(self) -> tuple[bool, ...]:
        """Whether each stage recomputes its activations in backward (from ``grad_checkpointing``)."""
        return checkpoint_stages(self.grad_checkpointing, len(self.widths))

    @property
    def tap_stage(self) -> int | None:
        """Stage whose input is the local tap: ``local_tap_stage``, else the first stage whose
        temporal window exceeds ``local_tap_window`` (3 in the paper)."""
        if self.local_tap_stage is not None:
            return self.local_tap_stage
        return next((i for i, w in enumerate(self.windows) if w[0] > self.local_tap_window), None)

    @property
    def out_dim(self) -> int:
        return self.widths[-1]

    @classmethod
    def paper(cls, **overrides) -> "VideoEncoderConfig":
        """The paper's 6-stage HTWA encoder (89.2M parameters); input (B, 3, 32, 192, 320)."""
        return cls(**overrides)

    @classmethod
    def tiny(cls, **overrides) -> "VideoEncoderConfig":
        """A ~0.7M-parameter HTWA encoder for tests and CPU demos.

        Same structure as the paper's (growing temporal windows 2, 8, 16, 32; local tap; 3x5 final
        grid, so pooling gives 6 tokens per frame) at input ``(B, 3, 32, 48, 80)``:
        patch (1, 4, 4) -> 12x20 -> merge -> 6x10 -> merge -> 3x5, out_dim 128. Any T and any
        H, W work (windows are clamped and padded); T=32 with 4 clips of 8 frames is the recipe.
        """
        base = dict(
            patch_size=(1, 4, 4),
            widths=(32, 64, 64, 128),
            depths=(2, 2, 2, 2),
            heads=(2, 4, 4, 8),
            windows=((2, 3, 5), (8, 3, 5), (16, 3, 5), (32, 3, 5)),
            merges=(True, False, True, False),
            drop_path=0.1,
        )
        base.update(overrides)
        return cls(**base)


def checkpoint_stages(spec: bool | int | tuple[bool, ...] | list[bool], n_stages: int) -> tuple[bool, ...]:
    """One bool per stage from a checkpointing spec: a bool (every stage), an int N (the first N
    stages) or a sequence of ``n_stages`` bools."""
    if isinstance(spec, bool):
        return (spec,) * n_stages
    if isinstance(spec, int):
        if not 0 <= spec <= n_stages:
            raise ValueError(f"a number of stages must lie in [0, {n_stages}], got {spec}")
        return (True,) * spec + (False,) * (n_stages - spec)
    if isinstance(spec, (list, tuple)) and len(spec) == n_stages and all(isinstance(v, bool) for v in spec):
        return tuple(spec)
    raise ValueError(f"expected a bool, a number of stages or {n_stages} bools (one per stage), got {spec!r}")


class VideoEncoderOutput(NamedTuple):
    final: torch.Tensor  # (B, T, h, w, C) last stage, LayerNorm'd
    clip_source: torch.Tensor  # (B, T, h, w, C) what clip features pool from (local tap or final)


# --------------------------------------------------------------------------- small pieces
def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero the residual branch of whole samples with probability ``p``."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - p)
    return x * keep / (1.0 - p)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.fc1(x)  # (..., 4C): the largest activation of a block
        # Without autograd (inference, frozen encoder) GELU may overwrite its input: halves the peak.
        hidden = F.gelu(hidden) if hidden.requires_grad else torch.ops.aten.gelu_(hidden)
        return self.fc2(hidden)


# --------------------------------------------------------------------------- block
class Block(nn.Module):
    """Pre-norm transformer block: (shifted) window attention, then MLP, each residual."""

    def __init__(self, dim: int, heads: int, window: Size3, shift: Size3, mlp_ratio: float,
                 qkv_bias: bool, drop_path: float):
        super().__init__()
        self.shift = shift
        self.drop_path = drop_path
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, window, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, H, W, C) -> same
        x = x + drop_path(self.attn(self.norm1(x), self.shift), self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


# --------------------------------------------------------------------------- patch merging / embedding
class PatchMerging(nn.Module):
    """2x2 spatial merging: (B, T, H, W, C) -> (B, T, ceil(H/2), ceil(W/2), 2C).

    Neighbour order (0,0), (1,0), (0,1), (1,1) in (h, w) matches the released checkpoints.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[2], x.shape[3]
        x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))  # odd sizes: zero row / column at the end
        x = torch.cat([x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))  # (B, T, H/2, W/2, 2C)


class PatchEmbed(nn.Module):
    """Non-overlapping 3D patches: (B, 3, T, H, W) -> (B, T', H', W', C), padding H, W up to the patch."""

    def __init__(self, patch_size: Size3, in_chans: int, dim: int, norm: bool):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv3d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(dim) if norm else None

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        T, H, W = video.shape[2:]
        pt, ph, pw = self.patch_size
        video = F.pad(video, (0, -W % pw, 0, -H % ph, 0, -T % pt))
        x = self.proj(video).permute(0, 2, 3, 4, 1)  # (B, T', H', W', C)
        return x if self.norm is None else self.norm(x)


# --------------------------------------------------------------------------- stage
class Stage(nn.Module):
    """``depth`` blocks at one width and temporal window; odd blocks shift by half a window in space."""

    def __init__(self, dim: int, depth: int, heads: int, window: Size3, merge: bool, mlp_ratio: float,
                 qkv_bias: bool, drop_paths: list[float]):
        super().__init__()
        # Spatial shift only: HTWA never shifts in time.
        shift = (0, window[1] // 2, window[2] // 2)
        self.blocks = nn.ModuleList(
            Block(dim, heads, window, shift if j % 2 else (0, 0, 0), mlp_ratio, qkv_bias, drop_paths[j])
            for j in range(depth)
        )
        self.downsample = PatchMerging(dim) if merge else None
        self.grad_checkpointing = False  # set by VideoEncoder.set_grad_checkpointing

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, H, W, C) -> (B, T, H', W', C')
        if self.grad_checkpointing and torch.is_grad_enabled():
            # Keep only the stage input; recompute its activations in backward (with the same
            # random numbers: stochastic depth draws again from the saved RNG state).
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)


# --------------------------------------------------------------------------- encoder
class VideoEncoder(nn.Module):
    """HTWA video encoder: ``forward(video (B, 3, T, H, W)) -> VideoEncoderOutput``."""

    def __init__(self, cfg: VideoEncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.out_dim = cfg.out_dim
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, cfg.widths[0], cfg.patch_norm)
        n_blocks = sum(cfg.depths)
        rates = [cfg.drop_path * b / max(n_blocks - 1, 1) for b in range(n_blocks)]  # linear 0 -> drop_path
        self.layers = nn.ModuleList()
        for i, depth in enumerate(cfg.depths):
            first = sum(cfg.depths[:i])
            self.layers.append(Stage(cfg.widths[i], depth, cfg.heads[i], cfg.windows[i], cfg.merges[i],
                                     cfg.mlp_ratio, cfg.qkv_bias, rates[first:first + depth]))
        self.set_grad_checkpointing(cfg.grad_checkpointing)
        self.norm = nn.LayerNorm(cfg.out_dim)
        # The local clip tap exists only when used, so every parameter always receives a gradient.
        self.tap_stage = cfg.tap_stage if cfg.clip_features == "local" else None
        if self.tap_stage is not None:
            self.local_merge = PatchMerging(cfg.widths[self.tap_stage])
            self.local_norm = nn.LayerNorm(cfg.out_dim)
        self.apply(_init_weights)

    def set_grad_checkpointing(self, enabled: bool | int | tuple[bool, ...] = True) -> None:
        """Recompute the activations of the chosen stages in backward (trades ~30 % compute for memory).

        ``enabled``: True / False for every stage, N for the first N, or one bool per stage.
        """
        for stage, on in zip(self.layers, checkpoint_stages(enabled, len(self.layers))):
            stage.grad_checkpointing = on

    def forward(self, video: torch.Tensor) -> VideoEncoderOutput:
        """video: float (B, 3, T, H, W), normalised -> features (B, T, h, w, out_dim), h = H/32 at the paper config."""
        x = self.patch_embed(video)  # (B, T, H/8, W/8, C0)
        clip_source = None
        for i, stage in enumerate(self.layers):
            if i == self.tap_stage:
                clip_source = self.local_norm(self.local_merge(x))  # (B, T, h, w, out_dim)
            x = stage(x)
        x = self.norm(x)  # (B, T, h, w, out_dim)
        return VideoEncoderOutput(final=x, clip_source=x if clip_source is None else clip_source)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# --------------------------------------------------------------------------- clip pooling
def pool_clip_features(x: torch.Tensor, n_clips: int, token_pool: tuple[int, int] = (2, 3)) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip features and video tokens from encoder features.

    x: (B, T, h, w, C) with T a multiple of ``n_clips`` (consecutive frames form a clip).
    Per frame, max-pool ``token_pool`` with stride 1 over the h x w grid (3x5 -> 2x3 = 6 tokens at
    the paper config); a clip's feature is the mean over its frames and tokens.
    Returns ``clip`` (B, n_clips, C) and ``tokens`` (B, T*k, C), k tokens per frame in (h, w)
    row-major order, frames in time order (the cross-modal encoder's video tokens).
    """
    B, T, h, w, C = x.shape
    if n_clips < 1 or T % n_clips:
        raise ValueError(f"n_clips={n_clips} must divide the {T} frames")
    kh, kw = token_pool
    if h < kh or w < kw:
        raise ValueError(f"token_pool {token_pool} is larger than the {h}x{w} feature grid")
    frames = x.permute(0, 1, 4, 2, 3).reshape(B * T, C, h, w)
    pooled = F.max_pool2d(frames, kernel_size=token_pool, stride=1)  # (B*T, C, h', w')
    k = pooled.shape[2] * pooled.shape[3]
    tokens = pooled.flatten(2).transpose(1, 2).reshape(B, T, k, C)  # (B, T, k, C)
    clip = tokens.view(B, n_clips, T // n_clips, k, C).mean(dim=(2, 3))  # (B, n_clips, C)
    return clip, tokens.reshape(B, T * k, C)


# --------------------------------------------------------------------------- released checkpoints
VIDEO_KEY_MAP_NOTES = """\
Released LF-VILA checkpoints (microsoft/XPretrain, LF-VILA) -> VideoEncoder state_dict:

  video_encoder.<rest>                                      -> <rest>   (prefix stripped)
  patch_embed.proj.{weight,bias}, patch_embed.norm.*        -> same names
  layers.{i}.blocks.{j}.norm1/norm2.*                       -> same names
  layers.{i}.blocks.{j}.attn.qkv.*, attn.proj.*             -> same names
  layers.{i}.blocks.{j}.attn.relative_position_bias_table   -> same name, same shape
  layers.{i}.blocks.{j}.attn.relative_position_index        -> dropped (a buffer; recomputed, correctly
                                                               also for clamped windows)
  layers.{i}.blocks.{j}.mlp.fc1.*, mlp.fc2.*                -> same names
  layers.{i}.downsample.norm.*, downsample.reduction.weight -> same names (same 2x2 neighbour order)
  norm.*                                                    -> norm.*
  local_feat_proj.{norm,reduction}.*                        -> local_merge.{norm,reduction}.*
  norm_local.*                                              -> local_norm.*

The released model never used its local tap (a loop bug returns the final output twice), so
local_feat_proj / norm_local hold untrained initial values: the released behaviour is
clip_features="final", and those two modules are dropped unless keep_local_tap=True.
Numerics match the released encoder at inputs whose feature maps are multiples of the windows
(e.g. 32 x 192 x 320); elsewhere this encoder masks padded tokens and indexes the bias of clamped
windows correctly, where the released code did not.
"""


def remap_released_video_keys(state_dict: dict[str, torch.Tensor], *, prefix: str = "video_encoder.",
                              keep_local_tap: bool = False) -> dict[str, torch.Tensor]:
    """Map a released LF-VILA state_dict (whole model or encoder only) to ``VideoEncoder`` keys.

    Keys outside ``prefix`` are ignored when any key carries it; see ``VIDEO_KEY_MAP_NOTES``.
    """
    if any(k.startswith(prefix) for k in state_dict):
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    renames = {"local_feat_proj.": "local_merge.", "norm_local.": "local_norm."}
    out = {}
    for key, value in state_dict.items():
        if key.endswith("relative_position_index"):
            continue
        tap_prefix = next((p for p in renames if key.startswith(p)), None)
        if tap_prefix is not None:
            if not keep_local_tap:
                continue
            key = renames[tap_prefix] + key[len(tap_prefix):]
        out[key] = value
    return out


# --------------------------------------------------------------------------- 2D Swin initialisation
def inflate_bias_table(table_2d: torch.Tensor, window: Size3) -> torch.Tensor:
    """2D Swin bias table ((2S-1)^2, heads) -> 3D table ((2Wt-1)(2Wh-1)(2Ww-1), heads).

    Bicubic resize of the spatial offsets to (2Wh-1, 2Ww-1), the same for every temporal offset
    (the table is time-major, so the spatial table repeats 2Wt-1 times).
    """
    rows, heads = table_2d.shape
    side = int(round(rows ** 0.5))
    if side * side != rows:
        raise ValueError(f"2D bias table has {rows} rows, not a square number")
    wt, wh, ww = window
    spatial = table_2d.float().t().reshape(1, heads, side, side)
    if (side, side) != (2 * wh - 1, 2 * ww - 1):
        spatial = F.interpolate(spatial, size=(2 * wh - 1, 2 * ww - 1), mode="bicubic", align_corners=False)
    spatial = spatial.reshape(heads, -1).t()  # ((2Wh-1)(2Ww-1), heads)
    return spatial.repeat(2 * wt - 1, 1).to(table_2d.dtype)


def inflate_swin2d_state_dict(swin2d: dict[str, torch.Tensor], cfg: VideoEncoderConfig) -> dict[str, torch.Tensor]:
    """Initial ``VideoEncoder`` weights from a 2D Swin checkpoint (the paper starts from Swin-B 22k).

    Blocks are taken in order (2D layers 0..3 flattened onto the 3D stages: Swin-B's 2+2+18+2
    blocks fill the paper's 2+2+14+2+2+2), patch mergings in order onto the stages that merge,
    bias tables resized and repeated over time, the patch kernel tiled to the 3D patch size. The
    local tap takes the merging that follows it and the final LayerNorm, as the released code did.
    ``swin2d`` may be the checkpoint dict itself or hold it under ``"model"``.
    """
    sd = swin2d.get("model", swin2d)
    block_re, down_re = re.compile(r"layers\.(\d+)\.blocks\.(\d+)\.(.+)"), re.compile(r"layers\.(\d+)\.downsample\.(.+)")
    src_blocks = sorted({(int(m[1]), int(m[2])) for k in sd if (m := block_re.fullmatch(k))})
    dst_blocks = [(i, j) for i, depth in enumerate(cfg.depths) for j in range(depth)]
    if len(src_blocks) != len(dst_blocks):
        raise ValueError(f"2D checkpoint has {len(src_blocks)} blocks, the encoder {len(dst_blocks)}")
    src_downs = sorted({int(m[1]) for k in sd if (m := down_re.fullmatch(k))})
    dst_downs = [i for i, merge in enumerate(cfg.merges) if merge]
    if len(src_downs) != len(dst_downs):
        raise ValueError(f"2D checkpoint has {len(src_downs)} patch mergings, the encoder {len(dst_downs)}")
    block_map = dict(zip(src_blocks, dst_blocks))
    down_map = dict(zip(src_downs, dst_downs))

    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if m := block_re.fullmatch(key):
            stage, block = block_map[(int(m[1]), int(m[2]))]
            name = m[3]
            if name.endswith(("relative_position_index", "attn_mask")):
                continue  # recomputed
            if name == "attn.relative_position_bias_table":
                value = inflate_bias_table(value, cfg.windows[stage])
            out[f"layers.{stage}.blocks.{block}.{name}"] = value
        elif m := down_re.fullmatch(key):
            out[f"layers.{down_map[int(m[1])]}.downsample.{m[2]}"] = value
        elif key.startswith(("patch_embed.norm.", "norm.")) or key == "patch_embed.proj.bias":
            out[key] = value
        elif key == "patch_embed.proj.weight":  # (C, 3, ph2, pw2) -> (C, 3, pt, ph, pw), tiled
            pt, ph, pw = cfg.patch_size
            ph2, pw2 = value.shape[-2:]
            if ph % ph2 or pw % pw2:
                raise ValueError(f"2D patch {ph2}x{pw2} does not tile the 3D patch {cfg.patch_size}")
            reps = (pt, ph // ph2, pw // pw2)
            out[key] = value.unsqueeze(2).repeat(1, 1, *reps) / (reps[0] * reps[1] * reps[2])
        # anything else (classification head, ...) has no counterpart
    tap = cfg.tap_stage if cfg.clip_features == "local" else None
    if tap is not None:
        merge_after_tap = next(i for i in range(tap, len(cfg.merges)) if cfg.merges[i])
        for name in ("norm.weight", "norm.bias", "reduction.weight"):
            out[f"local_merge.{name}"] = out[f"layers.{merge_after_tap}.downsample.{name}"]
        out["local_norm.weight"], out["local_norm.bias"] = out["norm.weight"], out["norm.bias"]
    return out


SWIN2D_DOWNLOAD_HINT = (
    "download the 2D Swin-B ImageNet-22k weights there: Microsoft's swin_base_patch4_window7_224_22k.pth "
    "(github.com/microsoft/Swin-Transformer, release v1.0.0) or timm's swin_base_patch4_window7_224.ms_in22k "
    "model.safetensors (huggingface.co/timm), or set model.video.init_2d: null")
# 2D keys with no 3D counterpart by design: the classifier, and buffers the encoder recomputes.
_SWIN2D_IGNORED = re.compile(r"(head\..*|.*relative_position_index|.*attn_mask|.*relative_coords_table)")


@dataclass
class Swin2dLoadReport:
    """What :func:`load_swin2d` did: the key layout it read, encoder keys loaded and left at their
    initialisation (``missing``), and 2D keys that found no place (``unexpected``)."""

    layout: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


def read_swin2d_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state_dict of a 2D Swin file: ``.safetensors``, or a ``torch.save``d dict (weights only),
    bare or under ``"model"`` / ``"state_dict"`` (a DDP ``module.`` prefix stripped)."""
    from lfvila.errors import InputError

    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"model.video.init_2d: {path} not found; {SWIN2D_DOWNLOAD_HINT}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("model", "state_dict"):
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def swin2d_layout(state: dict[str, torch.Tensor]) -> str:
    """``"microsoft"``: stage i ends with its patch merging (``layers.0.downsample`` .. ``layers.2``);
    ``"timm"`` (timm >= 0.9): stage i starts with the merging before it (``layers.1`` .. ``layers.3``).

    Both hold the mergings in the same order with the same neighbour order, so the inflation
    (mergings taken in order) reads either.
    """
    downs = sorted({int(m[1]) for k in state if (m := re.fullmatch(r"layers\.(\d+)\.downsample\..+", k))})
    if not downs:
        raise ValueError("not a Swin checkpoint: no layers.N.downsample.* keys")
    return "microsoft" if downs[0] == 0 else "timm"


@torch.no_grad()
def load_swin2d(encoder: "VideoEncoder", path: str | Path) -> Swin2dLoadReport:
    """Initialise ``encoder`` from the 2D Swin checkpoint at ``path`` (inflated, see
    :func:`inflate_swin2d_state_dict`); shapes that differ raise ``ValueError`` naming the key."""
    state = read_swin2d_checkpoint(path)
    report = Swin2dLoadReport(layout=swin2d_layout(state))
    inflated = inflate_swin2d_state_dict(state, encoder.cfg)
    own = encoder.state_dict()
    for key, value in inflated.items():
        if key not in own:
            report.unexpected.append(key)
            continue
        if own[key].shape != value.shape:
            raise ValueError(f"model.video.init_2d {path}: {key} inflates to {tuple(value.shape)}, "
                             f"the encoder has {tuple(own[key].shape)}")
        own[key].copy_(value)
        report.loaded.append(key)
    used = re.compile(r"layers\.\d+\.(blocks\.\d+|downsample)\..+|patch_embed\.(proj|norm)\..+|norm\.(weight|bias)")
    report.unexpected += sorted(k for k in state if not used.fullmatch(k) and not _SWIN2D_IGNORED.fullmatch(k))
    report.missing = sorted(k for k in own if k not in inflated)
    return report
