"""Axial 2D rotary position embedding (RoPE-ViT, Heo et al. 2024; EVA-02), for grid models.

Each head's d dims form d/2 rotation pairs (the "rotate half" layout of seqlab.layers.rotary:
dim f pairs with dim f + d/2). The first half of the pairs rotates by the cell's row, the second
half by its column, with the frequencies of a 1D RoPE of d/2 dims:

    theta_f = base^(-4f / d),  f < d/4
    pair f          (f < d/4):       angle = row * theta_f
    pair d/4 + f    (f < d/4):       angle = col * theta_f

so q(i, j) . k(i', j') depends on the positions only through (i - i', j - j'). It is applied to
queries and keys only (HeptapodLM added raw column angles to the residual stream instead).

The tables are plain rotary tables, so seqlab.layers.rotary.apply_rotary applies them, and a
grid flattened in raster order works with any 1D attention: `Rotary2D(head_dim)(gy, gx)` gives
(cos, sin), each [1, 1, gy * gx, d] (cells in raster order). d must be a multiple of 4. The
base is saved state, as in RotaryEmbedding (one table shared by both axes).
"""

import torch
from torch import Tensor, nn

from seqlab.layers.rotary import RotaryEmbedding


class Rotary2D(nn.Module):
    def __init__(self, head_dim: int, max_grid: int = 32, base: float = 10000.0):
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"2D rotary positions need a head_dim divisible by 4, got {head_dim}")
        self.head_dim = head_dim
        # Half the dims per axis: the 1D tables of d/2 dims, whose first d/4 columns hold the
        # d/4 distinct frequencies (the second d/4 repeat them, rotate-half layout).
        self.axis = RotaryEmbedding(head_dim // 2, max_grid, base)

    @property
    def base(self) -> float:
        return self.axis.base

    def forward(self, gy: int, gx: int, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
        """(cos, sin), each [1, 1, gy * gx, d], for the cells of a gy x gx grid in raster order."""
        quarter = self.head_dim // 4
        size = max(gy, gx)
        device = self.axis.base_value.device
        cos, sin = self.axis(torch.arange(size, device=device), max_position=size)  # [1, 1, size, d/2]
        cos, sin = cos[0, 0, :, :quarter], sin[0, 0, :, :quarter]  # [size, d/4]
        tables = []
        for table in (cos, sin):
            rows = table[:gy, None, :].expand(gy, gx, quarter)
            cols = table[None, :gx, :].expand(gy, gx, quarter)
            half = torch.cat((rows, cols), dim=-1).reshape(1, 1, gy * gx, 2 * quarter)
            tables.append(torch.cat((half, half), dim=-1))  # pair f and f + d/2 share an angle
        cos, sin = tables
        if dtype is not None:
            cos, sin = cos.to(dtype), sin.to(dtype)
        return cos, sin


__all__ = ["Rotary2D"]
