"""Feed-forward blocks: GELU MLP (GPT-2) and SwiGLU (Shazeer 2020). x [b, t, c] -> [b, t, c].

Both follow the feed-forward protocol of seqlab.layers.block (`forward(x, ctx=None)`); they
report no auxiliary losses.
"""

import torch
import torch.nn.functional as F
from torch import nn

MLPS = ("gelu", "swiglu")


class MLP(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0, bias: bool = False):
        super().__init__()
        self.fc = nn.Linear(dim, hidden_dim, bias=bias)
        self.proj = nn.Linear(hidden_dim, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, ctx=None) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0, bias: bool = False):
        super().__init__()
        # One fused matmul for gate and value halves.
        self.fc = nn.Linear(dim, 2 * hidden_dim, bias=bias)
        self.proj = nn.Linear(hidden_dim, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, ctx=None) -> torch.Tensor:
        gate, value = self.fc(x).chunk(2, dim=-1)
        return self.dropout(self.proj(F.silu(gate) * value))


def make_mlp(kind: str, dim: int, hidden_dim: int, dropout: float = 0.0, bias: bool = False) -> nn.Module:
    if kind == "gelu":
        return MLP(dim, hidden_dim, dropout, bias)
    if kind == "swiglu":
        return SwiGLU(dim, hidden_dim, dropout, bias)
    raise ValueError(f"unknown mlp {kind!r}; choose one of {MLPS}")
