"""WindowAttention against a naive implementation written plainly: per-window Python loops,
explicit relative-position bias lookup, explicit shift mask, padded tokens left out."""
import math

import pytest
import torch

from lfvila.models.window_attention import (
    WindowAttention,
    allowed_mask,
    effective_window,
    relative_position_index,
    window_masks,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def naive_window_attention(attn: WindowAttention, x: torch.Tensor, shift) -> torch.Tensor:
    """Reference: for each window of the shifted, padded map, attend among the real tokens in it.

    A token at original coordinate o sits at shifted coordinate (o - s) mod P. Tokens that wrapped
    around (o < s in a dimension) are not neighbours of tokens that did not wrap in that dimension.
    """
    x = x.double()
    B, T, H, W, C = x.shape
    size = (T, H, W)
    table_window = attn.window
    window, shift = list(table_window), list(shift)
    for d in range(3):  # clamp windows larger than the map, no shift there
        if size[d] <= window[d]:
            window[d], shift[d] = size[d], 0
    padded = [math.ceil(size[d] / window[d]) * window[d] for d in range(3)]
    heads, head_dim = attn.heads, C // attn.heads
    w_qkv, b_qkv = attn.qkv.weight.double(), attn.qkv.bias.double()
    w_proj, b_proj = attn.proj.weight.double(), attn.proj.bias.double()
    table = attn.relative_position_bias_table.double().tolist()  # rows of per-head biases
    span_h, span_w = 2 * table_window[1] - 1, 2 * table_window[2] - 1

    out = torch.zeros_like(x)
    for b in range(B):
        for t0 in range(0, padded[0], window[0]):
            for h0 in range(0, padded[1], window[1]):
                for w0 in range(0, padded[2], window[2]):
                    members = []  # (original coordinate, position inside the window, wrapped flags)
                    for it in range(window[0]):
                        for ih in range(window[1]):
                            for iw in range(window[2]):
                                p = (t0 + it, h0 + ih, w0 + iw)
                                o = tuple((p[d] + shift[d]) % padded[d] for d in range(3))
                                if all(o[d] < size[d] for d in range(3)):
                                    members.append((o, (it, ih, iw), tuple(o[d] < shift[d] for d in range(3))))
                    feats = torch.stack([x[b, o[0], o[1], o[2]] for o, _, _ in members])  # (n, C)
                    q, k, v = (feats @ w_qkv.T + b_qkv).view(len(members), 3, heads, head_dim).unbind(1)
                    # Explicit bias lookup and shift mask, pair by pair: bias[h][i][j].
                    n = len(members)
                    bias = [[[0.0] * n for _ in range(n)] for _ in range(heads)]
                    for i, (_, pi, gi) in enumerate(members):
                        for j, (_, pj, gj) in enumerate(members):
                            dt, dh, dw = (pi[d] - pj[d] + table_window[d] - 1 for d in range(3))
                            row = table[(dt * span_h + dh) * span_w + dw]
                            for h in range(heads):
                                bias[h][i][j] = row[h] if gi == gj else float("-inf")
                    bias = torch.tensor(bias, dtype=torch.float64)  # (heads, n, n)
                    head_outputs = []
                    for h in range(heads):
                        logits = (q[:, h] @ k[:, h].T) / math.sqrt(head_dim) + bias[h]
                        head_outputs.append(torch.softmax(logits, dim=-1) @ v[:, h])
                    y = torch.cat(head_outputs, dim=-1) @ w_proj.T + b_proj  # (n, C)
                    for i, (o, _, _) in enumerate(members):
                        out[b, o[0], o[1], o[2]] = y[i]
    return out


CASES = [
    # (T, H, W), window, shift: multiples, shifted, padded in every dim, clamped everywhere,
    # clamped in height + padded and shifted elsewhere, window exactly the map
    ((4, 6, 10), (2, 3, 5), (0, 0, 0)),
    ((4, 6, 10), (2, 3, 5), (0, 1, 2)),
    ((5, 7, 9), (4, 3, 5), (0, 1, 2)),
    ((5, 7, 9), (4, 3, 5), (0, 0, 0)),
    ((3, 2, 4), (8, 3, 5), (0, 1, 2)),
    ((6, 2, 7), (4, 3, 5), (0, 1, 2)),
    ((2, 3, 5), (2, 3, 5), (0, 1, 2)),
    ((7, 4, 11), (4, 3, 5), (1, 1, 2)),  # a temporal shift too (not used by HTWA, supported)
]


@pytest.mark.parametrize("mask_mode", ["per_window", "grouped"])
@pytest.mark.parametrize("size,window,shift", CASES)
def test_matches_naive(size, window, shift, mask_mode):
    torch.manual_seed(0)
    attn = WindowAttention(dim=8, heads=2, window=window).double()
    attn.mask_mode = mask_mode
    with torch.no_grad():  # a large bias so wrong table entries cannot hide
        attn.relative_position_bias_table.normal_(0, 1.0)
    x = torch.randn(2, *size, 8, dtype=torch.float64)
    got = attn(x, shift)
    want = naive_window_attention(attn, x, shift)
    assert got.shape == x.shape
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_clamped_index_reads_the_full_windows_entries():
    # A 2x2 window clamped from a 4x3x5 table: offsets must index like the full window does.
    full = relative_position_index((4, 3, 5), (4, 3, 5))
    clamped = relative_position_index((1, 2, 2), (4, 3, 5))
    # token (0, 1, 1) vs (0, 0, 0) in the clamped window has offset (0, 1, 1), same as in the full one
    full_q, full_k = (0 * 15 + 1 * 5 + 1), 0
    assert clamped[3, 0] == full[full_q, full_k]
    # the released code's slice full[:4, :4] gives a different (wrong) entry
    assert full[:4, :4][3, 0] != full[full_q, full_k]


def test_masks_allow_something_per_row_and_come_in_few_patterns():
    for size, window, shift in CASES:
        window, shift = effective_window(size, window, shift)
        mask = allowed_mask(size, window, shift)
        masks = window_masks(size, window, shift)
        assert (mask is None) == (masks is None)
        if mask is not None:
            assert mask.any(dim=-1).all()
            assert torch.equal(masks.allowed, mask)
            assert len(masks.group_allowed) <= 27
            assert sorted(torch.cat(masks.group_indices).tolist()) == list(range(len(mask)))
            for idx, allowed in zip(masks.group_indices, masks.group_allowed):
                assert torch.equal(mask[idx], allowed.expand(len(idx), -1, -1))


def test_bf16_is_finite_and_close():
    torch.manual_seed(0)
    attn = WindowAttention(dim=16, heads=2, window=(4, 3, 5))
    x = torch.randn(1, 5, 7, 9, 16)
    ref = attn(x, (0, 1, 2))
    got = attn.to(torch.bfloat16)(x.bfloat16(), (0, 1, 2))
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.float(), ref, atol=0.1, rtol=0.1)


def test_padded_tokens_get_no_gradient_leak():
    # Real tokens only: the gradient of the output w.r.t. the input is finite everywhere.
    attn = WindowAttention(dim=8, heads=2, window=(4, 3, 5))
    x = torch.randn(1, 5, 7, 9, 8, requires_grad=True)
    attn(x, (0, 1, 2)).square().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in attn.parameters())
