"""Normalization layers: LayerNorm (optional bias) and RMSNorm, chosen by name."""

from torch import nn

NORMS = ("layernorm", "rmsnorm")


def make_norm(kind: str, dim: int, bias: bool = False, eps: float = 1e-5) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps, bias=bias)
    if kind == "rmsnorm":
        return nn.RMSNorm(dim, eps=eps)
    raise ValueError(f"unknown norm {kind!r}; choose one of {NORMS}")
