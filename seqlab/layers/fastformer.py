"""Fastformer additive-attention mixer (Wu et al. 2021), causal and windowed as in LEAP's repo.

The LEAP repository's legacy model (spec specs/leap.md, "Fastformer"). Per head:

    alpha_t = exp(Norm(Q_t) . Norm(w_q) * c_r / d)        pooling weights of the queries
    G_t     = window average of Q under alpha             (pooled query, causal window of t)
    P_t     = G_t * K_t                                   (elementwise)
    beta_t  = exp(Norm(P_t) . Norm(w_k) * c_r / d)
    H_t     = window average of P under beta              (pooled key)
    out_t   = W_o (H_t * V_t) + Q_t                       (residual to the queries)

The window averages are LEAP's focus sums (seqlab.ops.leap.leap_window_pool), so training is
parallel with O(t) work and decoding is recurrent with O(1) per token. Shapes: x [b, t, c].

Departures from Wu et al.: the global softmax pooling becomes a causal windowed one, and the
logits use the rescaled normalized dot product (bounded by c_r, so sums stay finite in fp32).
"""

import torch
from einops import rearrange
from torch import nn

from seqlab.ops.leap import (
    LeapState,
    alibi_decay,
    leap_logit_exp,
    leap_pool_step,
    leap_state_init,
    leap_state_prefill,
    leap_window_pool,
)


class FastformerAttention(nn.Module):
    def __init__(
        self,
        hidden_size: int,
        n_head: int,
        window_size: int | None = None,
        dropout: float = 0.1,
        focus: str = "exp",
        rescale: float | None = 10.0,
        decay: bool = False,
        eps: float = 1e-5,
    ):
        super().__init__()
        if hidden_size % n_head:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by n_head {n_head}")
        self.num_heads = n_head
        self.head_dim = hidden_size // n_head
        self.window = window_size
        # The mixer signature is shared with MultiheadLeap; Fastformer's pooling only has the
        # rescaled exp form.
        if focus != "exp" or rescale is None:
            raise ValueError(f"Fastformer pools with focus='exp' and a rescale, got {focus!r}, {rescale!r}")
        self.rescale = float(rescale)
        self.eps = eps
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=False)
        self.w_q = nn.Parameter(torch.randn(n_head, self.head_dim) / self.head_dim**0.5)
        self.w_k = nn.Parameter(torch.randn(n_head, self.head_dim) / self.head_dim**0.5)
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("decay", alibi_decay(n_head) if decay else None, persistent=False)

    def _pool_weights(self, x: torch.Tensor, w: torch.Tensor, attention_mask) -> torch.Tensor:
        logit = leap_logit_exp(x, w, self.rescale)  # Norm(x) . Norm(w) * rescale / d
        weights = torch.exp(self.dropout(logit))  # [b, t, h], <= exp(rescale)
        if attention_mask is not None:
            weights = weights * attention_mask.to(weights.dtype).unsqueeze(-1)
        return weights

    def _split(self, x):
        q, k, v = rearrange(self.qkv(x), "b t (three h d) -> three b t h d", three=3, h=self.num_heads)
        return self.dropout(q), k, self.dropout(v)

    def _merge(self, q, u):
        return self.proj(rearrange(u, "b t h d -> b t (h d)")) + rearrange(q, "b t h d -> b t (h d)")

    def forward(self, x, attention_mask=None, rotary=None, return_maps=False):
        if rotary is not None or return_maps:
            raise ValueError("the Fastformer mixer supports neither rotary positions nor focus maps")
        q, k, v = self._split(x)
        alpha = self._pool_weights(q, self.w_q, attention_mask)
        pooled_q = leap_window_pool(alpha, q, self.window, decay=self.decay, eps=self.eps)
        p = pooled_q * k
        beta = self._pool_weights(p, self.w_k, attention_mask)
        pooled_k = leap_window_pool(beta, p, self.window, decay=self.decay, eps=self.eps)
        return self._merge(q, pooled_k * v)

    def init_state(self, batch_size: int, device=None) -> tuple[LeapState, LeapState]:
        return tuple(
            leap_state_init(
                batch_size,
                self.num_heads,
                self.head_dim,
                self.window,
                device,
                decay=self.decay,
                num_streams=1,
            )
            for _ in range(2)
        )

    def step(self, x, state, attention_mask=None, rotary=None):
        """Recurrent form over x [b, t, c], token by token; equals forward on the same tokens."""
        if rotary is not None:
            raise ValueError("the Fastformer mixer does not support rotary positions")
        q_state, k_state = state
        q, k, v = self._split(x)
        alpha = self._pool_weights(q, self.w_q, attention_mask)
        if q_state.count == 0 and x.shape[1] > 1:
            # A prompt into empty states: parallel outputs, then both states take the chunk.
            pooled_q = leap_window_pool(alpha, q, self.window, decay=self.decay, eps=self.eps)
            p = pooled_q * k
            beta = self._pool_weights(p, self.w_k, attention_mask)
            pooled_k = leap_window_pool(beta, p, self.window, decay=self.decay, eps=self.eps)
            leap_state_prefill(q_state, alpha, q)
            leap_state_prefill(k_state, beta, p)
            return self._merge(q, pooled_k * v)
        outs = []
        for i in range(x.shape[1]):
            pooled_q = leap_pool_step(q_state, alpha[:, i], q[:, i], self.eps)
            p = pooled_q * k[:, i]
            mask_i = None if attention_mask is None else attention_mask[:, i : i + 1]
            beta = self._pool_weights(p[:, None], self.w_k, mask_i)
            pooled_k = leap_pool_step(k_state, beta[:, 0], p, self.eps)
            outs.append(pooled_k * v[:, i])
        return self._merge(q, torch.stack(outs, dim=1))
