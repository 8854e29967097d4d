"""Feed-forward blocks: GELU MLP (GPT-2), SwiGLU and gated GELU (Shazeer 2020, "GLU Variants
Improve Transformer"; T5 v1.1's feed-forward). x [b, t, c] -> [b, t, c].

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


class GatedGELU(nn.Module):
    """T5 v1.1's feed-forward: proj(dropout(gelu_tanh(x W_gate) * (x W_value))), then dropout.

    gelu_tanh is GELU's tanh approximation (Hugging Face's "gelu_new"). The two input
    projections are one fused matmul: fc.weight = [W_gate; W_value] (T5's wi_0; wi_1). Dropout
    sits where T5 puts it: on the hidden product and on the output.
    """

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0, bias: bool = False):
        super().__init__()
        self.fc = nn.Linear(dim, 2 * hidden_dim, bias=bias)
        self.proj = nn.Linear(hidden_dim, dim, bias=bias)
        self.hidden_dropout = nn.Dropout(dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, ctx=None) -> torch.Tensor:
        gate, value = self.fc(x).chunk(2, dim=-1)
        return self.dropout(self.proj(self.hidden_dropout(F.gelu(gate, approximate="tanh") * value)))


def make_mlp(kind: str, dim: int, hidden_dim: int, dropout: float = 0.0, bias: bool = False) -> nn.Module:
    if kind == "gelu":
        return MLP(dim, hidden_dim, dropout, bias)
    if kind == "swiglu":
        return SwiGLU(dim, hidden_dim, dropout, bias)
    raise ValueError(f"unknown mlp {kind!r}; choose one of {MLPS}")
