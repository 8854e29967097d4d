"""LEAP and Fastformer mixers under the mixer protocol of seqlab.layers.block: recurrent ==
parallel (every window kind, both focus forms, decay, rotary), the state protocol (length,
map_batch, reset), padding from the context, locality of windows, the explainability maps and
the seed's argument names."""

import pytest
import torch
from einops import rearrange

from seqlab.layers.block import Block, Context
from seqlab.layers.fastformer import FastformerAttention, FastformerState
from seqlab.layers.ffn import make_ffn
from seqlab.layers.leap import MultiheadLeap, rotate_heads
from seqlab.layers.rotary import RotaryEmbedding
from seqlab.ops.leap import LeapState

WINDOWS = [1, 3, 7, None]
FOCUS = [dict(), dict(focus="exp", rescale=10.0), dict(decay=True)]
FOCUS_IDS = ["elu", "exp", "decay"]


def leap(window=None, dim=64, heads=2, **kw):
    torch.manual_seed(0)
    return MultiheadLeap(dim, heads, window, dropout=0.0, **kw).eval()


def fastformer(window=None, dim=64, heads=2, **kw):
    torch.manual_seed(0)
    return FastformerAttention(dim, heads, window, dropout=0.0, **kw).eval()


def rotary_ctx(head_dim: int, start: int, t: int, **kw) -> Context:
    rope = RotaryEmbedding(head_dim, 64)
    positions = torch.arange(start, start + t)
    return Context(positions=positions, rotary=rope(positions), **kw)


def step_by_step(layer, x, state, ctx_for=lambda i: None):
    """Feed x [b, t, c] through `state`: the first token, then one at a time."""
    return torch.cat([layer(x[:, i : i + 1], ctx_for(i), state) for i in range(x.shape[1])], 1)


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("focus", FOCUS, ids=FOCUS_IDS)
def test_leap_recurrent_form_equals_parallel_form(window, focus):
    layer = leap(window, **focus)
    x = torch.randn(2, 19, 64)
    state = layer.init_state(2, 19)
    assert isinstance(state, LeapState) and state.length == 0
    torch.testing.assert_close(step_by_step(layer, x, state), layer(x), atol=1e-5, rtol=1e-5)
    assert state.length == 19
    if window is not None:
        assert state.last_k.shape[1] == window  # O(W) state
    else:
        assert state.last_k is None and state.sum_k.shape == (2, 2, 32)  # O(1) state


@pytest.mark.parametrize("window", [3, None])
@pytest.mark.parametrize("focus", FOCUS[:2], ids=FOCUS_IDS[:2])
def test_leap_prompt_then_steps_with_rotary_equals_parallel(window, focus):
    layer = leap(window, **focus)
    x = torch.randn(2, 15, 64)
    full = layer(x, rotary_ctx(32, 0, 15))
    state = layer.init_state(2)
    pieces = [layer(x[:, :6], rotary_ctx(32, 0, 6), state)]  # the prompt: one parallel chunk
    pieces.append(step_by_step(layer, x[:, 6:], state, lambda i: rotary_ctx(32, 6 + i, 1)))
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)


def rescaled_leap_loop(layer: MultiheadLeap, x: torch.Tensor, rotary=None, mask=None) -> torch.Tensor:
    """The original's `rescale` variant, written out as a float64 loop over t (issue 8):
    Q, F, K, V each normed per head with the UNBIASED std, the window sums average the normed
    K and V, rescale / d in the focus logit and in the gate, Kbar not normed again."""
    x = x.double()
    b, t, c = x.shape
    h, d, c_r, window = layer.num_heads, layer.head_dim, layer.rescale, layer.window or t
    qfkv = x @ layer.qfkv.weight.double().T
    q, f, k, v = (z.reshape(b, t, h, d) for z in qfkv.split(c, dim=-1))

    def norm(z):  # torch.std's default is the unbiased estimate
        return (z - z.mean(-1, keepdim=True)) / (z.std(-1, keepdim=True) + 1e-5)

    q, f, k, v = norm(q), norm(f), norm(k), norm(v)
    if rotary is not None:  # after Norm, as the layer documents
        q, f, k = (rotate_heads(z, tuple(r.double() for r in rotary)) for z in (q, f, k))
    w = torch.exp((f * k).sum(-1) * c_r / d)  # [b, t, h]
    if mask is not None:
        w = w * mask.double()[:, :, None]
    y = torch.zeros(b, t, h, d, dtype=torch.float64)
    for i in range(t):
        lo = max(0, i - window + 1)
        wi = w[:, lo : i + 1, :, None]
        z = wi.sum(1) + layer.eps
        kbar, vbar = (wi * k[:, lo : i + 1]).sum(1) / z, (wi * v[:, lo : i + 1]).sum(1) / z
        a = torch.sigmoid((q[:, i] * kbar).sum(-1) * c_r / d)
        y[:, i] = a[..., None] * vbar
    return y.reshape(b, t, c) @ layer.proj.weight.double().T + layer.proj.bias.double()


@pytest.mark.parametrize("window", [1, 3, None])
@pytest.mark.parametrize("use_rotary", [False, True], ids=["plain", "rotary"])
def test_rescaled_leap_is_the_originals_formula(window, use_rotary):
    # Issue 8: seqlab averaged raw K and V and used the population std (differences 0.9-1.7
    # against the original's code). Parallel and recurrent forms both follow the loop.
    layer = leap(window, focus="exp", rescale=10.0)
    x = torch.randn(2, 13, 64) * 3
    mask = torch.ones(2, 13)
    mask[1, :4] = 0  # left padding: pads get no focus
    ctx = rotary_ctx(32, 0, 13, padding_mask=mask) if use_rotary else Context(padding_mask=mask)
    expected = rescaled_leap_loop(layer, x, ctx.rotary, mask).float()
    torch.testing.assert_close(layer(x, ctx), expected, atol=2e-5, rtol=1e-4)
    state = layer.init_state(2)

    def ctx_for(i):
        one = mask[:, i : i + 1]
        return rotary_ctx(32, i, 1, padding_mask=one) if use_rotary else Context(padding_mask=one)

    torch.testing.assert_close(step_by_step(layer, x, state, ctx_for), expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("decay", [False, True])
def test_fastformer_recurrent_form_equals_parallel_form(window, decay):
    layer = fastformer(window, decay=decay)
    x = torch.randn(2, 17, 64)
    full = layer(x)
    state = layer.init_state(2)
    assert isinstance(state, FastformerState)
    pieces = [layer(x[:, :5], None, state), step_by_step(layer, x[:, 5:], state)]
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)
    assert state.length == 17


@pytest.mark.parametrize("make", [leap, fastformer], ids=["leap", "fastformer"])
def test_state_protocol_map_batch_and_reset(make):
    layer = make(4)
    x = torch.randn(3, 9, 64)
    state = layer.init_state(3)
    layer(x, None, state)
    order = torch.tensor([2, 0, 1])
    state.map_batch(lambda t: t.index_select(0, order))
    nxt = torch.randn(3, 1, 64)
    fresh = layer.init_state(3)
    layer(x[order], None, fresh)
    torch.testing.assert_close(layer(nxt, None, state), layer(nxt, None, fresh))
    state.reset()
    assert state.length == 0
    torch.testing.assert_close(layer(x[:, :4], None, state), layer(x[:, :4], None, layer.init_state(3)))


def test_recurrent_sums_stay_fp32_for_a_bf16_model():
    state = leap(4).init_state(2, dtype=torch.bfloat16)
    assert state.z.dtype == state.sum_k.dtype == torch.float32
    assert fastformer().init_state(2, dtype=torch.float64).query.z.dtype == torch.float64


@pytest.mark.parametrize("make", [leap, fastformer], ids=["leap", "fastformer"])
def test_pads_from_the_context_change_nothing(make):
    layer = make(None)
    x = torch.randn(1, 8, 64)
    padded = torch.cat([torch.randn(1, 3, 64), x], 1)
    mask = torch.tensor([[0] * 3 + [1] * 8])
    out = layer(padded, Context(padding_mask=mask))
    torch.testing.assert_close(out[:, 3:], layer(x), atol=1e-5, rtol=1e-5)


def test_windowed_layer_ignores_tokens_outside_its_window():
    layer = leap(4, dim=32)
    x = torch.randn(1, 20, 32)
    y = x.clone()
    y[0, :10] = torch.randn(10, 32)
    torch.testing.assert_close(layer(x)[:, 13:], layer(y)[:, 13:], atol=0, rtol=0)
    assert (layer(x)[:, 10:13] - layer(y)[:, 10:13]).abs().max() > 1e-3


def test_layer_has_an_output_projection():
    # Defect 5: the seed's layer had no output projection.
    layer = MultiheadLeap(32, 2, None)
    assert layer.proj.weight.shape == (32, 32)
    assert sum(p.numel() for p in layer.parameters()) == 32 * 128 + 32 * 32 + 32


def test_bidirectional_layer_sees_both_sides_and_has_no_state():
    enc = leap(None, dim=32, causal=False)
    x = torch.randn(1, 10, 32)
    y = x.clone()
    y[0, 8] = torch.randn(32)
    assert (enc(x)[:, :8] - enc(y)[:, :8]).abs().max() > 1e-4  # the past sees the future
    with pytest.raises(RuntimeError, match="no recurrent form"):
        enc.init_state(1)
    assert not Block(32, enc, None).mixer.causal


@pytest.mark.parametrize("window, decay", [(3, False), (None, True)])
def test_explainability_maps_reproduce_the_layer_output(window, decay):
    layer = leap(window, dim=32, decay=decay)
    x = torch.randn(1, 9, 32)
    ctx = Context(maps=[])
    out = layer(x, ctx)
    (maps,) = ctx.maps
    attn, gate = maps["attention"], maps["gate"]  # [b, h, t, t], [b, t, h]
    assert attn.shape == (1, 2, 9, 9) and gate.shape == (1, 9, 2)
    assert torch.all(attn.triu(1) == 0)  # causal
    if window is not None:
        assert torch.all(attn.tril(-window) == 0)
    v = rearrange(layer.qfkv(x), "b t (four h d) -> four b t h d", four=4, h=2)[3]
    y = gate.unsqueeze(-1) * torch.einsum("bhtj,bjhd->bthd", attn, v)
    torch.testing.assert_close(layer.proj(rearrange(y, "b t h d -> b t (h d)")), out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer(x), out, atol=0, rtol=0)  # no maps asked: the same output


def test_only_leap_declares_focus_maps():
    assert MultiheadLeap.supports_focus_maps
    assert not getattr(FastformerAttention, "supports_focus_maps", False)


def test_the_seed_argument_names_are_accepted():
    torch.manual_seed(0)
    seed = MultiheadLeap(hidden_size=32, n_head=2, window_size=4, dropout=0.0)
    torch.manual_seed(0)
    ours = MultiheadLeap(32, 2, 4, dropout=0.0)
    assert (seed.num_heads, seed.head_dim, seed.window) == (ours.num_heads, ours.head_dim, ours.window)
    torch.testing.assert_close(seed.state_dict(), ours.state_dict(), atol=0, rtol=0)
    assert FastformerAttention(hidden_size=32, n_head=2, window_size=8).window == 8
    with pytest.raises(ValueError, match="both num_heads=4 and its seed name n_head=2"):
        MultiheadLeap(32, 4, n_head=2)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(dim=30, num_heads=4), "must be divisible"),
        (dict(dim=32, num_heads=2, focus="relu"), "unknown focus"),
        (dict(dim=32, num_heads=2, focus="exp"), "needs a rescale"),
        (dict(dim=32, num_heads=2, window=0), "window"),
        (dict(dim=4, num_heads=4, focus="exp", rescale=10.0), "head dim >= 2"),
    ],
)
def test_leap_bad_arguments_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MultiheadLeap(**kwargs)


def test_fastformer_takes_only_what_it_uses():
    with pytest.raises(TypeError):
        FastformerAttention(32, 2, focus="exp")  # no focus option to reject
    with pytest.raises(ValueError, match="rescale must be > 0"):
        FastformerAttention(32, 2, rescale=0)


@pytest.mark.parametrize("make", [leap, fastformer], ids=["leap", "fastformer"])
def test_block_composes_the_mixer_with_any_feed_forward(make):
    block = Block(64, make(4), make_ffn("swiglu", 64, hidden_dim=96), "rmsnorm").eval()
    x = torch.randn(2, 7, 64)
    state = block.init_state(2, 7)
    stepped = torch.cat(
        [block(x[:, :3], Context(), state)] + [block(x[:, i : i + 1], Context(), state) for i in range(3, 7)],
        1,
    )
    torch.testing.assert_close(stepped, block(x, Context()), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("make", [leap, fastformer], ids=["leap", "fastformer"])
def test_a_pairwise_bias_or_mask_is_refused_not_ignored(make):
    x = torch.randn(1, 4, 64)
    with pytest.raises(ValueError, match="takes no attention bias or mask"):
        make()(x, Context(attn_bias=torch.zeros(1, 1, 4, 4)))
    with pytest.raises(ValueError, match="takes no attention bias or mask"):
        make()(x, Context(attn_mask=torch.ones(1, 1, 4, 4, dtype=torch.bool)))
