"""Mixture-of-experts routing and dispatch: dense combination, top-k gates, sparse dispatch.

Given router probabilities g [n, e] over e experts for n tokens (rows):

    dense:  y_n = sum_e g_ne expert_e(x_n)                           every expert on every token
    top-k:  (w_n, i_n) = top-k of g_n, w_n renormalized to sum to 1
            y_n = sum_{j < k} w_nj expert_{i_nj}(x_n)               only k experts per token

`moe_dispatch` computes the top-k form and runs each expert ONLY on the tokens routed to it.
impl="reference" loops over tokens and slots (one expert call per token and slot: the
spec, readable, slow); impl="fast" sorts the n k assignments by expert (stable argsort),
gathers each expert's tokens with one index_select, calls each used expert once on its
contiguous slice, and scatters the weighted outputs back with one index_add. Both are tested
equal on outputs and gradients.

Experts are callables `expert(x_rows, *extra_rows) -> y_rows`: `extra` holds per-token tensors
gathered along with x (the adapt input of adaptive experts, one row per token).

Shapes: x [n, c] (tokens flattened), probs / weights [n, e] / [n, k], index [n, k] (int64),
expert outputs [m, c_out].
"""

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["DISPATCH_IMPLS", "dense_combine", "expert_counts", "moe_dispatch", "top_k_gates"]

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
