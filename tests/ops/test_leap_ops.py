"""Tests of seqlab.ops.leap: fast window sums vs the reference loop (outputs and gradients),
recurrent == parallel, causality and window locality, pads, the attention map, the bf16
long-sequence numerics of the spec, focus weights and gates.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from seqlab.ops.leap import (
    leap_attention_map,
    leap_gate_elu,
    leap_gate_exp,
    leap_logit_exp,
    leap_recurrent_reference,
    leap_recurrent_step,
    leap_state_init,
    leap_weights_elu,
    leap_weights_exp,
    leap_window_sums,
)

FAST_IMPLS = ("fast", "blocked", "shifted")


def make_inputs(b, t, h, d, dtype=torch.float64, seed=0, requires_grad=False):
    """Focus weights >= 0 with a few pads (w = 0), keys and values."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.rand(b, t, h, generator=gen, dtype=torch.float64) * 2
    w[torch.rand(b, t, h, generator=gen) < 0.15] = 0.0
    k = torch.randn(b, t, h, d, generator=gen, dtype=torch.float64)
    v = torch.randn(b, t, h, d, generator=gen, dtype=torch.float64)
    return [x.to(dtype).requires_grad_(requires_grad) for x in (w, k, v)]


def resolve_window(window, t):
    """Test ids name windows relative to t: "t" is t, "2t" is 2t (global in both forms)."""
    return {"t": t, "2t": 2 * t}.get(window, window)


def outputs_and_grads(w, k, v, window, causal, impl):
    kbar, vbar, z = leap_window_sums(w, k, v, window, causal=causal, impl=impl)
    gen = torch.Generator().manual_seed(1)
    upstream = [torch.randn(x.shape, generator=gen, dtype=x.dtype) for x in (kbar, vbar, z)]
    loss = sum((out * g).sum() for out, g in zip((kbar, vbar, z), upstream))
    grads = torch.autograd.grad(loss, (w, k, v))
    return (kbar, vbar, z), grads


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
@pytest.mark.parametrize("window", [1, 2, 3, 5, 16, "t", "2t", None])
@pytest.mark.parametrize("t, d", [(1, 8), (7, 1), (33, 16), (100, 8), (100, 1)])
def test_fast_matches_reference_outputs_and_grads(t, d, window, causal):
    window = resolve_window(window, t)
    w, k, v = make_inputs(2, t, 3, d, requires_grad=True)
    ref_out, ref_grads = outputs_and_grads(w, k, v, window, causal, "reference")
    for impl in FAST_IMPLS:
        out, grads = outputs_and_grads(w, k, v, window, causal, impl)
        for name, a, b in zip(("kbar", "vbar", "z"), out, ref_out):
            torch.testing.assert_close(a, b, msg=lambda m, n=name, i=impl: f"{i} {n}: {m}")
        for name, a, b in zip(("dw", "dk", "dv"), grads, ref_grads):
            torch.testing.assert_close(a, b, msg=lambda m, n=name, i=impl: f"{i} {n}: {m}")


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
@pytest.mark.parametrize("window", [3, 16, None])
def test_fast_fp32_matches_fp64_reference(window, causal):
    w, k, v = make_inputs(2, 77, 2, 8, dtype=torch.float32)
    w64, k64, v64 = w.double(), k.double(), v.double()
    ref = leap_window_sums(w64, k64, v64, window, causal=causal, impl="reference")
    for impl in FAST_IMPLS:
        out = leap_window_sums(w, k, v, window, causal=causal, impl=impl)
        for a, b in zip(out, ref):
            assert a.dtype == torch.float32
            torch.testing.assert_close(a, b.float())


def test_dtypes_low_precision_inputs_keep_their_dtype_and_z_is_fp32():
    w, k, v = make_inputs(1, 9, 2, 4, dtype=torch.bfloat16)
    for impl in (*FAST_IMPLS, "reference"):
        kbar, vbar, z = leap_window_sums(w, k, v, 3, impl=impl)
        assert kbar.dtype == vbar.dtype == torch.bfloat16
        assert z.dtype == torch.float32
    kbar, vbar, z = leap_recurrent_reference(w, k, v, 3)
    assert kbar.dtype == vbar.dtype == torch.bfloat16 and z.dtype == torch.float32
    _, _, z64 = leap_window_sums(*make_inputs(1, 9, 2, 4), 3)
    assert z64.dtype == torch.float64


@pytest.mark.parametrize("window", [1, 3, 5, "t", None])
@pytest.mark.parametrize("t", [1, 7, 33])
def test_recurrent_steps_equal_parallel(t, window):
    window = resolve_window(window, t)
    w, k, v = make_inputs(2, t, 3, 8, dtype=torch.float32)
    parallel = leap_window_sums(w, k, v, window)
    recurrent = leap_recurrent_reference(w, k, v, window)
    for a, b in zip(recurrent, parallel):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a, b)


def test_recurrent_state_memory_is_constant_in_context():
    b, h, d, window = 2, 3, 4, 5
    windowed = leap_state_init(b, h, d, window)
    glob = leap_state_init(b, h, d, None)
    w, k, v = make_inputs(b, 40, h, d, dtype=torch.float32)
    for i in range(40):
        leap_recurrent_step(windowed, w[:, i], k[:, i], v[:, i])
        leap_recurrent_step(glob, w[:, i], k[:, i], v[:, i])
    assert windowed.last_k.shape == (b, window, h, d) and windowed.last_w.shape == (b, window, h)
    torch.testing.assert_close(windowed.last_v, v[:, -window:])
    assert glob.last_k is None and glob.sum_k.shape == (b, h, d) and glob.z.shape == (b, h)
    assert windowed.count == glob.count == 40


def test_recurrent_window_does_not_drift_after_a_huge_entry_leaves():
    # A running sum would keep fp32 round-off of 1e8 after subtracting it again; the step
    # recomputes the window from its last W entries and is exact once the huge one has left.
    b, t, h, d, window = 1, 12, 1, 2, 3
    w = torch.full((b, t, h), 1.0)
    w[:, 0] = 1e8
    k = torch.randn(b, t, h, d)
    v = torch.randn(b, t, h, d)
    kbar, vbar, z = leap_recurrent_reference(w, k, v, window)
    ref = leap_window_sums(w.double(), k.double(), v.double(), window, impl="reference")
    late = slice(window, None)
    torch.testing.assert_close(z[:, late], ref[2][:, late].float(), rtol=0, atol=0)
    torch.testing.assert_close(vbar[:, late], ref[1][:, late].float())


@pytest.mark.parametrize("causal_impl", [*FAST_IMPLS, "reference", "recurrent"])
@pytest.mark.parametrize("window", [1, 3, 16, None])
def test_causality_outputs_and_gradients(window, causal_impl):
    t, s = 40, 17

    def run(w, k, v):
        if causal_impl == "recurrent":
            return leap_recurrent_reference(w, k, v, window)
        return leap_window_sums(w, k, v, window, impl=causal_impl)

    w, k, v = make_inputs(2, t, 2, 4, dtype=torch.float32, requires_grad=True)
    out = run(w, k, v)
    future = slice(s + 1, None)
    w2, k2, v2 = (x.detach().clone() for x in (w, k, v))
    w2[:, future] = torch.rand_like(w2[:, future]) * 5
    k2[:, future] = torch.randn_like(k2[:, future]) * 5
    v2[:, future] = torch.randn_like(v2[:, future]) * 5
    out2 = run(w2, k2, v2)
    for a, b in zip(out, out2):
        assert torch.equal(a[:, : s + 1], b[:, : s + 1])

    past_loss = sum((o[:, : s + 1] * torch.randn_like(o[:, : s + 1])).sum() for o in out)
    for g in torch.autograd.grad(past_loss, (w, k, v)):
        assert torch.count_nonzero(g[:, future]) == 0
        assert torch.count_nonzero(g[:, : s + 1]) > 0


@pytest.mark.parametrize("impl", [*FAST_IMPLS, "reference"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
@pytest.mark.parametrize("window", [1, 2, 4, 9])
def test_inputs_outside_the_window_have_no_effect(window, causal, impl):
    t, j = 30, 11
    w, k, v = make_inputs(1, t, 2, 3, dtype=torch.float32)
    w[:, j] = 1.0
    out = leap_window_sums(w, k, v, window, causal=causal, impl=impl)
    w2, k2, v2 = w.clone(), k.clone(), v.clone()
    w2[:, j], k2[:, j], v2[:, j] = 7.0, 9.0, -9.0
    out2 = leap_window_sums(w2, k2, v2, window, causal=causal, impl=impl)
    pos = torch.arange(t)
    if causal:
        sees_j = (pos >= j) & (pos - j < window)
    else:
        sees_j = (pos - j).abs() <= window // 2
    for a, b in zip(out, out2):
        assert torch.equal(a[:, ~sees_j], b[:, ~sees_j])
        assert not torch.equal(a[:, sees_j], b[:, sees_j])


@pytest.mark.parametrize("impl", [*FAST_IMPLS, "reference"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
@pytest.mark.parametrize("window", [3, 8, None])
def test_pads_contribute_nothing(window, causal, impl):
    w, k, v = make_inputs(2, 25, 2, 4, dtype=torch.float32)
    pads = torch.zeros(25, dtype=torch.bool)
    pads[[0, 1, 2, 13, 24]] = True
    w[:, pads] = 0.0
    out = leap_window_sums(w, k, v, window, causal=causal, impl=impl)
    k2, v2 = k.clone(), v.clone()
    k2[:, pads] = 1e4
    v2[:, pads] = -1e4
    out2 = leap_window_sums(w, k2, v2, window, causal=causal, impl=impl)
    for a, b in zip(out, out2):
        assert torch.equal(a, b)
    if causal:
        # Tokens whose whole window is pads see nothing: z = 0, kbar = vbar = 0.
        assert torch.equal(out[2][:, :3], torch.zeros_like(out[2][:, :3]))
        assert torch.equal(out[1][:, :3], torch.zeros_like(out[1][:, :3]))


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
@pytest.mark.parametrize("window", [1, 4, 7, None])
def test_attention_map_rows_and_products(window, causal):
    t = 21
    w, k, v = make_inputs(2, t, 3, 5)
    w[:, :2] = 0.0
    kbar, vbar, z = leap_window_sums(w, k, v, window, causal=causal)
    attn = leap_attention_map(w, window, causal=causal)
    assert attn.shape == (2, 3, t, t)
    torch.testing.assert_close(torch.einsum("bhtj,bjhd->bthd", attn, v), vbar)
    torch.testing.assert_close(torch.einsum("bhtj,bjhd->bthd", attn, k), kbar)

    rows = attn.sum(-1).transpose(1, 2)  # [b, t, h]
    torch.testing.assert_close(rows, z / (z + 1e-5))
    seen = z > 1e-2
    torch.testing.assert_close(rows[seen], torch.ones_like(rows[seen]), rtol=0, atol=1e-3)
    assert torch.equal(rows[z == 0], torch.zeros_like(rows[z == 0]))
    if causal:
        assert torch.equal(rows[:, 0], torch.zeros_like(rows[:, 0]))  # a pad sees only pads

    pos = torch.arange(t)
    offset = pos[:, None] - pos[None, :]
    if causal:
        outside = (offset < 0) | (offset >= (window or t))
    else:
        outside = offset.abs() > (window // 2 if window else t)
    assert torch.count_nonzero(attn[..., outside]) == 0


def naive_cumsum_difference(w, k, v, window, eps=1e-5):
    """The seed's window sums: a difference of two prefix sums, in the input dtype."""
    d = k.shape[-1]
    x = torch.cat([w[..., None] * k, w[..., None] * v, w[..., None]], -1)
    prefix = x.cumsum(1)
    s = prefix - F.pad(prefix, (0, 0, 0, 0, window, 0))[:, : x.shape[1]]
    z = s[..., -1:]
    return s[..., :d] / (z + eps), s[..., d : 2 * d] / (z + eps), z.squeeze(-1)


def test_bf16_long_sequence_error_does_not_grow_and_the_seed_cumsum_difference_does():
    t, window = 8192, 4
    gen = torch.Generator().manual_seed(0)
    w = (F.elu(torch.randn(1, t, 2, generator=gen)) + 1).bfloat16()
    k = torch.randn(1, t, 2, 16, generator=gen).bfloat16()
    v = torch.randn(1, t, 2, 16, generator=gen).bfloat16()
    ref = leap_window_sums(w.double(), k.double(), v.double(), window, impl="reference")

    def first_and_last_error(out):
        errors = []
        for a, b in zip(out, ref):
            err = (a.double() - b).abs()
            errors.append((err[:, :64].max().item(), err[:, -64:].max().item()))
        return errors

    for impl in FAST_IMPLS:
        out = leap_window_sums(w, k, v, window, impl=impl)
        for (first, last), a in zip(first_and_last_error(out), ref):
            assert last <= 4 * first + 1e-6, (impl, first, last)
            # bf16 outputs: no worse than bf16 rounding of the largest value.
            assert last <= 2**-7 * a.abs().max().item()

    naive = first_and_last_error(naive_cumsum_difference(w, k, v, window))
    for first, last in naive:
        assert last > 4 * first
        assert last > 1.0


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("window", [3, 16, 50])
def test_window_sums_keep_relative_accuracy_over_the_exp_focus_range(window, impl):
    # exp focus weights span e^-10..e^10, a ratio beyond fp32 precision: a window of tiny
    # weights next to a huge one must still get its own sums to fp32 relative accuracy.
    gen = torch.Generator().manual_seed(5)
    t = 200
    w = torch.exp(torch.rand(1, t, 2, generator=gen) * 20 - 10)
    w[:, 60:120] = math.exp(-10)
    w[:, 59] = math.exp(10)
    k = torch.randn(1, t, 2, 4, generator=gen)
    v = torch.randn(1, t, 2, 4, generator=gen)
    out = leap_window_sums(w, k, v, window, impl=impl)
    ref = leap_window_sums(w.double(), k.double(), v.double(), window, impl="reference")
    torch.testing.assert_close(out[2], ref[2].float(), rtol=1e-5, atol=0)
    for a, b in zip(out[:2], ref[:2]):
        torch.testing.assert_close(a, b.float())


def test_elu_weights_and_gate_formulas():
    _, k, _ = make_inputs(2, 6, 3, 8)
    f, q = torch.randn_like(k), torch.randn_like(k)
    weights = leap_weights_elu(f, k)
    expected = F.elu((f * k).sum(-1) / math.sqrt(8)) + 1
    torch.testing.assert_close(weights, expected)
    assert weights.shape == (2, 6, 3) and bool((weights > 0).all())
    gate = leap_gate_elu(q, k)
    torch.testing.assert_close(gate, torch.sigmoid((q * k).sum(-1) / math.sqrt(8)))


def norm_headdim(x):
    return (x - x.mean(-1, keepdim=True)) / (x.std(-1, correction=0, keepdim=True) + 1e-5)


def test_exp_weights_and_gate_formulas():
    _, k, kbar = make_inputs(2, 6, 3, 8)
    f, q = torch.randn_like(k), torch.randn_like(k)
    weights = leap_weights_exp(f, k, rescale=10.0)
    logit = (norm_headdim(f) * norm_headdim(k)).sum(-1) * 10.0 / 8
    torch.testing.assert_close(weights, torch.exp(logit))
    gate = leap_gate_exp(q, kbar, rescale=10.0)
    torch.testing.assert_close(gate, torch.sigmoid((norm_headdim(q) * kbar).sum(-1) * 10.0 / 8))


@pytest.mark.parametrize("d", [1, 2, 8, 64])
def test_exp_logit_is_bounded_by_rescale(d):
    rescale = 10.0
    gen = torch.Generator().manual_seed(3)
    f = torch.randn(2, 50, 4, d, generator=gen) * 1e3
    k = torch.randn(2, 50, 4, d, generator=gen) * 1e3
    aligned = torch.cat([f, -f, k], 1), torch.cat([f * 7 + 3, f, k], 1)
    for a, b in ((f, k), aligned):
        logit = leap_logit_exp(a, b, rescale)
        weights = leap_weights_exp(a, b, rescale)
        assert bool(torch.isfinite(weights).all())
        # |Norm(F) . Norm(K)| <= d: equality for d = 2 or aligned F, K, up to fp32 round-off.
        assert bool((logit.abs() <= rescale * (1 + 1e-6)).all())
        assert bool((weights <= math.exp(rescale) * (1 + 1e-5)).all())
    assert leap_weights_exp(f, k, rescale).dtype == torch.float32


def test_bad_arguments_raise_clear_errors():
    w, k, v = make_inputs(1, 5, 2, 3)
    with pytest.raises(ValueError, match="impl"):
        leap_window_sums(w, k, v, 2, impl="cuda")
    with pytest.raises(ValueError, match="window"):
        leap_window_sums(w, k, v, 0)
    with pytest.raises(ValueError, match=r"w \[b, t, h\]"):
        leap_window_sums(w[..., :1], k, v, 2)
    with pytest.raises(ValueError, match="window"):
        leap_state_init(1, 2, 3, window=0)
