"""The attention op and layer: SDPA == the eager reference (outputs and gradients) for every
mask form, both == torch SDPA given the dense mask written out by hand, masked rows give 0,
cached decoding == one full forward (windowed, padded, biased, cross), and the window is
saved state."""

import math

import pytest
import torch
import torch.nn.functional as F

from seqlab.layers.attention import Attention
from seqlab.layers.block import Context
from seqlab.layers.cache import CrossKVState, KVState
from seqlab.layers.rotary import RotaryEmbedding
from seqlab.ops.attention import attention, position_mask

B, H, D = 2, 3, 8


def dense_mask(t_q, t_k, *, causal=False, window=None, key_mask=None, mask=None):
    """The allowed-key mask written out entry by entry: [b, 1 or h, t_q, t_k]."""
    allowed = torch.ones(B, H, t_q, t_k, dtype=torch.bool)
    for i in range(t_q):
        qi = t_k - t_q + i  # queries are the last t_q positions
        for j in range(t_k):
            if causal and j > qi:
                allowed[:, :, i, j] = False
            if window is not None and causal and qi - j >= window:
                allowed[:, :, i, j] = False
            if window is not None and not causal and abs(qi - j) > window // 2:
                allowed[:, :, i, j] = False
    if key_mask is not None:
        allowed &= key_mask.bool()[:, None, None, :]
    if mask is not None:
        allowed &= mask
    return allowed


# Each form: keyword arguments of the op, as a function of (t_q, t_k).
def _padding(t_q, t_k):
    key_mask = torch.ones(B, t_k, dtype=torch.bool)
    key_mask[0, :3] = False  # left padding: the first queries of sample 0 see no key at all
    key_mask[1, -2:] = False
    return dict(key_mask=key_mask)


def _bool_mask(t_q, t_k):
    g = torch.Generator().manual_seed(3)
    mask = torch.rand(1, H, t_q, t_k, generator=g) > 0.4
    mask[0, 0, -1] = False  # one query with no key
    return dict(mask=mask)


def _bias(t_q, t_k):
    g = torch.Generator().manual_seed(4)
    return dict(bias=torch.randn(1, H, t_q, t_k, generator=g))


FORMS = {
    "full": lambda t_q, t_k: {},
    "causal": lambda t_q, t_k: dict(causal=True),
    "causal_window": lambda t_q, t_k: dict(causal=True, window=4),
    "bidirectional_window": lambda t_q, t_k: dict(window=5),
    "padding": _padding,
    "causal_padding": lambda t_q, t_k: dict(causal=True, **_padding(t_q, t_k)),
    "bool_mask": _bool_mask,
    "bias": _bias,
    "causal_window_bias_padding": lambda t_q, t_k: dict(
        causal=True, window=3, **_bias(t_q, t_k), **_padding(t_q, t_k)
    ),
}
SHAPES = [(13, 13), (1, 9), (5, 11)]  # odd lengths; a decoding step; a prefill after a cache


def _qkv(t_q, t_k, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, t_q, D, generator=g, dtype=torch.float64).float().requires_grad_(True)
    k = torch.randn(B, H, t_k, D, generator=g).requires_grad_(True)
    v = torch.randn(B, H, t_k, D, generator=g).requires_grad_(True)
    return q, k, v


def _grads(out, *inputs):
    g = torch.Generator().manual_seed(9)
    return torch.autograd.grad((out * torch.randn(out.shape, generator=g)).sum(), inputs)


@pytest.mark.parametrize("t_q,t_k", SHAPES)
@pytest.mark.parametrize("form", FORMS)
def test_sdpa_matches_the_eager_reference_on_outputs_and_gradients(form, t_q, t_k):
    if form == "bidirectional_window" and t_q != t_k:
        pytest.skip("bidirectional attention has queries == keys")
    kwargs = FORMS[form](t_q, t_k)
    q, k, v = _qkv(t_q, t_k)
    fast = attention(q, k, v, impl="sdpa", **kwargs)
    ref = attention(q, k, v, impl="eager", **kwargs)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(_grads(fast, q, k, v), _grads(ref, q, k, v)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("t_q,t_k", SHAPES)
@pytest.mark.parametrize("form", FORMS)
def test_both_impls_match_torch_sdpa_given_the_dense_mask(form, t_q, t_k):
    if form == "bidirectional_window" and t_q != t_k:
        pytest.skip("bidirectional attention has queries == keys")
    kwargs = FORMS[form](t_q, t_k)
    q, k, v = _qkv(t_q, t_k, seed=1)
    allowed = dense_mask(
        t_q,
        t_k,
        causal=kwargs.get("causal", False),
        window=kwargs.get("window"),
        key_mask=kwargs.get("key_mask"),
        mask=kwargs.get("mask"),
    )
    rows = allowed.any(-1)  # [b, h, t_q]: queries that see at least one key
    scores_mask = torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))
    if "bias" in kwargs:
        scores_mask = scores_mask + kwargs["bias"]
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=scores_mask.masked_fill(~rows[..., None], 0))
    expected = expected * rows[..., None]
    for impl in ("sdpa", "eager"):
        got = attention(q, k, v, impl=impl, **kwargs)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_a_query_that_sees_no_key_gives_zero_and_finite_gradients():
    q, k, v = _qkv(6, 6)
    key_mask = torch.tensor([[False] * 6, [False, False, True, True, True, True]])
    for impl in ("sdpa", "eager"):
        out = attention(q, k, v, causal=True, key_mask=key_mask, impl=impl)
        assert out[0].abs().max() == 0 and out[1, :, :2].abs().max() == 0
        grads = _grads(out, q, k, v)
        assert all(torch.isfinite(g).all() for g in grads)
        assert grads[0][0].abs().max() == 0  # no gradient into queries that read nothing


def test_position_mask_is_none_only_when_every_key_is_visible():
    assert position_mask(1, 9, causal=True, window=None) is None
    assert position_mask(1, 4, causal=True, window=4) is None
    assert position_mask(1, 5, causal=True, window=4) is not None
    assert position_mask(7, 7, causal=False, window=None) is None
    assert position_mask(7, 7, causal=False, window=12) is None
    expected = dense_mask(3, 5, causal=True, window=2)[0, 0]
    torch.testing.assert_close(position_mask(3, 5, causal=True, window=2), expected)


# The layer.


def _layer(seed=0, **kwargs):
    torch.manual_seed(seed)
    return Attention(24, 3, **kwargs).eval()


def _rotary_ctx(positions, **kwargs):
    rope = RotaryEmbedding(8, 16)
    return Context(positions=positions, rotary=rope(positions), **kwargs)


_g = torch.Generator().manual_seed(5)
LAYER_FORMS = {
    "causal": (dict(), {}),
    "window": (dict(window=3), {}),
    "bidirectional": (dict(causal=False), {}),
    "bidirectional_window": (dict(causal=False, window=4), {}),
    "bias": (dict(causal=False), dict(attn_bias=torch.randn(1, 3, 11, 11, generator=_g))),
    "bool_mask": (dict(), dict(attn_mask=torch.rand(2, 1, 11, 11, generator=_g) > 0.3)),
    "padding": (dict(), dict(padding_mask=torch.tensor([[0] * 4 + [1] * 7, [1] * 11]))),
    "cross": (
        dict(cross=True),
        dict(memory=torch.randn(2, 5, 24, generator=_g), memory_mask=torch.tensor([[1, 1, 1, 0, 0]] * 2)),
    ),
}


@pytest.mark.parametrize("form", LAYER_FORMS)
def test_layer_impls_agree_on_outputs_and_parameter_gradients(form):
    kwargs, ctx_kwargs = LAYER_FORMS[form]
    x = torch.randn(2, 11, 24)
    outs, grads = [], []
    for impl in ("sdpa", "eager"):
        layer = _layer(**kwargs, impl=impl)
        ctx = _rotary_ctx(torch.arange(11), **ctx_kwargs)
        out = layer(x, ctx)
        outs.append(out)
        grads.append(torch.autograd.grad(out.square().sum(), list(layer.parameters())))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("window", [None, 1, 3])
def test_future_inputs_never_change_past_outputs(window):
    layer = _layer(window=window)
    x = torch.randn(2, 12, 24)
    y = x.clone()
    y[:, 7:] = torch.randn(2, 5, 24)
    ctx = _rotary_ctx(torch.arange(12))
    torch.testing.assert_close(layer(x, ctx)[:, :7], layer(y, ctx)[:, :7])


def test_bidirectional_window_sees_only_its_neighbourhood():
    layer = _layer(causal=False, window=4)  # |i - j| <= 2
    x = torch.randn(1, 12, 24)
    y = x.clone()
    y[:, 9] = torch.randn(24)
    changed = (layer(x, Context()) - layer(y, Context())).abs().amax(-1)[0]
    assert changed[7:12].min() > 0
    assert changed[:7].max() == 0


def _decode(layer, x, chunks, ctx_for, state):
    outs, start = [], 0
    for size in chunks:
        outs.append(layer(x[:, start : start + size], ctx_for(start, start + size), state))
        start += size
    return torch.cat(outs, 1)


@pytest.mark.parametrize("window", [None, 1, 4])
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_cached_decoding_equals_one_full_forward(window, impl):
    layer = _layer(window=window, impl=impl)
    x = torch.randn(2, 23, 24)
    full = layer(x, _rotary_ctx(torch.arange(23)))
    state = layer.init_state(2, 4, None, None)  # too small: must grow
    chunks = [6] + [1] * 10 + [5, 2]
    got = _decode(layer, x, chunks, lambda a, b: _rotary_ctx(torch.arange(a, b)), state)
    torch.testing.assert_close(got, full, rtol=1e-5, atol=1e-5)
    assert state.length == 23
    if window is not None:
        # Keys older than the window were forgotten: the buffer holds O(window) of them.
        assert state.stored <= 2 * window + 5 and state.start > 0


def test_cached_decoding_with_left_padding_and_a_bias():
    layer = _layer()
    x = torch.randn(2, 12, 24)
    pad = torch.tensor([[0, 0, 0] + [1] * 9, [1] * 12])
    bias = torch.randn(1, 3, 13, 13)
    full = layer(x, Context(padding_mask=pad, attn_bias=bias[:, :, :12, :12]))
    state = layer.init_state(2, 12, None, None)
    # Each call gives the bias rows of its queries over every key consumed so far.
    ctx_for = lambda a, b: Context(padding_mask=pad[:, a:b], attn_bias=bias[:, :, a:b, :b])
    got = _decode(layer, x, [5, 1, 1, 5], ctx_for, state)
    torch.testing.assert_close(got, full, rtol=1e-5, atol=1e-5)
    # Decoding on without a padding mask still hides the pads the state has seen.
    more = torch.randn(2, 1, 24)
    step = layer(more, Context(attn_bias=bias[:, :, 12:]), state)
    state2 = layer.init_state(2, 12, None, None)
    layer(x, Context(padding_mask=pad, attn_bias=bias[:, :, :12, :12]), state2)
    step2 = layer(more, Context(padding_mask=torch.ones(2, 1), attn_bias=bias[:, :, 12:]), state2)
    torch.testing.assert_close(step, step2)


def test_cross_attention_projects_the_memory_once_per_source():
    layer = _layer(cross=True)
    memory, memory_mask = torch.randn(2, 7, 24), torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    x = torch.randn(2, 9, 24)
    full = layer(x, Context(memory=memory, memory_mask=memory_mask))
    calls = []
    handle = layer.kv.register_forward_hook(lambda *args: calls.append(1))
    state = layer.init_state(2, 9, None, None)
    assert isinstance(state, CrossKVState)
    got = _decode(layer, x, [3, 1, 1, 4], lambda a, b: Context(memory=memory, memory_mask=memory_mask), state)
    handle.remove()
    torch.testing.assert_close(got, full, rtol=1e-5, atol=1e-5)
    assert len(calls) == 1 and state.length == 9
    # The masked memory positions are invisible.
    other = memory.clone()
    other[1, 4:] = torch.randn(3, 24)
    torch.testing.assert_close(layer(x, Context(memory=other, memory_mask=memory_mask)), full)
    state.map_batch(lambda t: t[[1, 0]])
    torch.testing.assert_close(layer(x[[1, 0], :1], Context(), state), full[[1, 0], :1])
    state.reset()
    assert state.k is None and state.length == 0


def test_kv_state_map_batch_and_reset():
    state = KVState(2, 1, 4, 3)
    k = torch.randn(2, 1, 5, 4)
    state.update(k, k)
    state.map_batch(lambda t: t[[1, 1]])
    torch.testing.assert_close(state.k[:, :, :5], k[[1, 1]])
    state.reset()
    assert state.length == 0 and not state.padded


def test_set_window_is_saved_state_and_survives_a_round_trip():
    layer = _layer()
    x = torch.randn(1, 10, 24)
    full = layer(x, Context())
    layer.set_window(2)
    windowed = layer(x, Context())
    assert not torch.allclose(windowed, full)
    assert int(layer.state_dict()["window_size"]) == 2
    fresh = _layer(window=7)
    fresh.load_state_dict(layer.state_dict())
    assert fresh.window == 2
    torch.testing.assert_close(fresh(x, Context()), windowed)
    layer.set_window(None)
    fresh.load_state_dict(layer.state_dict())
    assert fresh.window is None
    torch.testing.assert_close(fresh(x, Context()), full)


def test_rotary_flag_and_tables():
    positions = torch.arange(10)
    x = torch.randn(2, 10, 24)
    with_rope = _layer()(x, _rotary_ctx(positions))
    without = _layer(rotary=False)(x, _rotary_ctx(positions))
    torch.testing.assert_close(without, _layer()(x, Context()))
    assert not torch.allclose(with_rope, without)


def test_cpu_bf16_autocast_runs_attention_in_fp32_and_returns_bf16():
    layer = _layer(window=3)
    x = torch.randn(2, 16, 24)
    ref = layer(x, _rotary_ctx(torch.arange(16)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = layer(x, _rotary_ctx(torch.arange(16)))
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, atol=0.03, rtol=0.03)


def test_bad_arguments_name_the_fix():
    with pytest.raises(ValueError, match="divisible"):
        Attention(10, 3)
    with pytest.raises(ValueError, match="window"):
        Attention(8, 2, window=0)
    with pytest.raises(ValueError, match="impl"):
        Attention(8, 2, impl="flash")
    with pytest.raises(ValueError, match="no window"):
        Attention(8, 2, cross=True, window=3)
    with pytest.raises(ValueError, match="bidirectional"):
        Attention(8, 2, causal=False).init_state(1, 4)
    with pytest.raises(ValueError, match="ctx.memory"):
        Attention(8, 2, cross=True)(torch.randn(1, 3, 8), Context())
    with pytest.raises(ValueError, match="window"):
        Attention(8, 2).set_window(-1)


def test_scores_are_scaled_by_one_over_sqrt_head_dim():
    q, k, v = _qkv(4, 4)
    expected = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D), -1) @ v
    torch.testing.assert_close(attention(q, k, v, impl="eager"), expected)
