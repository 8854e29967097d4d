"""Hybrid local + global softmax attention (the Autonomic-Layer seed's HybridAttention, fixed).

One set of projections, two attention branches over the same rotary q, k, v, mixed per head
and per token by a learned gate:

    q, k, v = x Wq, x Wk, x Wv                    (rotary on q and k, from ctx.rotary)
    local   = attention(q, k, v) over the last `window` keys, itself included (causal), or
              the keys with |i - j| <= window // 2 (bidirectional)
    global  = attention(q, k, v) over every earlier key (causal) or every key (bidirectional)
    g       = sigmoid(x Wg + bg)                   [b, t, h], one gate per head and token
    y       = (g * local + (1 - g) * global) Wo

x [b, t, c] -> [b, t, c], c = h * d. The gate reads x_t only, so a causal layer stays causal.
Both branches are vectorized over batch and time (seqlab.ops.attention: SDPA or the fp32
eager reference, `impl=`), each sample its own output. When the window covers every key the
two branches are the same attention and it is computed once (y = that attention).

Departures from the seed: its HybridAttention ran nn.MultiheadAttention in a Python loop over
the batch axis, without a causal mask, and broadcast batch element 0's output to every sample;
here both branches are masked attention over [b, h, t, d], and they share one projection of
q, k, v instead of two separate attention blocks (the same parameter count as one softmax
attention layer plus h gates per token).

Saved state: the window (`window_size` buffer; `set_window(w)`) and an attention temperature
(`logit_scale` buffer, float64; `set_logit_scale(s)` multiplies the logits of both branches
by s, the YaRN temperature of seqlab.layers.autonomic), so values a controller reached during
training survive checkpoints, resume, eval and generate. Both also live as Python numbers, so
the forward never reads a tensor (a host sync on GPU); a load_state_dict hook re-syncs them.

Decoding: `init_state(...)` gives a KVState holding every key (the global branch reads them
all); the local branch reads only the last `window` of them, so it forgets what lies beyond
its window and cached decoding equals recomputation. The inputs of seqlab.layers.block.Context
(ctx.padding_mask, ctx.attn_bias, ctx.attn_mask) apply to both branches, as in Attention.
"""

import torch
from einops import rearrange
from torch import Tensor, nn

from seqlab.layers.block import Context
from seqlab.layers.cache import KVState
from seqlab.layers.rotary import apply_rotary
from seqlab.ops.attention import IMPLS, attention


def _check_window(window) -> None:
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(
            f"hybrid attention window must be an int >= 1 (its local branch's span), got {window!r}"
        )


class HybridAttention(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: int,
        *,
        causal: bool = True,
        dropout: float = 0.0,
        bias: bool = False,
        rotary: bool = True,
        impl: str = "sdpa",
    ):
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"hybrid attention dim {dim} must be divisible by num_heads {num_heads} (>= 1)")
        if impl not in IMPLS:
            raise ValueError(f"unknown attention impl {impl!r}; choose one of {IMPLS}")
        _check_window(window)
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.causal = causal
        self.use_rotary = rotary
        self.dropout = dropout
        self.impl = impl
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.gate = nn.Linear(dim, num_heads)
        self.proj = nn.Linear(dim, dim, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)
        self.register_buffer("window_size", torch.tensor(0, dtype=torch.long))
        self.register_buffer("logit_scale", torch.tensor(1.0, dtype=torch.float64))
        self.set_window(window)
        self.scale = 1.0
        self.register_load_state_dict_post_hook(lambda module, _: module._sync())

    def extra_repr(self) -> str:
        kind = "causal" if self.causal else "bidirectional"
        return f"{kind}, heads={self.num_heads}, head_dim={self.head_dim}, window={self.window}, {self.impl}"

    def _apply(self, fn, recurse=True):
        # model.to(torch.bfloat16) would round the temperature; only its device may change.
        scale = self.logit_scale
        super()._apply(fn, recurse)
        if self.logit_scale.dtype != torch.float64:
            self.logit_scale = scale.to(self.logit_scale.device)
        return self

    def _sync(self) -> None:
        self.window = int(self.window_size)
        self.scale = float(self.logit_scale)

    @torch.no_grad()
    def set_window(self, window: int) -> None:
        """The local branch attends to the last `window` keys from the next call on."""
        _check_window(window)
        self.window_size.fill_(window)
        self.window = window

    @torch.no_grad()
    def set_logit_scale(self, scale: float) -> None:
        """Multiply the attention logits of both branches by `scale` (1 = plain attention)."""
        if not scale > 0:
            raise ValueError(f"attention logit scale must be > 0, got {scale}")
        self.logit_scale.fill_(float(scale))
        self.scale = float(scale)

    def init_state(self, batch_size: int, capacity: int, device=None, dtype=None) -> KVState:
        if not self.causal:
            raise ValueError(
                "bidirectional hybrid attention cannot decode token by token: its queries see the future"
            )
        return KVState(batch_size, self.num_heads, self.head_dim, capacity, device, dtype)

    def _covers_all(self, t_k: int) -> bool:
        """Whether the local window reaches every key of every query (then local == global)."""
        return self.window >= t_k if self.causal else self.window // 2 >= t_k - 1

    def forward(self, x: Tensor, ctx: Context | None = None, state: KVState | None = None) -> Tensor:
        ctx = ctx if ctx is not None else Context()
        B, T, C = x.size()
        q, k, v = rearrange(self.qkv(x), "b t (three h d) -> three b h t d", three=3, h=self.num_heads)
        if self.use_rotary and ctx.rotary is not None:
            cos, sin = (table.to(q.dtype) for table in ctx.rotary)  # [b|1, 1, t, d]
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if self.scale != 1.0:
            q = q * self.scale  # scales q . k, i.e. every logit of both branches
        key_mask = ctx.padding_mask
        if state is not None:
            k, v, key_mask = state.update(k, v, key_mask)  # [b, h, t_k, d]: cached + new
        t_k = k.shape[2]
        bias, mask = ctx.attn_bias, ctx.attn_mask
        # When decoding, the bias and mask cover every key consumed; take the ones held.
        if bias is not None and bias.shape[-1] != t_k:
            bias = bias[..., -t_k:]
        if mask is not None and mask.shape[-1] != t_k:
            mask = mask[..., -t_k:]
        dropout_p = self.dropout if self.training else 0.0
        common = dict(causal=self.causal, dropout_p=dropout_p, impl=self.impl)
        full = attention(q, k, v, key_mask=key_mask, mask=mask, bias=bias, **common)  # [b, h, t, d]
        if self._covers_all(t_k):
            # The same attention; the gate still takes part, so its parameters are always used
            # (DDP expects a gradient for each) and the output is the same function of x.
            local = full
        else:
            drop = max(t_k - T - self.window + 1, 0) if self.causal else 0
            # Keys older than the window are invisible to every query of this call: skip them.
            local = attention(
                q,
                k[:, :, drop:],
                v[:, :, drop:],
                window=self.window,
                key_mask=key_mask[:, drop:] if key_mask is not None else None,
                mask=mask[..., drop:] if mask is not None else None,
                bias=bias[..., drop:] if bias is not None else None,
                **common,
            )
        g = rearrange(torch.sigmoid(self.gate(x)), "b t h -> b h t 1").to(full.dtype)
        y = g * local + (1 - g) * full
        return self.resid_dropout(self.proj(rearrange(y, "b h t d -> b t (h d)")))


__all__ = ["HybridAttention"]
