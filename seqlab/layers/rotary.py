"""Rotary position embedding (RoFormer, Su et al. 2021), "rotate half" layout as in GPT-NeoX/LLaMA.

Positions are a tensor, so offsets (decoding), left padding and 2D grids need no special
case: `RotaryEmbedding(head_dim)(positions)` gives the (cos, sin) tables of those positions,
computed once per model forward, and `apply_rotary(x, cos, sin)` rotates queries or keys.
A 2D axial rotary is two of these tables, one per axis, concatenated along d.

    theta_i = base^(-2i / d),  i < d/2        angle(p, i) = p * theta_i
    rot(x)_p = x_p * cos(angle(p)) + rotate_half(x_p) * sin(angle(p))

so q_p . k_s depends only on p - s. Shapes: positions [t] or [b, t] -> cos, sin
[1 or b, 1, t, d]; x [b, h, t, d] (or anything that broadcasts with the tables).

The base is saved state (a persistent buffer): `set_base()` recomputes the tables in place,
so a controller can change the RoPE base of a live model, and a checkpoint restores the base
that training reached (the tables are rebuilt on load).
"""

import torch
from torch import Tensor, nn


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x [..., t, d] by the tables cos, sin (broadcastable to x)."""
    return x * cos + rotate_half(x) * sin


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, max_seq_len: int = 2048, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embedding needs an even head_dim, got {head_dim}")
        if base <= 1:
            raise ValueError(f"RoPE base must be > 1, got {base}")
        self.head_dim = head_dim
        self.register_buffer("base_value", torch.tensor(float(base), dtype=torch.float64))
        # The tables are derived from (base, head_dim): not saved, rebuilt on load.
        self.register_buffer("cos", torch.empty(0), persistent=False)
        self.register_buffer("sin", torch.empty(0), persistent=False)
        self._build(max_seq_len)
        self.register_load_state_dict_post_hook(lambda module, _: module._rebuild())

    @property
    def base(self) -> float:
        return float(self.base_value)

    def _apply(self, fn, recurse=True):
        # model.to(torch.bfloat16) / .half() would round the base itself (10000 -> 9984 in
        # bf16) and with it every table built later; only the device of the base may change.
        base = self.base_value
        super()._apply(fn, recurse)
        if self.base_value.dtype != torch.float64:
            self.base_value = base.to(self.base_value.device)
        return self

    def _rebuild(self) -> None:
        with torch.no_grad():
            self._build(self.cos.shape[0])

    def _build(self, length: int) -> None:
        device = self.base_value.device
        exponent = torch.arange(0, self.head_dim, 2, device=device, dtype=torch.float64) / self.head_dim
        inv_freq = 1.0 / (self.base_value.to(device) ** exponent)
        t = torch.arange(length, device=device, dtype=torch.float64)
        emb = torch.outer(t, inv_freq).repeat(1, 2)  # [length, d]: both halves share frequencies
        if self.cos.shape == emb.shape:  # same length: overwrite the buffers in place
            self.cos.copy_(emb.cos())
            self.sin.copy_(emb.sin())
        else:
            self.cos = emb.cos().float()
            self.sin = emb.sin().float()

    @torch.no_grad()
    def set_base(self, base: float) -> None:
        """Change the RoPE base and recompute the tables in place (same length, same device)."""
        if not base > 1:
            raise ValueError(f"RoPE base must be > 1, got {base}")
        self.base_value.fill_(float(base))
        self._build(self.cos.shape[0])

    def forward(
        self, positions: Tensor, dtype: torch.dtype | None = None, max_position: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """(cos, sin) [1 or b, 1, t, d] for positions [t] or [b, t].

        max_position: an upper bound of the positions (exclusive) when the caller knows it,
        so growing the tables needs no read of `positions` (a host sync on GPU).
        """
        end = (
            max_position if max_position is not None else int(positions.max()) + 1 if positions.numel() else 0
        )
        if end > self.cos.shape[0]:
            # Grow on demand (generation past the training context): positions are relative,
            # so longer tables only extrapolate, they never change earlier positions.
            with torch.no_grad():
                self._build(max(end, 2 * self.cos.shape[0]))
        pos = positions if positions.dim() == 2 else positions[None]  # [b or 1, t]
        cos, sin = self.cos[pos][:, None], self.sin[pos][:, None]  # [b or 1, 1, t, d]
        if dtype is not None:
            cos, sin = cos.to(dtype), sin.to(dtype)
        return cos, sin


__all__ = ["RotaryEmbedding", "apply_rotary", "rotate_half"]
