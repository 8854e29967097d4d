"""Mixture-of-experts routing and dispatch: dense combination, top-k gates, sparse dispatch.

Given router probabilities g [n, e] over e experts for n tokens (rows):

    dense:  y_n = sum_e g_ne expert_e(x_n)                           every expert on every token
    top-k:  (w_n, i_n) = top-k of g_n, w_n renormalized to sum to 1
            y_n = sum_{j < k} w_nj expert_{i_nj}(x_n)               only k experts per token

`moe_dispatch` computes the top-k form and runs each expert ONLY on the tokens routed to it.
impl="reference" loops over tokens and slots (one expert call per token and slot: the
definition, readable, slow); impl="fast" sorts the n k assignments by expert (stable argsort),
gathers each expert's tokens with one index_select, calls each used expert once on its
contiguous slice, and scatters the weighted outputs back with one index_add. Both are tested
equal on outputs and gradients.

Experts are callables `expert(x_rows, *extra_rows) -> y_rows`: `extra` holds per-token tensors
gathered along with x (the adapt input of adaptive experts, one row per token).

`dense_adaptive_experts` is the dense form for one kind of expert, LFM's adaptive MLP with
low-rank generators (seqlab.layers.mixing.ChannelMixing), all experts at once:

    expert_e(x) = W2_e h + b2_e + U2_e (g2_e * V2_e h),   h = gelu(W1_e x + b1_e + U1_e (g1_e * V1_e x))
    y_n = sum_e p_ne expert_e(x_n)

impl="reference" loops over the experts as written; impl="fast" (pack_adaptive_experts, then
apply_packed_experts: the packing depends on the weights only, so inference packs once) runs
the e experts' first layers as one matmul (x against every W1_e and V1_e stacked:
[n, e (H + r)]), folds the gate weights p into the hidden activations so that the e second
layers are one matmul over [n, e H] (and one over [n, e r] for their low-rank terms), and the
remaining per-expert rank-r products as batched matmuls: about 25 kernels for all e experts
instead of about 30 per expert, which is what a decoded token pays for.

Shapes: x [n, c] (tokens flattened), probs / weights [n, e] / [n, k], index [n, k] (int64),
expert outputs [m, c_out]; dense_adaptive_experts: gate1, gate2 [n, e, r] (each expert's
g(a) per row), w1 [e, H, c], v1 [e, r, c], u1 [e, H, r], b1 [e, H], w2 [e, o, H],
v2 [e, r, H], u2 [e, o, r], b2 [e, o] -> [n, o].
"""

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DISPATCH_IMPLS",
    "apply_packed_experts",
    "dense_adaptive_experts",
    "dense_combine",
    "expert_counts",
    "moe_dispatch",
    "pack_adaptive_experts",
    "top_k_gates",
]

DISPATCH_IMPLS = ("reference", "fast")
Expert = Callable[..., Tensor]


def top_k_gates(probs: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k largest gate probabilities per token, renormalized: (weights [n, k], index [n, k])."""
    if not 1 <= k <= probs.shape[-1]:
        raise ValueError(f"top_k must lie in [1, num_experts={probs.shape[-1]}], got {k}")
    weights, index = probs.topk(k, dim=-1)
    return weights / weights.sum(-1, keepdim=True), index


def expert_counts(index: Tensor, num_experts: int) -> Tensor:
    """Tokens dispatched to each expert: [e] int64, summing to index.numel() = n k."""
    return torch.bincount(index.reshape(-1), minlength=num_experts)


def dense_combine(
    x: Tensor, probs: Tensor, experts: Sequence[Expert], extra: Sequence[Tensor] = ()
) -> Tensor:
    """sum_e probs[..., e] * expert_e(x, *extra): every expert on every token.

    x [..., c], probs [..., e] with the same leading dims (broadcast the gate yourself: a
    per-sequence gate [b, e] for x [b, t, c] is probs[:, None, :]).
    """
    if probs.shape[-1] != len(experts):
        raise ValueError(f"probs has {probs.shape[-1]} experts but {len(experts)} experts were given")
    y = None
    for e, expert in enumerate(experts):
        term = probs[..., e, None] * expert(x, *extra)
        y = term if y is None else y + term
    return y


def moe_dispatch(
    x: Tensor,
    index: Tensor,
    weights: Tensor,
    experts: Sequence[Expert],
    extra: Sequence[Tensor] = (),
    *,
    impl: str = "fast",
) -> Tensor:
    """y_n = sum_j weights[n, j] * experts[index[n, j]](x_n, *extra_n), computing only the
    chosen experts. x [n, c], index [n, k] int64 in [0, e), weights [n, k], extra: tensors
    [n, ...]. Returns [n, c_out]."""
    if x.dim() != 2 or index.shape != weights.shape or index.shape[0] != x.shape[0]:
        raise ValueError(
            f"moe_dispatch wants x [n, c], index and weights [n, k]; got x {tuple(x.shape)}, "
            f"index {tuple(index.shape)}, weights {tuple(weights.shape)}"
        )
    if any(t.shape[0] != x.shape[0] for t in extra):
        raise ValueError("every extra tensor needs one row per token of x")
    if impl == "reference":
        return _dispatch_reference(x, index, weights, experts, extra)
    if impl == "fast":
        return _dispatch_sorted(x, index, weights, experts, extra)
    raise ValueError(f"unknown moe dispatch impl {impl!r}; choose one of {DISPATCH_IMPLS}")


def _dispatch_reference(x, index, weights, experts, extra):
    rows = []
    for n in range(x.shape[0]):
        y_n = 0
        for j in range(index.shape[1]):
            expert = experts[int(index[n, j])]
            y_n = y_n + weights[n, j] * expert(x[n : n + 1], *(t[n : n + 1] for t in extra))
        rows.append(y_n)
    return torch.cat(rows)


def _dispatch_sorted(x, index, weights, experts, extra):
    n, k = index.shape
    if n == 0:  # an empty batch: let an expert give the empty output its shape
        return experts[0](x, *extra)
    flat = index.reshape(-1)  # [n k] expert of each assignment
    order = torch.argsort(flat, stable=True)  # assignments grouped by expert
    token = order // k  # [n k] token of each sorted assignment
    w = weights.reshape(-1)[order]
    # One host sync for the split sizes; e is small.
    counts = expert_counts(flat, len(experts)).tolist()
    xs = x.index_select(0, token).split(counts)
    extras = [t.index_select(0, token).split(counts) for t in extra]
    ws = w.split(counts)
    outs = []
    for e, expert in enumerate(experts):
        if counts[e]:
            outs.append(ws[e][:, None] * expert(xs[e], *(chunks[e] for chunks in extras)))
    src = torch.cat(outs)  # [n k, c_out], in sorted order
    return src.new_zeros(n, src.shape[-1]).index_add(0, token, src)


def dense_adaptive_experts(
    x: Tensor,
    probs: Tensor,
    gate1: Tensor,
    gate2: Tensor,
    w1: Tensor,
    v1: Tensor,
    u1: Tensor,
    b1: Tensor | None,
    w2: Tensor,
    v2: Tensor,
    u2: Tensor,
    b2: Tensor | None,
    *,
    impl: str = "fast",
) -> Tensor:
    """sum_e probs[:, e] * expert_e(x) for e low-rank adaptive MLP experts (shapes in the module
    docstring). Returns [n, o]. impl="fast" is pack_adaptive_experts + apply_packed_experts."""
    if impl == "reference":
        return _adaptive_experts_reference(x, probs, gate1, gate2, w1, v1, u1, b1, w2, v2, u2, b2)
    if impl == "fast":
        return apply_packed_experts(
            x, probs, gate1, gate2, pack_adaptive_experts(w1, v1, u1, b1, w2, v2, u2, b2)
        )
    raise ValueError(f"unknown dense_adaptive_experts impl {impl!r}; choose one of {DISPATCH_IMPLS}")


def _adaptive_experts_reference(x, probs, gate1, gate2, w1, v1, u1, b1, w2, v2, u2, b2):
    y = 0
    for e in range(w1.shape[0]):
        h = F.linear(x, w1[e], None if b1 is None else b1[e]) + F.linear(
            F.linear(x, v1[e]) * gate1[:, e], u1[e]
        )
        h = F.gelu(h)
        out = F.linear(h, w2[e], None if b2 is None else b2[e]) + F.linear(
            F.linear(h, v2[e]) * gate2[:, e], u2[e]
        )
        y = y + probs[:, e, None] * out
    return y


def pack_adaptive_experts(w1, v1, u1, b1, w2, v2, u2, b2) -> tuple:
    """The experts' weights in the layout apply_packed_experts reads (a function of the weights
    only: pack once, apply to many inputs while they do not change).

    first [e H + e r, c] (every W1_e, then every V1_e), first_bias [e H + e r] or None,
    u1 [e, r, H], w2 [o, e H] (the W2_e side by side), b2 [e, o] or None, v2 [e, H, r],
    u2 [o, e r]."""
    e, hidden, c = w1.shape
    r = v1.shape[1]
    first = torch.cat([w1.reshape(e * hidden, c), v1.reshape(e * r, c)])
    first_bias = None if b1 is None else torch.cat([b1.reshape(-1), b1.new_zeros(e * r)])
    w2_side = w2.transpose(0, 1).reshape(w2.shape[1], e * hidden)
    u2_side = u2.transpose(0, 1).reshape(u2.shape[1], e * r)
    return first, first_bias, u1.transpose(1, 2), w2_side, b2, v2.transpose(1, 2), u2_side


def apply_packed_experts(x: Tensor, probs: Tensor, gate1: Tensor, gate2: Tensor, packed: tuple) -> Tensor:
    """The fused dense mixture (module docstring) on weights from pack_adaptive_experts."""
    first, first_bias, u1, w2, b2, v2, u2 = packed
    n, (e, r, hidden) = x.shape[0], u1.shape
    # First layers of every expert, and their V_e x, in one matmul: [n, e H + e r].
    pre, xv = F.linear(x, first, first_bias).split([e * hidden, e * r], dim=-1)
    z1 = (xv.view(n, e, r) * gate1).transpose(0, 1)  # [e, n, r]
    low = torch.bmm(z1, u1)  # [e, n, H]: U1_e (g1_e * V1_e x)
    h = F.gelu(pre.view(n, e, hidden) + low.transpose(0, 1))  # [n, e, H]
    p = probs[:, :, None]  # [n, e, 1]
    # sum_e p_e W2_e h_e = [p_1 h_1, ..., p_e h_e] (concatenated features) @ [W2_1, ..., W2_e]^T.
    y = F.linear((p * h).view(n, e * hidden), w2)
    if b2 is not None:
        y = y + probs @ b2
    hv = torch.bmm(h.transpose(0, 1), v2).transpose(0, 1)  # [n, e, r]: V2_e h_e
    z2 = (hv * gate2 * p).reshape(n, e * r)
    return y + F.linear(z2, u2)
