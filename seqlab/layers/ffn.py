"""The feed-forward registry: any block's feed-forward, chosen by name.

    make_ffn("mlp", dim, hidden_dim=4 * dim)     GELU MLP (GPT-2)
    make_ffn("swiglu", dim, hidden_dim=...)      SwiGLU (Shazeer 2020)

Every entry follows the feed-forward protocol of seqlab.layers.block: `forward(x, ctx)`,
x [b, t, c] -> [b, t, c], auxiliary losses and metrics through `ctx.add_aux` /
`ctx.add_metric`. An entry is a factory `(dim, *, hidden_dim, dropout, bias, **options)`;
options it does not know are an error that names them.
"""

from collections.abc import Callable

from torch import nn

from seqlab.layers.mlp import MLP, SwiGLU


def _mlp(dim: int, *, hidden_dim: int | None = None, dropout: float = 0.0, bias: bool = False) -> nn.Module:
    return MLP(dim, hidden_dim or 4 * dim, dropout, bias)


def _swiglu(dim: int, *, hidden_dim: int | None = None, dropout: float = 0.0, bias: bool = False) -> nn.Module:
    return SwiGLU(dim, hidden_dim or 4 * dim, dropout, bias)


FFNS: dict[str, Callable[..., nn.Module]] = {
    "mlp": _mlp,
    "swiglu": _swiglu,
}


def make_ffn(kind: str, dim: int, **options) -> nn.Module:
    """Build feed-forward `kind` of width dim; raises ValueError naming a wrong kind or option."""
    if kind not in FFNS:
        raise ValueError(f"unknown feed-forward {kind!r}; choose one of {', '.join(FFNS)}")
    try:
        return FFNS[kind](dim, **options)
    except TypeError as e:
        raise ValueError(f"feed-forward {kind!r}: {e}") from None


__all__ = ["FFNS", "make_ffn"]
