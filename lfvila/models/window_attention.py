"""3D (time, height, width) window attention with relative position bias and shifted windows.

The building block of the HTWA video encoder (``lfvila.models.video``). Reads top-down:
window geometry (clamping, padding), relative position indices, the attention mask of a
shifted / padded window layout, then the ``WindowAttention`` module itself.

Everything is channels-last: feature maps are ``(B, T, H, W, C)``.

Two things differ on purpose from the released LF-VILA / Video Swin code:

* the relative position index is computed for the window actually used. The released code
  slices the index of the configured window (``index[:N, :N]``), which is only right when a
  window is clamped in time; clamping in height or width (any resolution other than 192x320)
  looked up the wrong table entries;
* padded tokens (feature maps that are not a multiple of the window) are masked out as keys,
  so zero padding never contributes to real tokens. The released code let them attend.

Attention runs through ``torch.nn.functional.scaled_dot_product_attention`` with the bias and
the mask folded into one additive float mask, so fused kernels (memory-efficient attention on
GPU, the flash kernel for CPU inference) are used and the ``(N, N)`` attention matrix of every
window is never materialised. Shifted or padded layouts use either one per-window mask (small
windows) or one attention call per mask pattern (large windows), whichever moves less memory.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

Size3 = tuple[int, int, int]


# --------------------------------------------------------------------------- window geometry
def effective_window(feature_size: Size3, window: Size3, shift: Size3) -> tuple[Size3, Size3]:
    """Window and shift actually used on a feature map of ``feature_size`` = (T, H, W).

    A window at least as large as the feature map in a dimension is clamped to the map, and
    shifting is switched off in that dimension (a single window has nothing to shift across).
    """
    used_window = list(window)
    used_shift = list(shift)
    for d in range(3):
        if feature_size[d] <= window[d]:
            used_window[d] = feature_size[d]
            used_shift[d] = 0
    return tuple(used_window), tuple(used_shift)  # type: ignore[return-value]


def padded_size(feature_size: Size3, window: Size3) -> Size3:
    """Feature size rounded up to a multiple of ``window`` in each dimension."""
    return tuple(math.ceil(s / w) * w for s, w in zip(feature_size, window))  # type: ignore[return-value]


def window_partition(x: torch.Tensor, window: Size3) -> torch.Tensor:
    """(B, T, H, W, C) with T, H, W multiples of ``window`` -> (B, nW, Wt*Wh*Ww, C).

    Windows are ordered time-major, then height, then width; tokens inside a window likewise.
    """
    B, T, H, W, C = x.shape
    wt, wh, ww = window
    x = x.view(B, T // wt, wt, H // wh, wh, W // ww, ww, C)
    x = x.permute(0, 1, 3, 5, 2, 4, 6, 7)  # (B, T/wt, H/wh, W/ww, wt, wh, ww, C)
    return x.reshape(B, -1, wt * wh * ww, C)


def window_reverse(windows: torch.Tensor, window: Size3, size: Size3) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B, nW, N, C) -> (B, T, H, W, C)."""
    B, _, _, C = windows.shape
    T, H, W = size
    wt, wh, ww = window
    x = windows.view(B, T // wt, H // wh, W // ww, wt, wh, ww, C)
    x = x.permute(0, 1, 4, 2, 5, 3, 6, 7)  # (B, T/wt, wt, H/wh, wh, W/ww, ww, C)
    return x.reshape(B, T, H, W, C)


# --------------------------------------------------------------------------- relative positions
@functools.lru_cache(maxsize=256)
def _relative_position_index(window: Size3, table_window: Size3, device: torch.device) -> torch.Tensor:
    # coords: (3, N) for the tokens of one window, time-major like window_partition.
    coords = torch.stack(torch.meshgrid(*(torch.arange(w, device="cpu") for w in window), indexing="ij")).flatten(1)
    relative = coords[:, :, None] - coords[:, None, :]  # (3, N, N): query minus key
    span_t, span_h, span_w = (2 * w - 1 for w in table_window)
    shifted = [relative[d] + table_window[d] - 1 for d in range(3)]  # each in [0, 2W-1)
    index = (shifted[0] * span_h + shifted[1]) * span_w + shifted[2]  # (N, N)
    return index.to(device)


def relative_position_index(window: Size3, table_window: Size3, device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, N) long index into a bias table built for ``table_window``, for a (possibly clamped) ``window``.

    Entry (i, j) is the table row of the offset (query i - key j) in (t, h, w); strides are those
    of the configured table, so a clamped window reads the same entries as the full one would.
    """
    if any(w > tw for w, tw in zip(window, table_window)):
        raise ValueError(f"window {window} exceeds the bias table's window {table_window}")
    return _relative_position_index(tuple(window), tuple(table_window), torch.device(device))


# --------------------------------------------------------------------------- shift / padding mask
def allowed_mask(feature_size: Size3, window: Size3, shift: Size3) -> torch.Tensor | None:
    """(nW, N, N) bool on CPU: may query i attend to key j in window w? ``None`` when all may.

    ``window`` and ``shift`` are the effective ones (see :func:`effective_window`). Keys are
    forbidden when they are padding, or when the cyclic shift brought them next to the query
    from the other side of the feature map.
    """
    padded = padded_size(feature_size, window)
    if padded == tuple(feature_size) and not any(shift):
        return None
    # Per position of the padded map, in ORIGINAL coordinates: is it a real token, and was it
    # wrapped around by the cyclic shift (original coordinate < shift)? Two tokens that share a
    # window after the shift are neighbours only if they wrapped identically in every dimension.
    grids = torch.meshgrid(*(torch.arange(p, device="cpu") for p in padded), indexing="ij")
    valid = torch.ones(padded, dtype=torch.bool, device="cpu")
    group = torch.zeros(padded, dtype=torch.long, device="cpu")
    for d in range(3):
        valid &= grids[d] < feature_size[d]
        group = group * 2 + (grids[d] < shift[d]).long()
    # Apply the same cyclic shift as the features, then cut into windows.
    valid = torch.roll(valid, shifts=tuple(-s for s in shift), dims=(0, 1, 2))
    group = torch.roll(group, shifts=tuple(-s for s in shift), dims=(0, 1, 2))
    valid_w = window_partition(valid[None, ..., None], window)[0, :, :, 0]  # (nW, N)
    group_w = window_partition(group[None, ..., None], window)[0, :, :, 0]  # (nW, N)
    allowed = (group_w[:, :, None] == group_w[:, None, :]) & valid_w[:, None, :]  # (nW, Nq, Nk)
    # A padded query may find no allowed key; letting it see itself keeps every softmax row
    # well defined (its output is cropped away, but NaN would poison the backward pass).
    return allowed | torch.eye(allowed.shape[-1], dtype=torch.bool, device="cpu")


class WindowMasks(NamedTuple):
    """The mask of a shifted / padded layout, per window and grouped by pattern (on one device)."""

    allowed: torch.Tensor  # (nW, N, N) bool, per window
    group_indices: list[torch.Tensor]  # per pattern: (n_g,) indices of the windows that have it
    group_allowed: list[torch.Tensor]  # per pattern: (N, N) bool


@functools.lru_cache(maxsize=256)
def _window_masks(feature_size: Size3, window: Size3, shift: Size3, device: torch.device) -> WindowMasks | None:
    allowed = allowed_mask(feature_size, window, shift)
    if allowed is None:
        return None
    patterns, which = torch.unique(allowed.flatten(1), dim=0, return_inverse=True)
    return WindowMasks(
        allowed=allowed.to(device),
        group_indices=[torch.nonzero(which == g).squeeze(1).to(device) for g in range(len(patterns))],
        group_allowed=[p.view(allowed.shape[1:]).to(device) for p in patterns],
    )


def window_masks(feature_size: Size3, window: Size3, shift: Size3, device: torch.device | str = "cpu") -> WindowMasks | None:
    """:func:`allowed_mask` per window and grouped by pattern, cached per device; ``None`` if unmasked.

    A shift or padding only affects the last one or two windows along each dimension, so there
    are at most 27 patterns (4 for a spatial shift without padding) however many windows there
    are. Attention can then run once per pattern with a (heads, N, N) mask instead of one
    (nW, heads, N, N) mask, which matters for long windows (a full-length temporal window at 96
    frames would need a 2 GB per-window mask in the first stage).
    """
    return _window_masks(tuple(feature_size), tuple(window), tuple(shift), torch.device(device))


def masked_value(dtype: torch.dtype) -> float:
    """Additive value for a forbidden key: finite (no inf/NaN in fp16/bf16), yet exp() underflows to 0."""
    return torch.finfo(dtype).min / 2


# --------------------------------------------------------------------------- attention module
class WindowAttention(nn.Module):
    """Multi-head self-attention inside (shifted) 3D windows, with a learned relative position bias.

    Takes and returns a whole feature map ``(B, T, H, W, C)``; padding to a multiple of the
    window, the cyclic shift, window partitioning and their inverses happen inside.
    """

    def __init__(self, dim: int, heads: int, window: Size3, qkv_bias: bool = True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.dim = dim
        self.heads = heads
        self.window = tuple(window)
        # One learned bias per head and per relative offset (dt, dh, dw).
        table_rows = (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(table_rows, heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        # How masked (shifted / padded) layouts attend: "auto" picks the cheaper of one
        # per-window mask ("per_window") and one call per mask pattern ("grouped"); same result.
        self.mask_mode = "auto"

    def relative_position_bias(self, window: Size3) -> torch.Tensor:
        """(heads, N, N) bias for an effective ``window`` (possibly clamped)."""
        index = relative_position_index(window, self.window, self.relative_position_bias_table.device)
        n = index.shape[0]
        # index_select rather than [] indexing: its backward is index_add, cheaper than index_put
        bias = self.relative_position_bias_table.index_select(0, index.reshape(-1))  # (N*N, heads)
        return bias.view(n, n, self.heads).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, shift: Size3 = (0, 0, 0)) -> torch.Tensor:
        """x: (B, T, H, W, C), already normalised; ``shift`` per (t, h, w) before clamping."""
        B, T, H, W, C = x.shape
        window, shift = effective_window((T, H, W), self.window, shift)
        Tp, Hp, Wp = padded_size((T, H, W), window)
        if (Tp, Hp, Wp) != (T, H, W):
            x = F.pad(x, (0, 0, 0, Wp - W, 0, Hp - H, 0, Tp - T))  # (B, Tp, Hp, Wp, C)
        if any(shift):
            x = torch.roll(x, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
        N = window[0] * window[1] * window[2]
        nW = (Tp // window[0]) * (Hp // window[1]) * (Wp // window[2])
        # Temporaries are dropped as soon as possible: at inference they set the peak memory.
        qkv = self.qkv(window_partition(x, window)).view(B, nW, N, 3, self.heads, C // self.heads)
        del x
        qkv = qkv.permute(3, 0, 1, 4, 2, 5)  # (3, B, nW, heads, N, C/heads)
        bias = self.relative_position_bias(window).to(qkv.dtype)  # (heads, N, N)
        masks = window_masks((T, H, W), window, shift, qkv.device)
        if masks is None:
            out = self._attend(qkv, bias.unsqueeze(0))  # same mask for every window
        elif self._per_window_mask(N, C):
            # Small windows: one (nW, heads, N, N) mask costs less than regrouping the windows.
            mask = bias.masked_fill(~masks.allowed[:, None], masked_value(qkv.dtype))
            out = self._attend(qkv, mask.repeat(B, 1, 1, 1) if B > 1 else mask)
        else:
            # Large windows: one attention call per mask pattern, with a (heads, N, N) mask each.
            out = qkv.new_empty(qkv.shape[1:])
            for idx, allowed in zip(masks.group_indices, masks.group_allowed):
                mask = bias.masked_fill(~allowed, masked_value(qkv.dtype)).unsqueeze(0)
                out.index_copy_(1, idx, self._attend(qkv.index_select(2, idx), mask))
        del qkv
        out = self.proj(out.transpose(2, 3).reshape(B, nW, N, C))  # (B, nW, N, C)

        x = window_reverse(out, window, (Tp, Hp, Wp))  # (B, Tp, Hp, Wp, C)
        if any(shift):
            x = torch.roll(x, shifts=shift, dims=(1, 2, 3))
        return x[:, :T, :H, :W].contiguous()

    def _per_window_mask(self, N: int, C: int) -> bool:
        if self.mask_mode != "auto":
            return self.mask_mode == "per_window"
        # per-window mask (nW*heads*N*N) vs the window copies of regrouping (about 4*nW*N*C)
        return self.heads * N <= 4 * C

    @staticmethod
    def _attend(qkv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """qkv (3, B, n, heads, N, d), additive mask broadcastable to (B*n, heads, N, N) -> (B, n, heads, N, d)."""
        _, B, n, heads, N, d = qkv.shape
        q, k, v = (t.reshape(B * n, heads, N, d) for t in qkv.unbind(0))  # windows join the batch
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).view(B, n, heads, N, d)
