"""Rotary position embedding (RoFormer, Su et al. 2021), "rotate half" layout as in GPT-NeoX/LLaMA.

Shapes: q, k [b, h, t, d] with d even; cos/sin buffers [max_seq_len, d].
`set_base()` recomputes the frequency buffers in place, so a controller (the autonomic
callback) can change the RoPE base of a live model without rebuilding it or its optimizer.
"""

import torch
from torch import nn


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, max_seq_len: int = 2048, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embedding needs an even head_dim, got {head_dim}")
        self.head_dim = head_dim
        self.base = float(base)
        # Non-persistent: derived from (base, head_dim), so checkpoints stay small and a
        # changed base is never silently overwritten by stale buffers on load.
        self.register_buffer("cos", torch.empty(0), persistent=False)
        self.register_buffer("sin", torch.empty(0), persistent=False)
        self._build(max_seq_len)

    def _build(self, length: int) -> None:
        device = self.cos.device
        inv_freq = 1.0 / (
            self.base
            ** (torch.arange(0, self.head_dim, 2, device=device, dtype=torch.float64) / self.head_dim)
        )
        t = torch.arange(length, device=device, dtype=torch.float64)
        freqs = torch.outer(t, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        if self.cos.shape == emb.shape:  # same length: overwrite the buffers in place
            self.cos.copy_(emb.cos())
            self.sin.copy_(emb.sin())
        else:
            self.cos = emb.cos().float()
            self.sin = emb.sin().float()

    @torch.no_grad()
    def set_base(self, base: float) -> None:
        """Change the RoPE base and recompute cos/sin in place (same length, same device)."""
        if base <= 1:
            raise ValueError(f"RoPE base must be > 1, got {base}")
        self.base = float(base)
        self._build(self.cos.shape[0])

    def forward(self, q: torch.Tensor, k: torch.Tensor, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        t = q.shape[-2]
        if offset + t > self.cos.shape[0]:
            # Grow on demand (generation past the training context): positions are relative,
            # so longer tables only extrapolate, they never change earlier positions.
            with torch.no_grad():
                self._build(max(offset + t, 2 * self.cos.shape[0]))
        cos = self.cos[offset : offset + t].to(q.dtype)
        sin = self.sin[offset : offset + t].to(q.dtype)
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
