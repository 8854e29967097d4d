"""Fastformer additive-attention mixer (Wu et al. 2021), causal and windowed as in LEAP's repo.

The LEAP repository's legacy model (seed 001, mtanghu/LEAP). Per head:

    alpha_t = exp(Norm(Q_t) . Norm(w_q) * c_r / d)        pooling weights of the queries
    G_t     = window average of Q under alpha             (pooled query, causal window of t)
    P_t     = G_t * K_t                                   (elementwise)
    beta_t  = exp(Norm(P_t) . Norm(w_k) * c_r / d)
    H_t     = window average of P under beta              (pooled key)
    out_t   = W_o (H_t * V_t) + Q_t                       (residual to the queries)

The window averages are LEAP's focus sums (seqlab.ops.leap.leap_window_pool), so training is
parallel with O(t) work and decoding is recurrent with O(1) per token. Shapes: x [b, t, c],
c = h * d.

It follows the mixer protocol of seqlab.layers.block: `forward(x, ctx, state=None)` reads the
padding mask (ctx.padding_mask, [b, t], 1 = token: pads get zero pooling weight); with the
`FastformerState` made by `init_state` the call is the recurrent form and advances the state
in place. It reads no position tables: its positions are the model's learned embedding or the
decay of its sums (decay=True), so ctx.rotary is not used; an attention bias or mask in the
context is refused (the pooling has no pairwise scores).

Departures from Wu et al.: the global softmax pooling becomes a causal windowed one, and the
logits use the rescaled normalized dot product (bounded by c_r, so sums stay finite in fp32).
"""

import torch
from einops import rearrange
from torch import Tensor, nn

from seqlab.layers.block import Context
from seqlab.layers.leap import check_no_pairwise_mask, seed_alias, state_dtype
from seqlab.ops.leap import (
    LeapState,
    alibi_decay,
    leap_logit_exp,
    leap_pool_step,
    leap_state_init,
    leap_state_prefill,
    leap_window_pool,
)


class FastformerState:
    """Decoding state of one Fastformer layer: the pooling sums of the queries (`query`) and
    of the query-key products (`key`), one single-stream LeapState each.

    Per-layer state protocol of seqlab.layers.cache: `length`, `map_batch(fn)`, `reset()`.
    """

    def __init__(self, query: LeapState, key: LeapState):
        self.query, self.key = query, key

    @property
    def length(self) -> int:
        return self.query.length

    def map_batch(self, fn) -> None:
        self.query.map_batch(fn)
        self.key.map_batch(fn)

    def reset(self) -> None:
        self.query.reset()
        self.key.reset()


class FastformerAttention(nn.Module):
    """dim, num_heads (the seed's hidden_size, n_head), window (window_size): W or None for
    global. rescale: c_r of the pooling logits (10 in LEAP's repo). decay=True: the "decay"
    positions (token j weighs gamma_h^(t-j) in the pooled sums of head h)."""

    def __init__(
        self,
        dim: int | None = None,
        num_heads: int | None = None,
        window: int | None = None,
        dropout: float = 0.1,
        *,
        rescale: float = 10.0,
        decay: bool = False,
        eps: float = 1e-5,
        hidden_size: int | None = None,
        n_head: int | None = None,
        window_size: int | None = None,
    ):
        super().__init__()
        dim = seed_alias("dim", dim, "hidden_size", hidden_size)
        num_heads = seed_alias("num_heads", num_heads, "n_head", n_head)
        window = seed_alias("window", window, "window_size", window_size)
        if dim is None or num_heads is None:
            raise ValueError("FastformerAttention needs dim (hidden_size) and num_heads (n_head)")
        if num_heads < 1 or dim % num_heads:
            raise ValueError(
                f"dim (hidden_size) {dim} must be divisible by num_heads (n_head) {num_heads} >= 1"
            )
        if window is not None and window < 1:
            raise ValueError(f"window (window_size) must be >= 1 or None (global), got {window}")
        if not rescale > 0:
            raise ValueError(f"Fastformer's pooling rescale must be > 0 (LEAP's repo uses 10), got {rescale}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window = window
        self.rescale = float(rescale)
        self.eps = eps
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.w_q = nn.Parameter(torch.randn(num_heads, self.head_dim) / self.head_dim**0.5)
        self.w_k = nn.Parameter(torch.randn(num_heads, self.head_dim) / self.head_dim**0.5)
        self.proj = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("decay", alibi_decay(num_heads) if decay else None, persistent=False)

    def _pool_weights(self, x: Tensor, w: Tensor, padding_mask: Tensor | None) -> Tensor:
        logit = leap_logit_exp(x, w, self.rescale)  # Norm(x) . Norm(w) * rescale / d
        weights = torch.exp(self.dropout(logit))  # [b, t, h], <= exp(rescale)
        if padding_mask is not None:
            weights = weights * padding_mask.to(weights.dtype).unsqueeze(-1)
        return weights

    def _pool(self, weights: Tensor, x: Tensor) -> Tensor:
        return leap_window_pool(weights, x, self.window, decay=self.decay, eps=self.eps)

    def forward(self, x: Tensor, ctx: Context | None = None, state: FastformerState | None = None) -> Tensor:
        """x [b, t, c] -> [b, t, c]: the parallel form, or with `state` the recurrent one."""
        ctx = ctx if ctx is not None else Context()
        check_no_pairwise_mask(ctx, "Fastformer")
        mask = ctx.padding_mask
        q, k, v = rearrange(self.qkv(x), "b t (three h d) -> three b t h d", three=3, h=self.num_heads)
        q, v = self.dropout(q), self.dropout(v)
        alpha = self._pool_weights(q, self.w_q, mask)
        if state is not None and not (state.length == 0 and x.shape[1] > 1):
            u = self._steps(q, k, v, alpha, mask, state)
        else:
            pooled_q = self._pool(alpha, q)
            p = pooled_q * k
            beta = self._pool_weights(p, self.w_k, mask)
            u = self._pool(beta, p) * v
            if state is not None:
                # A prompt into empty states: parallel outputs, then both states take the chunk.
                leap_state_prefill(state.query, alpha, q)
                leap_state_prefill(state.key, beta, p)
        return self.proj(rearrange(u, "b t h d -> b t (h d)")) + rearrange(q, "b t h d -> b t (h d)")

    def _steps(self, q, k, v, alpha, mask, state: FastformerState) -> Tensor:
        """The recurrent form, token by token: H_t * V_t [b, t, h, d]; equals the parallel form."""
        outs = []
        for i in range(q.shape[1]):
            pooled_q = leap_pool_step(state.query, alpha[:, i], q[:, i], self.eps)
            p = pooled_q * k[:, i]
            beta = self._pool_weights(p[:, None], self.w_k, None if mask is None else mask[:, i : i + 1])
            outs.append(leap_pool_step(state.key, beta[:, 0], p, self.eps) * v[:, i])
        return torch.stack(outs, dim=1)

    def init_state(
        self, batch_size: int, capacity: int | None = None, device=None, dtype: torch.dtype | None = None
    ) -> FastformerState:
        """An empty recurrent state (capacity is ignored: the state does not grow with t)."""
        query, key = (
            leap_state_init(
                batch_size,
                self.num_heads,
                self.head_dim,
                self.window,
                device,
                state_dtype(dtype),
                decay=self.decay,
                num_streams=1,
            )
            for _ in range(2)
        )
        return FastformerState(query, key)


__all__ = ["FastformerAttention", "FastformerState"]
