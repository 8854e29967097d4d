"""Multi-head attention over a 2D grid: local (neighbourhood) or global, with 2D rotary positions.

    q, k, v = x Wq, x Wk, x Wv                      x [b, gy, gx, c], c = h * d
    q, k = rot2d(q), rot2d(k)                       axial 2D RoPE (seqlab.layers.rotary2d)
    y = attn(q, k, v) Wo

window=k (odd): each cell attends to the k x k neighbourhood around it, shifted inward at the
borders so that every cell sees a full window (seqlab.ops.local2d, NATTEN's semantics). This
replaces HeptapodLM's parameter-free, single-head local attention that looped over cells in
Python. window=None: every cell attends to every cell of the grid (the "global" layers of a
local/global hybrid), through seqlab.ops.attention over the grid in raster order.

causal=True: a cell sees only the cells of its window (or grid) at or before it in raster order,
for raster-order generation.

Inputs from the seqlab.layers.block.Context: `ctx.rotary`, the (cos, sin) tables [1, 1, gy*gx, d]
of the grid's cells in raster order (Rotary2D), applied when `rotary=True`; `ctx.padding_mask`
[b, gy, gx] (True = a real cell) excludes padding keys; `ctx.maps`, when a list, receives one
dict per call: {"attention": [b, h, gy, gx, gy, gx] probabilities (query cell, key cell),
"window": k or None}.

A sequence x [b, t, c] is read as a grid of one row (so the layer also composes in 1D stacks).
The layer cannot decode cell by cell (it keeps no state).
"""

from einops import rearrange
from torch import Tensor, nn

from seqlab.layers.block import Context
from seqlab.layers.rotary import apply_rotary
from seqlab.ops.attention import attention
from seqlab.ops.local2d import IMPLS, check_window, local2d_attention, local2d_weights


class Local2DAttention(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: int | None = 7,
        *,
        causal: bool = False,
        rotary: bool = True,
        dropout: float = 0.0,
        bias: bool = False,
        impl: str = "tiled",
    ):
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"2D attention dim {dim} must be divisible by num_heads {num_heads} (>= 1)")
        if window is not None:
            check_window(window)
        if impl not in IMPLS:
            raise ValueError(f"unknown local 2D attention impl {impl!r}; choose one of {IMPLS}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window = window
        self.causal = causal
        self.use_rotary = rotary
        self.dropout = dropout
        self.impl = impl
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def extra_repr(self) -> str:
        kind = "global" if self.window is None else f"window={self.window}"
        return f"{kind}, causal={self.causal}, heads={self.num_heads}, head_dim={self.head_dim}, {self.impl}"

    def forward(self, x: Tensor, ctx: Context | None = None, state=None) -> Tensor:
        if state is not None:
            raise ValueError("2D grid attention cannot decode cell by cell: it keeps no decoding state")
        ctx = ctx if ctx is not None else Context()
        sequence = x.dim() == 3
        grid = x[:, None] if sequence else x  # [b, gy, gx, c]
        b, gy, gx, _ = grid.shape
        q, k, v = rearrange(
            self.qkv(grid), "b gy gx (three h d) -> three b h (gy gx) d", three=3, h=self.num_heads
        )
        if self.use_rotary and ctx.rotary is not None:
            cos, sin = (table.to(q.dtype) for table in ctx.rotary)  # [1, 1, gy*gx, d]
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        key_mask = ctx.padding_mask
        if key_mask is not None:
            key_mask = key_mask.bool().reshape(b, gy, gx)
        dropout_p = self.dropout if self.training else 0.0
        if self.window is None:
            y = attention(
                q,
                k,
                v,
                causal=self.causal,
                key_mask=None if key_mask is None else key_mask.reshape(b, gy * gx),
                dropout_p=dropout_p,
                impl="eager" if self.impl == "eager" else "sdpa",
            )
            y = rearrange(y, "b h (gy gx) d -> b gy gx (h d)", gy=gy)
        else:
            q, k, v = (rearrange(t, "b h (gy gx) d -> b h gy gx d", gy=gy) for t in (q, k, v))
            y = local2d_attention(
                q,
                k,
                v,
                window=self.window,
                causal=self.causal,
                key_mask=key_mask,
                dropout_p=dropout_p,
                impl=self.impl,
            )
            y = rearrange(y, "b h gy gx d -> b gy gx (h d)")
        if ctx.maps is not None:
            grid_shape = (b, self.num_heads, gy, gx, self.head_dim)
            weights = local2d_weights(
                q.reshape(grid_shape).detach(),
                k.reshape(grid_shape).detach(),
                window=self.window,
                causal=self.causal,
                key_mask=key_mask,
            )
            ctx.maps.append({"attention": weights, "window": self.window})
        y = self.resid_dropout(self.proj(y))
        return y[:, 0] if sequence else y


__all__ = ["Local2DAttention"]
