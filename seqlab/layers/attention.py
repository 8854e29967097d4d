"""Multi-head softmax attention: the one attention mixer of seqlab (Vaswani et al. 2017).

    q, k, v = x Wq, x Wk, x Wv        (cross=True: k, v = memory Wk, memory Wv)
    y = softmax(q k^T / sqrt(d) + bias, masked) v Wo

x [b, t, c] -> [b, t, c], h heads of width d = c / h (or `head_dim`, T5's d_kv: the heads
then span h * d, projected back to c). `scale` replaces 1 / sqrt(d) on the logits (T5: 1.0).
One class covers the forms the models need:

- causal (decoders) or bidirectional (encoders, masked modeling);
- a sliding window: causal, each query sees the last `window` keys, itself included;
  bidirectional, keys with |i - j| <= window // 2. `set_window(w)` changes it at run time
  (None = full attention) and the size is saved state (the buffer `window_size`, 0 = none),
  so a window a controller reached during training survives save, resume and eval;
- the inputs of seqlab.layers.block.Context: rotary tables (`ctx.rotary`, applied to q and k
  of self-attention unless `rotary=False`), key padding (`ctx.padding_mask` [b, t], 1 = real
  token), an additive bias (`ctx.attn_bias` [b|1, h|1, t, t_k], T5's relative positions) and
  a boolean mask (`ctx.attn_mask`, same shape, True = may attend). A query that can see no key
  gives 0. When decoding, the bias and mask cover every key consumed so far (t_k = cached +
  new); the layer takes the columns of the keys it still holds (the rightmost);
- cross-attention (`cross=True`): keys and values from `ctx.memory` [b, s, c] masked by
  `ctx.memory_mask` [b, s]; no causality, window, rotary, bias or mask (those describe the
  self-attention of the same Context). Its output at t reads only x_t and the memory, so the
  layer counts as causal in a decoder.

Decoding: `init_state(...)` gives a KVState (self) or CrossKVState (cross); a forward with
it appends this call's keys and values and attends over everything held, so feeding a
sequence in pieces gives the logits of one full forward. A windowed layer forgets keys older
than its window (memory stays O(window)); widening the window in the middle of a decode
cannot bring those back. The math is seqlab.ops.attention: impl="sdpa" (PyTorch's fused
kernels, the default) or impl="eager" (the fp32 reference).
"""

import torch
from einops import rearrange
from torch import Tensor, nn

from seqlab.layers.block import Context
from seqlab.layers.cache import CrossKVState, KVState
from seqlab.layers.rotary import apply_rotary
from seqlab.ops.attention import IMPLS, attention


def _check_window(window) -> None:
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise ValueError(f"attention window must be an int >= 1 or None (full attention), got {window!r}")


class Attention(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        causal: bool = True,
        window: int | None = None,
        dropout: float = 0.0,
        bias: bool = False,
        cross: bool = False,
        rotary: bool = True,
        impl: str = "sdpa",
        head_dim: int | None = None,
        scale: float | None = None,
    ):
        super().__init__()
        if num_heads < 1 or (head_dim is None and dim % num_heads):
            raise ValueError(f"attention dim {dim} must be divisible by num_heads {num_heads} (>= 1)")
        if head_dim is not None and (
            isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 1
        ):
            raise ValueError(
                f"attention head_dim must be an int >= 1 or None (dim // num_heads), got {head_dim!r}"
            )
        if impl not in IMPLS:
            raise ValueError(f"unknown attention impl {impl!r}; choose one of {IMPLS}")
        _check_window(window)
        if cross and window is not None:
            raise ValueError("cross-attention reads the whole memory: it takes no window (leave window=None)")
        self.num_heads = num_heads
        self.head_dim = head_dim or dim // num_heads
        inner = num_heads * self.head_dim
        self.scale = scale
        self.cross = cross
        self.causal = True if cross else causal
        self.use_rotary = rotary and not cross
        self.dropout = dropout
        self.impl = impl
        if cross:
            self.q = nn.Linear(dim, inner, bias=bias)
            self.kv = nn.Linear(dim, 2 * inner, bias=bias)
        else:
            self.qkv = nn.Linear(dim, 3 * inner, bias=bias)
        self.proj = nn.Linear(inner, dim, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)
        # The window lives twice: a buffer, so it is saved with the model, and a python int,
        # so the forward never reads a tensor (a host sync on GPU). The post hook re-syncs
        # the int after load_state_dict.
        self.window = None
        if not cross:
            self.register_buffer("window_size", torch.tensor(0, dtype=torch.long))
            self.set_window(window)
            self.register_load_state_dict_post_hook(lambda module, _: module._sync_window())

    def extra_repr(self) -> str:
        kind = "cross" if self.cross else "causal" if self.causal else "bidirectional"
        return f"{kind}, heads={self.num_heads}, head_dim={self.head_dim}, window={self.window}, {self.impl}"

    def _sync_window(self) -> None:
        self.window = int(self.window_size) or None

    @torch.no_grad()
    def set_window(self, window: int | None) -> None:
        """Attend to the last `window` keys (None = full attention), from the next call on."""
        if self.cross:
            raise ValueError("cross-attention has no window")
        _check_window(window)
        self.window_size.fill_(window or 0)
        self.window = window

    def init_state(self, batch_size: int, capacity: int, device=None, dtype=None):
        if self.cross:
            return CrossKVState()
        if not self.causal:
            raise ValueError(
                "bidirectional attention cannot decode token by token: its queries see the future"
            )
        return KVState(batch_size, self.num_heads, self.head_dim, capacity, device, dtype)

    def forward(self, x: Tensor, ctx: Context | None = None, state=None) -> Tensor:
        ctx = ctx if ctx is not None else Context()
        if self.cross:
            y = self._cross(x, ctx, state)
        else:
            y = self._self(x, ctx, state)
        return self.resid_dropout(self.proj(rearrange(y, "b h t d -> b t (h d)")))

    def _self(self, x: Tensor, ctx: Context, state: KVState | None) -> Tensor:
        B, T, C = x.size()
        q, k, v = rearrange(self.qkv(x), "b t (three h d) -> three b h t d", three=3, h=self.num_heads)
        if self.use_rotary and ctx.rotary is not None:
            cos, sin = (table.to(q.dtype) for table in ctx.rotary)  # [b|1, 1, t, d]
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        key_mask = ctx.padding_mask
        if state is not None:
            k, v, key_mask = state.update(k, v, key_mask)  # [b, h, t_k, d]: cached + new
        t_k = k.shape[2]
        if self.causal and self.window is not None and t_k - T >= self.window:
            # Keys older than the window are invisible to every query of this call: drop them.
            drop = t_k - T - self.window + 1
            k, v = k[:, :, drop:], v[:, :, drop:]
            key_mask = key_mask[:, drop:] if key_mask is not None else None
        bias, mask = ctx.attn_bias, ctx.attn_mask
        if bias is not None and bias.shape[-1] != k.shape[2]:
            bias = bias[..., -k.shape[2] :]
        if mask is not None and mask.shape[-1] != k.shape[2]:
            mask = mask[..., -k.shape[2] :]
        y = attention(
            q,
            k,
            v,
            causal=self.causal,
            window=self.window,
            key_mask=key_mask,
            mask=mask,
            bias=bias,
            dropout_p=self.dropout if self.training else 0.0,
            impl=self.impl,
            scale=self.scale,
        )
        if state is not None and self.window is not None:
            state.forget(self.window - 1)  # the next query (at `length`) reaches back window - 1
        return y

    def _cross(self, x: Tensor, ctx: Context, state: CrossKVState | None) -> Tensor:
        q = rearrange(self.q(x), "b t (h d) -> b h t d", h=self.num_heads)
        if state is not None and state.k is not None:
            k, v, key_mask = state.k, state.v, state.key_mask
        else:
            if ctx.memory is None:
                raise ValueError("cross-attention needs ctx.memory, the sequence it attends to [b, s, c]")
            k, v = rearrange(self.kv(ctx.memory), "b s (two h d) -> two b h s d", two=2, h=self.num_heads)
            key_mask = ctx.memory_mask.bool() if ctx.memory_mask is not None else None
            if state is not None:
                state.k, state.v, state.key_mask = k, v, key_mask
        if state is not None:
            state.length += x.shape[1]
        return attention(
            q,
            k,
            v,
            key_mask=key_mask,
            dropout_p=self.dropout if self.training else 0.0,
            impl=self.impl,
            scale=self.scale,
        )


__all__ = ["Attention"]
