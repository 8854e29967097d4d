"""HybridAttention: a per-query loop reference, fast == eager, causality, per-sample outputs
(the seed's defect 3), cached == recomputed decoding past the window, saved window and scale."""

import copy
import math

import pytest
import torch

from seqlab.layers.attention import Attention
from seqlab.layers.block import Context
from seqlab.layers.hybrid import HybridAttention
from seqlab.layers.mixers import make_mixer
from seqlab.layers.rotary import RotaryEmbedding, apply_rotary

DIM, HEADS = 16, 2


def make(window=4, causal=True, impl="sdpa", seed=0):
    torch.manual_seed(seed)
    layer = HybridAttention(DIM, HEADS, window, causal=causal, impl=impl)
    with torch.no_grad():  # a gate far from 0.5, different per head, so both branches matter
        layer.gate.bias.copy_(torch.tensor([1.5, -1.0]))
    return layer


def context(t, padding_mask=None):
    rotary = RotaryEmbedding(DIM // HEADS, 64)
    return Context(rotary=rotary(torch.arange(t), torch.float32), padding_mask=padding_mask)


def reference(layer, x, ctx):
    """The math of the module docstring, one query at a time, in float64."""
    layer = copy.deepcopy(layer).double()
    x = x.double()
    b, t, c = x.shape
    h, d = layer.num_heads, layer.head_dim
    q, k, v = layer.qkv(x).view(b, t, 3, h, d).permute(2, 0, 3, 1, 4)  # [b, h, t, d] each
    cos, sin = (table.double() for table in ctx.rotary)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    gate = torch.sigmoid(layer.gate(x))  # [b, t, h]
    keys = ctx.padding_mask.bool() if ctx.padding_mask is not None else torch.ones(b, t, dtype=torch.bool)
    out = torch.zeros(b, t, h, d, dtype=torch.float64)
    for bi in range(b):
        for i in range(t):
            for head in range(h):
                scores = q[bi, head, i] @ k[bi, head].T / math.sqrt(d) * layer.scale  # [t]
                branches = []
                for local in (True, False):
                    j = torch.arange(t)
                    if layer.causal:
                        ok = (j <= i) & ((i - j < layer.window) if local else True)
                    else:
                        ok = (
                            ((i - j).abs() <= layer.window // 2) if local else torch.ones(t, dtype=torch.bool)
                        )
                    ok = ok & keys[bi]
                    if not ok.any():
                        branches.append(torch.zeros(d, dtype=torch.float64))
                        continue
                    p = scores.masked_fill(~ok, -math.inf).softmax(-1)
                    branches.append(p @ v[bi, head])
                g = gate[bi, i, head]
                out[bi, i, head] = g * branches[0] + (1 - g) * branches[1]
    return layer.proj(out.reshape(b, t, c)).float()


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_matches_the_per_query_loop_reference(causal, impl):
    layer = make(window=4, causal=causal, impl=impl)
    t = 11  # odd, longer than the window
    x = torch.randn(3, t, DIM)
    pad = torch.ones(3, t, dtype=torch.long)
    pad[1, :3] = 0  # left padding in one sample
    for mask in (None, pad):
        ctx = context(t, mask)
        torch.testing.assert_close(layer(x, ctx), reference(layer, x, ctx), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("causal", [True, False])
def test_sdpa_equals_eager_on_outputs_and_gradients(causal):
    fast, slow = make(causal=causal, impl="sdpa"), make(causal=causal, impl="eager")
    x = torch.randn(2, 13, DIM)
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    outs = [layer(xi, context(13)) for layer, xi in zip((fast, slow), xs)]
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)
    for out in outs:
        out.square().sum().backward()
    torch.testing.assert_close(xs[0].grad, xs[1].grad, rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(fast.named_parameters(), slow.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_future_tokens_never_change_past_outputs():
    # Defect 3 of the seed: no causal mask.
    layer = make(window=3)
    x = torch.randn(2, 10, DIM, requires_grad=True)
    y = x.detach().clone()
    y[:, 6:] = torch.randn(2, 4, DIM)
    a, b = layer(x, context(10)), layer(y, context(10))
    torch.testing.assert_close(a[:, :6], b[:, :6], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(a[:, 6:], b[:, 6:])
    a[:, :6].sum().backward()
    assert torch.count_nonzero(x.grad[:, 6:]) == 0 and torch.count_nonzero(x.grad[:, :6]) > 0


def test_each_sample_gets_its_own_output():
    # Defect 3 of the seed: batch element 0's output was broadcast to every sample.
    layer = make()
    x = torch.randn(3, 9, DIM)
    batched = layer(x, context(9))
    alone = torch.cat([layer(x[i : i + 1], context(9)) for i in range(3)])
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(batched[0], batched[1])


def test_window_changes_only_outputs_beyond_its_reach():
    layer = make(window=4)
    x = torch.randn(1, 12, DIM)
    narrow = layer(x, context(12))
    layer.set_window(6)
    wide = layer(x, context(12))
    # The first 4 queries see all their keys through both windows; later ones differ.
    torch.testing.assert_close(narrow[:, :4], wide[:, :4], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(narrow[:, 6:], wide[:, 6:])


def test_a_window_covering_the_sequence_is_plain_causal_attention():
    layer = make(window=16)
    attn = Attention(DIM, HEADS)
    attn.load_state_dict(
        {k: v for k, v in layer.state_dict().items() if k.startswith(("qkv", "proj"))}, strict=False
    )
    x = torch.randn(2, 10, DIM)
    torch.testing.assert_close(layer(x, context(10)), attn(x, context(10)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("prefill", [1, 3, 7])
def test_cached_decoding_equals_recomputing_past_the_window(prefill):
    layer = make(window=3).eval()
    t = 14
    x = torch.randn(2, t, DIM)
    rotary = RotaryEmbedding(DIM // HEADS, 64)
    full = layer(x, context(t))
    state = layer.init_state(2, 4)  # grows past its initial capacity
    pieces, start = [], 0
    for end in [prefill, *range(prefill + 1, t + 1)]:
        ctx = Context(rotary=rotary(torch.arange(start, end), torch.float32))
        pieces.append(layer(x[:, start:end], ctx, state))
        start = end
    assert state.length == t
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=1e-5, atol=1e-6)


def test_bidirectional_layer_refuses_to_decode():
    with pytest.raises(ValueError, match="cannot decode"):
        make(causal=False).init_state(1, 4)


def test_window_and_logit_scale_are_saved_state():
    layer = make(window=4)
    layer.set_window(7)
    layer.set_logit_scale(1.3)
    x = torch.randn(1, 12, DIM)
    out = layer(x, context(12))
    fresh = make(window=4, seed=1)
    fresh.load_state_dict(layer.state_dict())
    assert fresh.window == 7 and fresh.scale == 1.3
    assert int(fresh.window_size) == 7 and float(fresh.logit_scale) == 1.3
    torch.testing.assert_close(fresh(x, context(12)), out, rtol=0, atol=0)
    # A dtype cast keeps the temperature exact (it is float64 like the RoPE base).
    assert fresh.to(torch.bfloat16).logit_scale.dtype == torch.float64


def test_logit_scale_multiplies_the_logits():
    layer = make(window=4)
    x = torch.randn(2, 9, DIM)
    ctx = context(9)
    plain = layer(x, ctx)
    layer.set_logit_scale(1.7)
    scaled = layer(x, ctx)
    torch.testing.assert_close(scaled, reference(layer, x, ctx), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(scaled, plain, atol=1e-4)


def test_bad_windows_are_errors_and_the_registry_builds_it():
    for bad in (0, None, 2.5, True):
        with pytest.raises(ValueError, match="window must be an int >= 1"):
            HybridAttention(DIM, HEADS, bad)
    with pytest.raises(ValueError, match="window must be an int >= 1"):
        make().set_window(0)
    layer = make_mixer("hybrid", DIM, num_heads=HEADS, window=5)
    assert isinstance(layer, HybridAttention) and layer.window == 5 and layer.causal
