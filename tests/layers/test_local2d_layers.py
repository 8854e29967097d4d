"""Local2DAttention: the layer is projections + 2D rotary + the op + output projection; global
(window=None) == a window covering the grid; raster causality; padding keys never matter (and
global attention: padded == unpadded); explain maps; the mixer registry entries, in a Block over
[b, gy, gx, c] and on a sequence read as one row."""

import pytest
import torch
from einops import rearrange

from seqlab.layers.block import Block, Context
from seqlab.layers.ffn import make_ffn
from seqlab.layers.local2d import Local2DAttention
from seqlab.layers.mixers import make_mixer
from seqlab.layers.rotary import apply_rotary
from seqlab.layers.rotary2d import Rotary2D
from seqlab.ops.local2d import local2d_attention

DIM, HEADS = 32, 4


def context(gy, gx, **kwargs):
    return Context(rotary=Rotary2D(DIM // HEADS, max(gy, gx))(gy, gx), **kwargs)


def test_the_layer_is_projections_rotary_and_the_reference_op():
    torch.manual_seed(0)
    layer = Local2DAttention(DIM, HEADS, 5, bias=True).eval()
    x = torch.randn(2, 6, 9, DIM)
    ctx = context(6, 9)
    q, k, v = rearrange(layer.qkv(x), "b gy gx (three h d) -> three b h (gy gx) d", three=3, h=HEADS)
    cos, sin = ctx.rotary
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    q, k, v = (rearrange(t, "b h (gy gx) d -> b h gy gx d", gy=6) for t in (q, k, v))
    y = local2d_attention(q, k, v, window=5, impl="eager")
    expected = layer.proj(rearrange(y, "b h gy gx d -> b gy gx (h d)"))
    torch.testing.assert_close(layer(x, ctx), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
def test_global_attention_equals_a_window_covering_the_grid(causal):
    torch.manual_seed(0)
    local = Local2DAttention(DIM, HEADS, 11, causal=causal)
    full = Local2DAttention(DIM, HEADS, None, causal=causal)
    full.load_state_dict(local.state_dict())
    x = torch.randn(2, 5, 8, DIM)
    ctx = context(5, 8)
    torch.testing.assert_close(full(x, ctx), local(x, ctx), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("window", [3, None])
def test_causal_layers_never_see_later_cells_in_raster_order(window):
    torch.manual_seed(0)
    layer = Local2DAttention(DIM, HEADS, window, causal=True)
    gy, gx, s = 6, 7, 20  # cell 20 = (2, 6)
    x = torch.randn(2, gy, gx, DIM, requires_grad=True)
    ctx = context(gy, gx)
    y = layer(x, ctx)
    x2 = x.detach().clone().reshape(2, gy * gx, DIM)
    x2[:, s:] += torch.randn_like(x2[:, s:])
    y2 = layer(x2.reshape(2, gy, gx, DIM), ctx)
    flat, flat2 = y.reshape(2, -1, DIM), y2.reshape(2, -1, DIM)
    torch.testing.assert_close(flat[:, :s], flat2[:, :s], rtol=1e-5, atol=1e-6)
    assert (flat[:, s:] - flat2[:, s:]).abs().max() > 1e-3
    flat[:, :s].square().sum().backward()
    grad = x.grad.reshape(2, -1, DIM)
    assert torch.count_nonzero(grad[:, s:]) == 0 and torch.count_nonzero(grad[:, :s]) > 0


@pytest.mark.parametrize("window", [3, None])
def test_padding_cells_never_change_the_real_cells(window):
    torch.manual_seed(0)
    layer = Local2DAttention(DIM, HEADS, window)
    x = torch.randn(2, 6, 8, DIM)
    real = torch.ones(2, 6, 8, dtype=torch.bool)
    real[:, :, 5:] = False  # a 6 x 5 grid padded to 6 x 8 (columns on the right)
    real[1, 4:] = False
    ctx = context(6, 8, padding_mask=real)
    y = layer(x, ctx)
    x2 = x.clone()
    x2[~real] = 100 * torch.randn_like(x2[~real])
    torch.testing.assert_close(layer(x2, ctx)[real], y[real], rtol=1e-5, atol=1e-5)


def test_global_attention_padded_equals_unpadded():
    torch.manual_seed(0)
    layer = Local2DAttention(DIM, HEADS, None)
    x = torch.randn(1, 4, 5, DIM)
    padded = torch.cat((x, torch.randn(1, 4, 3, DIM)), dim=2)  # 4 x 8 canvas, real 4 x 5
    real = torch.zeros(1, 4, 8, dtype=torch.bool)
    real[:, :, :5] = True
    got = layer(padded, context(4, 8, padding_mask=real))[:, :, :5]
    torch.testing.assert_close(got, layer(x, context(4, 5)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("window", [3, None])
def test_maps_are_the_attention_of_each_cell_over_the_grid(window):
    layer = Local2DAttention(DIM, HEADS, window)
    ctx = context(5, 6, maps=[])
    layer(torch.randn(2, 5, 6, DIM), ctx)
    (entry,) = ctx.maps
    w = entry["attention"]
    assert w.shape == (2, HEADS, 5, 6, 5, 6) and entry["window"] == window
    torch.testing.assert_close(w.sum(dim=(-2, -1)), torch.ones(2, HEADS, 5, 6))
    if window is not None:
        assert torch.count_nonzero(w[..., 2, 3, :, :][..., 0:1, :]) == 0  # row 0 is outside (2, 3)'s window
        assert torch.count_nonzero(w[..., 2, 3, 1:4, 2:5]) > 0


def test_rotary_is_applied_only_when_asked():
    torch.manual_seed(0)
    with_rotary, without = Local2DAttention(DIM, HEADS, 3), Local2DAttention(DIM, HEADS, 3, rotary=False)
    without.load_state_dict(with_rotary.state_dict())
    x = torch.randn(1, 5, 5, DIM)
    assert (with_rotary(x, context(5, 5)) - without(x, context(5, 5))).abs().max() > 1e-4
    torch.testing.assert_close(without(x, context(5, 5)), with_rotary(x, Context()))


@pytest.mark.parametrize("kind", ["local2d", "global2d"])
def test_registry_mixers_run_in_a_block_over_grids_and_sequences(kind):
    mixer = make_mixer(kind, DIM, num_heads=HEADS, causal=False)
    block = Block(DIM, mixer, make_ffn("mlp", DIM))
    grid = torch.randn(2, 4, 7, DIM)
    assert block(grid, context(4, 7)).shape == grid.shape
    seq = torch.randn(2, 9, DIM)  # one row of 9 cells
    torch.testing.assert_close(block(seq, context(1, 9)), block(seq[:, None], context(1, 9))[:, 0])
    assert not block.can_decode


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="odd"):
        Local2DAttention(DIM, HEADS, 4)
    with pytest.raises(ValueError, match="divisible"):
        Local2DAttention(DIM, 5, 3)
    with pytest.raises(ValueError, match="cannot decode"):
        Local2DAttention(DIM, HEADS, 3)(torch.randn(1, 3, 3, DIM), None, state=object())
