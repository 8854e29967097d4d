"""Tests of seqlab.ops.leap: fast window sums and pooling vs the reference loop (outputs and
gradients), with and without decay; recurrent == parallel, causality and window locality,
pads, the attention map, the long-sequence numerics of the spec (bf16, and decay at t = 8192),
focus weights and gates, ALiBi decay, the decoding-state protocol (length, map_batch, reset).
"""

import math

import pytest
import torch
import torch.nn.functional as F

from seqlab.ops.leap import (
    alibi_decay,
    leap_attention_map,
    leap_gate_elu,
    leap_logit_exp,
    leap_pool_step,
    leap_recurrent_reference,
    leap_recurrent_step,
    leap_state_init,
    leap_weights_elu,
    leap_window_pool,
    leap_window_sums,
)

FAST_IMPLS = ("fast", "blocked", "shifted")
# Per-head decay for 3 heads: none (gamma = 1), mild, strong (0.3^99 ~ 1e-52).
GAMMAS = (1.0, 0.9, 0.3)


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


def make_decay(use_decay, dtype=torch.float64, requires_grad=False):
    if not use_decay:
        return None
    return torch.tensor(GAMMAS, dtype=dtype, requires_grad=requires_grad)


def outputs_and_grads(op, inputs, decay, window, causal, impl):
    """Outputs of op ("sums" or "pool") and the gradients of a random projection of them with
    respect to the inputs and the decay (when it is learned)."""
    if op == "sums":
        out = leap_window_sums(*inputs, window, causal=causal, decay=decay, impl=impl)
    else:
        out = (leap_window_pool(*inputs, window, causal=causal, decay=decay, impl=impl),)
    gen = torch.Generator().manual_seed(1)
    upstream = [torch.randn(x.shape, generator=gen, dtype=x.dtype) for x in out]
    loss = sum((o * g).sum() for o, g in zip(out, upstream))
    wrt = (*inputs, decay) if decay is not None else inputs
    # W = 1 uses no decay (gamma^0): its gradient is zero, and some impls never touch it.
    return out, torch.autograd.grad(loss, wrt, allow_unused=True, materialize_grads=True)


@pytest.mark.parametrize("op", ["sums", "pool"])
@pytest.mark.parametrize("use_decay", [False, True], ids=["flat", "decay"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
@pytest.mark.parametrize("window", [1, 2, 3, 5, 16, "t", "2t", None])
@pytest.mark.parametrize("t, d", [(1, 8), (7, 1), (33, 16), (100, 8), (100, 1)])
def test_fast_matches_reference_outputs_and_grads(t, d, window, causal, use_decay, op):
    window = resolve_window(window, t)
    w, k, v = make_inputs(2, t, 3, d, requires_grad=True)
    inputs = (w, k, v) if op == "sums" else (w, v)
    decay = make_decay(use_decay, requires_grad=True)
    ref_out, ref_grads = outputs_and_grads(op, inputs, decay, window, causal, "reference")
    for impl in FAST_IMPLS:
        out, grads = outputs_and_grads(op, inputs, decay, window, causal, impl)
        for name, a, b in zip(("kbar", "vbar", "z"), out, ref_out):
            torch.testing.assert_close(a, b, msg=lambda m, n=name, i=impl: f"{i} {n}: {m}")
        for name, a, b in zip(("dw", "dk", "dv", "ddecay"), grads, ref_grads):
            torch.testing.assert_close(a, b, msg=lambda m, n=name, i=impl: f"{i} {n}: {m}")


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
@pytest.mark.parametrize("window", [65, 130, None])
def test_decay_windows_longer_than_a_chunk_match_reference(window, causal):
    # Windows and sequences beyond DECAY_CHUNK (64) tokens: chunk carries inside the blocks.
    w, k, v = make_inputs(1, 301, 3, 2, requires_grad=True)
    decay = make_decay(True, requires_grad=True)
    ref_out, ref_grads = outputs_and_grads("sums", (w, k, v), decay, window, causal, "reference")
    out, grads = outputs_and_grads("sums", (w, k, v), decay, window, causal, "fast")
    for a, b in zip((*out, *grads), (*ref_out, *ref_grads)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("use_decay", [False, True], ids=["flat", "decay"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
@pytest.mark.parametrize("window", [3, 16, None])
def test_fast_fp32_matches_fp64_reference(window, causal, use_decay):
    w, k, v = make_inputs(2, 77, 3, 8, dtype=torch.float32)
    decay = make_decay(use_decay, torch.float32)
    w64, k64, v64 = w.double(), k.double(), v.double()
    ref = leap_window_sums(w64, k64, v64, window, causal=causal, decay=decay, impl="reference")
    for impl in FAST_IMPLS:
        out = leap_window_sums(w, k, v, window, causal=causal, decay=decay, impl=impl)
        for a, b in zip(out, ref):
            assert a.dtype == torch.float32
            torch.testing.assert_close(a, b.float())


@pytest.mark.parametrize("use_decay", [False, True], ids=["flat", "decay"])
@pytest.mark.parametrize("impl", [*FAST_IMPLS, "reference"])
def test_pool_is_the_first_average_of_window_sums(impl, use_decay):
    w, x, _ = make_inputs(2, 29, 3, 4, dtype=torch.float32)
    decay = make_decay(use_decay, torch.float32)
    for window, causal in [(4, True), (None, True), (5, False)]:
        xbar = leap_window_pool(w, x, window, causal=causal, decay=decay, impl=impl)
        kbar, _, _ = leap_window_sums(w, x, x, window, causal=causal, decay=decay, impl=impl)
        # Two code paths in fp32: equal up to fp32 round-off (1.2e-7 seen on AMD EPYC).
        torch.testing.assert_close(xbar, kbar)
    xbar = leap_window_pool(w.bfloat16(), x.bfloat16(), 3, impl=impl)
    assert xbar.dtype == torch.bfloat16 and xbar.shape == x.shape


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


def pool_recurrent(w, x, window, decay=None):
    """leap_window_pool by stepping leap_pool_step over t."""
    b, t, h, d = x.shape
    state = leap_state_init(b, h, d, window, dtype=torch.float32, decay=decay, num_streams=1)
    return torch.stack([leap_pool_step(state, w[:, i], x[:, i]) for i in range(t)], 1)


@pytest.mark.parametrize("use_decay", [False, True], ids=["flat", "decay"])
@pytest.mark.parametrize("window", [1, 3, 5, 16, "t", "2t", None])
@pytest.mark.parametrize("t", [1, 7, 33])
def test_recurrent_steps_equal_parallel(t, window, use_decay):
    window = resolve_window(window, t)
    w, k, v = make_inputs(2, t, 3, 8, dtype=torch.float32)
    decay = make_decay(use_decay, torch.float32)
    parallel = leap_window_sums(w, k, v, window, decay=decay)
    recurrent = leap_recurrent_reference(w, k, v, window, decay=decay)
    for a, b in zip(recurrent, parallel):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a, b)
    pooled = pool_recurrent(w, v, window, decay)
    torch.testing.assert_close(pooled, leap_window_pool(w, v, window, decay=decay))


def test_decay_recurrent_state_is_constant_in_context_and_fades_global_sums():
    b, h, d, gamma = 1, 1, 2, 0.5
    decay = torch.tensor([gamma])
    glob = leap_state_init(b, h, d, None, decay=decay)
    pooled = leap_state_init(b, h, d, 4, decay=decay, num_streams=1)
    assert pooled.sum_v is None and pooled.last_v is None and pooled.last_k.shape == (b, 4, h, d)
    ones = torch.ones(b, h, d)
    for _ in range(30):
        leap_recurrent_step(glob, torch.ones(b, h), ones, ones)
        leap_pool_step(pooled, torch.ones(b, h), ones)
        assert glob.sum_k.shape == (b, h, d) and pooled.last_w.shape == (b, 4, h)
    # z = sum_{n < 30} gamma^n, and the last 4 only for the window of 4.
    torch.testing.assert_close(glob.z, torch.full((b, h), (1 - gamma**30) / (1 - gamma)))
    torch.testing.assert_close(pooled.z, torch.full((b, h), (1 - gamma**4) / (1 - gamma)))


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
    assert windowed.length == glob.length == 40


@pytest.mark.parametrize("window", [None, 3])
def test_state_protocol_map_batch_and_reset(window):
    # The per-layer decoding-state protocol of seqlab.layers.cache: length, map_batch, reset.
    b, h, d = 3, 2, 4
    state = leap_state_init(b, h, d, window, decay=alibi_decay(h))
    w, k, v = make_inputs(b, 6, h, d, dtype=torch.float32)
    for i in range(6):
        leap_recurrent_step(state, w[:, i], k[:, i], v[:, i])
    order = torch.tensor([2, 0, 1])
    before = state.sum_v.clone()
    state.map_batch(lambda x: x.index_select(0, order))
    torch.testing.assert_close(state.sum_v, before[order], atol=0, rtol=0)
    assert state.length == 6
    state.reset()
    fresh = leap_state_init(b, h, d, window, decay=alibi_decay(h))
    assert state.length == 0
    for name in type(state).BATCH_FIELDS:
        if getattr(fresh, name) is not None:
            torch.testing.assert_close(getattr(state, name), getattr(fresh, name), atol=0, rtol=0)


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


@pytest.mark.parametrize("use_decay", [False, True], ids=["flat", "decay"])
@pytest.mark.parametrize("causal_impl", [*FAST_IMPLS, "reference", "recurrent", "pool", "pool-recurrent"])
@pytest.mark.parametrize("window", [1, 3, 16, None])
def test_causality_outputs_and_gradients(window, causal_impl, use_decay):
    t, s = 40, 17
    decay = make_decay(use_decay, torch.float32)

    def run(w, k, v):
        if causal_impl == "recurrent":
            return leap_recurrent_reference(w, k, v, window, decay=decay)
        if causal_impl == "pool":
            return (leap_window_pool(w, v, window, decay=decay),)
        if causal_impl == "pool-recurrent":
            return (pool_recurrent(w, v, window, decay),)
        return leap_window_sums(w, k, v, window, decay=decay, impl=causal_impl)

    w, k, v = make_inputs(2, t, 3, 4, dtype=torch.float32, requires_grad=True)
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
    inputs = (w, v) if causal_impl.startswith("pool") else (w, k, v)
    for g in torch.autograd.grad(past_loss, inputs):
        assert torch.count_nonzero(g[:, future]) == 0
        assert torch.count_nonzero(g[:, : s + 1]) > 0


@pytest.mark.parametrize("use_decay", [False, True], ids=["flat", "decay"])
@pytest.mark.parametrize("impl", [*FAST_IMPLS, "reference"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
@pytest.mark.parametrize("window", [1, 2, 4, 9])
def test_inputs_outside_the_window_have_no_effect(window, causal, impl, use_decay):
    t, j = 30, 11
    decay = make_decay(use_decay, torch.float32)
    w, k, v = make_inputs(1, t, 3, 3, dtype=torch.float32)
    w[:, j] = 1.0

    def run(w, k, v):
        out = leap_window_sums(w, k, v, window, causal=causal, decay=decay, impl=impl)
        return (*out, leap_window_pool(w, v, window, causal=causal, decay=decay, impl=impl))

    out = run(w, k, v)
    w2, k2, v2 = w.clone(), k.clone(), v.clone()
    w2[:, j], k2[:, j], v2[:, j] = 7.0, 9.0, -9.0
    out2 = run(w2, k2, v2)
    pos = torch.arange(t)
    if causal:
        sees_j = (pos >= j) & (pos - j < window)
    else:
        sees_j = (pos - j).abs() <= window // 2
    for a, b in zip(out, out2):
        assert torch.equal(a[:, ~sees_j], b[:, ~sees_j])
        assert not torch.equal(a[:, sees_j], b[:, sees_j])


@pytest.mark.parametrize("use_decay", [False, True], ids=["flat", "decay"])
@pytest.mark.parametrize("impl", [*FAST_IMPLS, "reference"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
@pytest.mark.parametrize("window", [3, 8, None])
def test_pads_contribute_nothing(window, causal, impl, use_decay):
    decay = make_decay(use_decay, torch.float32)
    w, k, v = make_inputs(2, 25, 3, 4, dtype=torch.float32)
    pads = torch.zeros(25, dtype=torch.bool)
    pads[[0, 1, 2, 13, 24]] = True
    w[:, pads] = 0.0
    out = leap_window_sums(w, k, v, window, causal=causal, decay=decay, impl=impl)
    k2, v2 = k.clone(), v.clone()
    k2[:, pads] = 1e4
    v2[:, pads] = -1e4
    out2 = leap_window_sums(w, k2, v2, window, causal=causal, decay=decay, impl=impl)
    for a, b in zip(out, out2):
        assert torch.equal(a, b)
    if causal:
        # Tokens whose whole window is pads see nothing: z = 0, kbar = vbar = 0.
        assert torch.equal(out[2][:, :3], torch.zeros_like(out[2][:, :3]))
        assert torch.equal(out[1][:, :3], torch.zeros_like(out[1][:, :3]))


@pytest.mark.parametrize("use_decay", [False, True], ids=["flat", "decay"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
@pytest.mark.parametrize("window", [1, 4, 7, None])
def test_attention_map_rows_and_products(window, causal, use_decay):
    t = 21
    decay = make_decay(use_decay)
    w, k, v = make_inputs(2, t, 3, 5)
    w[:, :2] = 0.0
    kbar, vbar, z = leap_window_sums(w, k, v, window, causal=causal, decay=decay)
    attn = leap_attention_map(w, window, causal=causal, decay=decay)
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


def test_exp_logit_formula():
    _, k, _ = make_inputs(2, 6, 3, 8)
    f = torch.randn_like(k)
    logit = (norm_headdim(f) * norm_headdim(k)).sum(-1) * 10.0 / 8
    torch.testing.assert_close(leap_logit_exp(f, k, rescale=10.0), logit)


@pytest.mark.parametrize("d", [1, 2, 8, 64])
def test_exp_logit_is_bounded_by_rescale(d):
    rescale = 10.0
    gen = torch.Generator().manual_seed(3)
    f = torch.randn(2, 50, 4, d, generator=gen) * 1e3
    k = torch.randn(2, 50, 4, d, generator=gen) * 1e3
    aligned = torch.cat([f, -f, k], 1), torch.cat([f * 7 + 3, f, k], 1)
    for a, b in ((f, k), aligned):
        logit = leap_logit_exp(a, b, rescale)
        weights = torch.exp(logit)
        assert bool(torch.isfinite(weights).all())
        # |Norm(F) . Norm(K)| <= d: equality for d = 2 or aligned F, K, up to fp32 round-off.
        assert bool((logit.abs() <= rescale * (1 + 1e-6)).all())
        assert bool((weights <= math.exp(rescale) * (1 + 1e-5)).all())
    assert leap_logit_exp(f, k, rescale).dtype == torch.float32


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


def test_bad_decay_and_pool_arguments_raise_clear_errors():
    w, k, v = make_inputs(1, 5, 2, 3)
    with pytest.raises(ValueError, match=r"decay must be one gamma per head, shape \(2,\)"):
        leap_window_sums(w, k, v, 2, decay=torch.full((3,), 0.5))
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            leap_window_pool(w, v, 2, decay=torch.tensor([0.5, bad]))
    with pytest.raises(ValueError, match=r"w \[b, t, h\] and x \[b, t, h, d\]"):
        leap_window_pool(w, v[:, :, :1], 2)
    with pytest.raises(ValueError, match="decay"):
        leap_state_init(1, 2, 3, None, decay=torch.ones(3))
    with pytest.raises(ValueError, match="num_streams"):
        leap_state_init(1, 2, 3, None, num_streams=3)
    with pytest.raises(ValueError, match="num_streams=1"):
        leap_pool_step(leap_state_init(1, 2, 3, None), w[:, 0], v[:, 0])
    with pytest.raises(ValueError, match="two-stream"):
        leap_recurrent_step(leap_state_init(1, 2, 3, 4, num_streams=1), w[:, 0], k[:, 0], v[:, 0])


def test_alibi_decay_is_exp_of_minus_the_geometric_alibi_slopes():
    torch.testing.assert_close(alibi_decay(4), torch.exp(-torch.tensor([2**-2, 2**-4, 2**-6, 2**-8])))
    gammas = alibi_decay(12)
    assert gammas.shape == (12,) and gammas.dtype == torch.float32
    assert bool((gammas > 0).all()) and bool((gammas < 1).all()) and bool((gammas.diff() > 0).all())
    torch.testing.assert_close(gammas[-1], torch.tensor(math.exp(-(2**-8))))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("window", [4, 100, None])
def test_decay_long_sequence_is_finite_accurate_and_error_does_not_grow(window, dtype):
    # gamma^(t-j) factored as gamma^t / gamma^j would overflow fp32 long before t = 8192 for
    # every gamma here. The reference is the fp64 recurrence, an independent algorithm.
    t = 8192
    decay = torch.tensor([0.05, 0.78, 0.996, 0.9995])
    gen = torch.Generator().manual_seed(0)
    w = (F.elu(torch.randn(1, t, 4, generator=gen)) + 1).to(dtype)
    k = torch.randn(1, t, 4, 8, generator=gen).to(dtype)
    v = torch.randn(1, t, 4, 8, generator=gen).to(dtype)
    ref = leap_recurrent_reference(w.double(), k.double(), v.double(), window, decay=decay.double())
    output_tol = 1e-5 if dtype == torch.float32 else 2**-7 * max(r.abs().max().item() for r in ref[:2])
    for impl in FAST_IMPLS:
        out = leap_window_sums(w, k, v, window, decay=decay, impl=impl)
        for name, a, b in zip(("kbar", "vbar", "z"), out, ref):
            err = (a.double() - b).abs()
            if name == "z":
                err, tol = err / b, 1e-5  # z > 0 (elu + 1 weights), accumulated in fp32
            else:
                tol = output_tol
            first, last = err[:, :64].max().item(), err[:, -64:].max().item()
            assert err.max().item() <= tol, (impl, name, err.max().item())
            assert last <= 4 * first + 1e-7, (impl, name, first, last)


@pytest.mark.parametrize("window", [3, 16, None])
def test_sums_stay_fp32_under_bf16_autocast(window):
    # Autocast would run the decay matmuls and the recurrent einsums in bf16.
    w, k, v = make_inputs(2, 70, 3, 8, dtype=torch.float32)
    decay = make_decay(True, torch.float32)
    expected = leap_window_sums(w, k, v, window, decay=decay)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = leap_window_sums(w, k, v, window, decay=decay)
        recurrent = leap_recurrent_reference(w, k, v, window, decay=decay)
    for a, b, c in zip(out, recurrent, expected):
        assert a.dtype == b.dtype == torch.float32
        torch.testing.assert_close(a, c)
        torch.testing.assert_close(b, c)


@pytest.mark.parametrize("window", [1, 3, 5, 40, None])
@pytest.mark.parametrize("decay", [False, True], ids=["plain", "decay"])
@pytest.mark.parametrize("streams", [2, 1])
def test_state_prefill_equals_feeding_tokens_one_by_one(window, decay, streams):
    from seqlab.ops.leap import alibi_decay, leap_pool_step, leap_state_prefill

    torch.manual_seed(0)
    b, t, h, d = 2, 23, 3, 4
    w, k, v = torch.rand(b, t, h), torch.randn(b, t, h, d), torch.randn(b, t, h, d)
    gamma = alibi_decay(h) if decay else None
    stepped = leap_state_init(b, h, d, window, decay=gamma, num_streams=streams)
    chunked = leap_state_init(b, h, d, window, decay=gamma, num_streams=streams)
    for i in range(t):
        if streams == 2:
            leap_recurrent_step(stepped, w[:, i], k[:, i], v[:, i])
        else:
            leap_pool_step(stepped, w[:, i], k[:, i])
    # Two chunks: an empty state, then a non-empty one.
    leap_state_prefill(chunked, w[:, :9], k[:, :9], v[:, :9] if streams == 2 else None)
    leap_state_prefill(chunked, w[:, 9:], k[:, 9:], v[:, 9:] if streams == 2 else None)
    assert chunked.length == stepped.length == t
    for name in ("sum_k", "sum_v", "z", "last_w", "last_k", "last_v"):
        a, b_ = getattr(chunked, name), getattr(stepped, name)
        assert (a is None) == (b_ is None), name
        if a is not None:
            torch.testing.assert_close(a, b_, atol=1e-5, rtol=1e-5)
