"""Multi-head causal self-attention through `scaled_dot_product_attention`.

Options: rotary positions, an optional sliding window (each query sees the last `window`
keys, itself included), a KV cache for decoding. x [b, t, c] -> [b, t, c], c = h * d.
"""

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from seqlab.layers.cache import KVCache
from seqlab.layers.rotary import RotaryEmbedding


def causal_window_mask(
    t_q: int, t_k: int, window: int | None, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Boolean mask [t_q, t_k], True = may attend. Queries are the last t_q of t_k positions."""
    q_pos = torch.arange(t_k - t_q, t_k, device=device)[:, None]
    k_pos = torch.arange(t_k, device=device)[None, :]
    mask = k_pos <= q_pos
    if window is not None:
        mask &= q_pos - k_pos < window
    return mask


class CausalSelfAttention(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = False,
        window: int | None = None,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if window is not None and window < 1:
            raise ValueError(f"attention window must be >= 1 or None, got {window}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window = window
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def _attend(self, q, k, v, attn_mask, is_causal):
        return F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal,
        )

    def forward(
        self,
        x: torch.Tensor,
        rotary: RotaryEmbedding | None = None,
        cache: KVCache | None = None,
        layer_idx: int = 0,
    ) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = rearrange(self.qkv(x), "b t (three h d) -> three b h t d", three=3, h=self.num_heads)
        offset = cache.length if cache is not None else 0
        if rotary is not None:
            q, k = rotary(q, k, offset)
        if cache is not None:
            k, v = cache.update(layer_idx, k, v)
        t_k = k.shape[2]
        if self.window is not None and t_k - T > self.window:
            # Keys older than the window are invisible to every query of this call: drop them.
            k, v = k[:, :, t_k - T - self.window + 1 :], v[:, :, t_k - T - self.window + 1 :]
            t_k = k.shape[2]
        attn_mask, is_causal = None, False
        if self.window is None and t_k == T:
            is_causal = T > 1
        elif self.window is not None or T > 1:
            attn_mask = causal_window_mask(T, t_k, self.window, x.device)
        cpu_low_precision = q.device.type == "cpu" and (
            q.dtype in (torch.bfloat16, torch.float16) or torch.is_autocast_enabled("cpu")
        )
        if cpu_low_precision:
            # torch's CPU flash-attention kernel is ~5x slower forward + backward in bf16 than in
            # fp32 (measured: b=12, h=4, t=64, d=32, torch 2.13), so on CPU attention runs in fp32
            # (autocast would cast it back down) while the projections stay in bf16.
            with torch.autocast("cpu", enabled=False):
                y = self._attend(q.float(), k.float(), v.float(), attn_mask, is_causal).to(q.dtype)
        else:
            y = self._attend(q, k, v, attn_mask, is_causal)
        return self.resid_dropout(self.proj(rearrange(y, "b h t d -> b t (h d)")))
