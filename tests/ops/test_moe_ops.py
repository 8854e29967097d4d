"""Tests of seqlab.ops.moe: the fast (sorted) dispatch equals the reference loop on outputs and
gradients; top-k computes exactly k experts per token; dense_combine is the explicit weighted
sum; top_k = e is dense; the fused dense mixture of adaptive experts equals its reference on
outputs and gradients, and the reference is the experts' formula written out.
"""

import pytest
import torch
from torch import nn

from seqlab.ops.moe import dense_adaptive_experts, dense_combine, expert_counts, moe_dispatch, top_k_gates


class CountingExpert(nn.Module):
    """A small adaptive expert, tanh(W x + A a), that counts its calls and the rows it saw."""

    def __init__(self, c, a, c_out):
        super().__init__()
        self.w = nn.Linear(c, c_out)
        self.a = nn.Linear(a, c_out, bias=False)
        self.calls = 0
        self.rows = 0

    def forward(self, x, adapt):
        self.calls += 1
        self.rows += x.shape[0]
        return torch.tanh(self.w(x) + self.a(adapt))


def make(n=13, c=6, a=3, e=5, c_out=7, seed=0):
    torch.manual_seed(seed)
    experts = nn.ModuleList(CountingExpert(c, a, c_out) for _ in range(e)).double()
    x = torch.randn(n, c, dtype=torch.float64, requires_grad=True)
    adapt = torch.randn(n, a, dtype=torch.float64, requires_grad=True)
    logits = torch.randn(n, e, dtype=torch.float64, requires_grad=True)
    return experts, x, adapt, logits


def run(impl, experts, x, adapt, logits, k):
    experts.zero_grad()
    weights, index = top_k_gates(logits.softmax(-1), k)
    y = moe_dispatch(x, index, weights, experts, (adapt,), impl=impl)
    upstream = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    wrt = [x, adapt, logits, *experts.parameters()]
    # Experts that get no token have no gradient: zeros for both impls.
    return y, torch.autograd.grad((y * upstream).sum(), wrt, allow_unused=True, materialize_grads=True)


@pytest.mark.parametrize("n, e, k", [(1, 3, 1), (13, 5, 1), (13, 5, 2), (13, 5, 5), (40, 8, 3)])
def test_fast_dispatch_matches_reference_outputs_and_grads(n, e, k):
    experts, x, adapt, logits = make(n=n, e=e)
    y_ref, g_ref = run("reference", experts, x, adapt, logits, k)
    y, g = run("fast", experts, x, adapt, logits, k)
    torch.testing.assert_close(y, y_ref)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b)


def test_fast_dispatch_with_an_expert_that_gets_no_token():
    experts, x, adapt, _ = make(n=6, e=4)
    index = torch.tensor([[0, 2]] * 6)  # experts 1 and 3 idle
    weights = torch.full((6, 2), 0.5, dtype=torch.float64)
    y = moe_dispatch(x, index, weights, experts, (adapt,))
    y_ref = moe_dispatch(x, index, weights, experts, (adapt,), impl="reference")
    torch.testing.assert_close(y, y_ref)
    assert experts[1].calls == experts[3].calls == 0


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_top_k_computes_exactly_k_experts_per_token(impl):
    n, e, k = 17, 5, 2
    experts, x, adapt, logits = make(n=n, e=e)
    weights, index = top_k_gates(logits.softmax(-1), k)
    counts = expert_counts(index, e)
    assert int(counts.sum()) == n * k
    moe_dispatch(x, index, weights, experts, (adapt,), impl=impl)
    assert [ex.rows for ex in experts] == counts.tolist()
    assert sum(ex.rows for ex in experts) == n * k
    if impl == "fast":  # one call per expert that received tokens
        assert [ex.calls for ex in experts] == [int(c > 0) for c in counts]
    else:
        assert sum(ex.calls for ex in experts) == n * k


def test_top_k_gates_are_renormalized_and_distinct():
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    weights, index = top_k_gates(probs, 2)
    torch.testing.assert_close(weights, torch.tensor([[0.625, 0.375], [0.8 / 0.9, 0.1 / 0.9]]))
    assert index[0].tolist() == [0, 1] and index[1, 0] == 2
    with pytest.raises(ValueError, match="top_k"):
        top_k_gates(probs, 4)


def test_dense_combine_is_the_explicit_weighted_sum_and_equals_top_k_all():
    experts, x, adapt, logits = make(n=9, e=4)
    probs = logits.softmax(-1)
    y = dense_combine(x, probs, experts, (adapt,))
    explicit = sum(probs[:, e, None] * experts[e](x, adapt) for e in range(4))
    torch.testing.assert_close(y, explicit)
    weights, index = top_k_gates(probs, 4)
    torch.testing.assert_close(moe_dispatch(x, index, weights, experts, (adapt,)), y)


def test_dispatch_rejects_bad_shapes_and_impl():
    experts, x, adapt, logits = make(n=4, e=3)
    weights, index = top_k_gates(logits.softmax(-1), 1)
    with pytest.raises(ValueError, match="impl"):
        moe_dispatch(x, index, weights, experts, (adapt,), impl="cuda")
    with pytest.raises(ValueError, match="moe_dispatch wants"):
        moe_dispatch(x[None], index, weights, experts, (adapt,))
    with pytest.raises(ValueError, match="one row per token"):
        moe_dispatch(x, index, weights, experts, (adapt[:2],))


def adaptive_expert_weights(e=3, c=6, hidden=5, r=2, o=6, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)

    def t(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)

    first = [t(e, hidden, c), t(e, r, c), t(e, hidden, r), t(e, hidden) if bias else None]
    second = [t(e, o, hidden), t(e, r, hidden), t(e, o, r), t(e, o) if bias else None]
    return first + second


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("n", [1, 11])
def test_dense_adaptive_experts_fast_matches_reference_outputs_and_grads(n, bias):
    weights = adaptive_expert_weights(bias=bias)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 6, generator=g, dtype=torch.float64, requires_grad=True)
    probs = torch.randn(n, 3, generator=g, dtype=torch.float64).softmax(-1).requires_grad_(True)
    gate1, gate2 = (
        torch.randn(n, 3, 2, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2)
    )
    inputs = [x, probs, gate1, gate2, *(w for w in weights if w is not None)]
    upstream = torch.randn(n, 6, generator=g, dtype=torch.float64)
    results = []
    for impl in ("reference", "fast"):
        y = dense_adaptive_experts(x, probs, gate1, gate2, *weights, impl=impl)
        results.append((y, torch.autograd.grad((y * upstream).sum(), inputs)))
    torch.testing.assert_close(results[1][0], results[0][0])
    for a, b in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(a, b)


def test_dense_adaptive_experts_reference_is_the_weighted_sum_of_the_written_experts():
    w1, v1, u1, b1, w2, v2, u2, b2 = adaptive_expert_weights()
    x = torch.randn(4, 6, dtype=torch.float64)
    probs = torch.randn(4, 3, dtype=torch.float64).softmax(-1)
    gate1, gate2 = torch.randn(4, 3, 2, dtype=torch.float64), torch.randn(4, 3, 2, dtype=torch.float64)
    expected = torch.zeros(4, 6, dtype=torch.float64)
    for n in range(4):
        for e in range(3):
            h = w1[e] @ x[n] + b1[e] + u1[e] @ (gate1[n, e] * (v1[e] @ x[n]))
            h = torch.nn.functional.gelu(h)
            expected[n] += probs[n, e] * (w2[e] @ h + b2[e] + u2[e] @ (gate2[n, e] * (v2[e] @ h)))
    got = dense_adaptive_experts(x, probs, gate1, gate2, w1, v1, u1, b1, w2, v2, u2, b2, impl="reference")
    torch.testing.assert_close(got, expected)
    with pytest.raises(ValueError, match="impl"):
        dense_adaptive_experts(x, probs, gate1, gate2, w1, v1, u1, b1, w2, v2, u2, b2, impl="cuda")
