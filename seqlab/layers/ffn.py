"""The feed-forward registry: any block's feed-forward, chosen by name.

    make_ffn("mlp", dim, hidden_dim=4 * dim)     GELU MLP (GPT-2)
    make_ffn("swiglu", dim, hidden_dim=...)      SwiGLU (Shazeer 2020)
    make_ffn("gated_gelu", dim, hidden_dim=...)  gated GELU, tanh approximation (T5 v1.1)
    make_ffn("adaptive", dim, adapt_dim=32)      LFM's adaptive MLP (ChannelMixing): its weights
                                                 W + DeltaW(ctx.adapt); options rank, generator
    make_ffn("moe", dim, num_experts=4)          mixture of experts, every expert a feed-forward
                                                 of this registry (expert="mlp" | "swiglu" |
                                                 "adaptive"); options top_k, gate, adapt_dim,
                                                 lambda_entropy, entropy_mode, load_balance_coef,
                                                 z_loss_coef, impl (and rank, generator for
                                                 adaptive experts)
    make_ffn("kan", dim, hidden_dim=None)        KAN (seqlab.layers.kan.KANFeedForward):
                                                 KANLinear c -> hidden_dim -> c (None: matched
                                                 to a 4 c MLP; 0: one KANLinear c -> c);
                                                 options grid_size, spline_order, grid_range
                                                 (r or (lo, hi), default 2), scale_spline, basis,
                                                 impl, reg_coef (aux "kan_reg"; 0 = off)

Every entry follows the feed-forward protocol of seqlab.layers.block: `forward(x, ctx)`,
x [b, t, c] -> [b, t, c], auxiliary losses and metrics through `ctx.add_aux` /
`ctx.add_metric`. An entry is a factory `(dim, *, hidden_dim, dropout, bias, **options)`;
options it does not know are an error that names them. hidden_dim defaults to 4 * dim (for
"moe": the hidden width of each expert).

"moe" defaults to what works in any block: a token gate (routes on x, so no adapt input is
needed), top-2 routing over 4 MLP experts and the Switch load-balancing loss (coefficient
0.01). "adaptive" experts, gate="sequence" and the "adaptive" entry read ctx.adapt, the adapt
input of width adapt_dim (default 32) that an LFM featurizer (seqlab.layers.mixing.
AdaptFeaturizer) puts in the context; a model without one gets an error saying so.
"""

from collections.abc import Callable

from torch import nn

from seqlab.layers.kan import KANFeedForward, kan_hidden_for_params
from seqlab.layers.mixing import ChannelMixing
from seqlab.layers.mlp import MLP, GatedGELU, SwiGLU
from seqlab.layers.moe import MixtureOfExperts
from seqlab.layers.registry import build


def _mlp(dim: int, *, hidden_dim: int | None = None, dropout: float = 0.0, bias: bool = False) -> nn.Module:
    return MLP(dim, hidden_dim or 4 * dim, dropout, bias)


def _swiglu(
    dim: int, *, hidden_dim: int | None = None, dropout: float = 0.0, bias: bool = False
) -> nn.Module:
    return SwiGLU(dim, hidden_dim or 4 * dim, dropout, bias)


def _gated_gelu(
    dim: int, *, hidden_dim: int | None = None, dropout: float = 0.0, bias: bool = False
) -> nn.Module:
    return GatedGELU(dim, hidden_dim or 4 * dim, dropout, bias)


def _adaptive(
    dim: int,
    *,
    hidden_dim: int | None = None,
    dropout: float = 0.0,
    bias: bool = True,
    adapt_dim: int = 32,
    rank: int = 8,
    generator: str = "lowrank",
) -> nn.Module:
    return ChannelMixing(
        dim,
        adapt_dim,
        hidden_dim=hidden_dim or 4 * dim,
        rank=rank,
        generator=generator,
        dropout=dropout,
        bias=bias,
    )


def _moe(
    dim: int,
    *,
    hidden_dim: int | None = None,
    dropout: float = 0.0,
    bias: bool | None = None,
    num_experts: int = 4,
    expert: str = "mlp",
    top_k: int | None = 2,
    gate: str = "token",
    adapt_dim: int = 32,
    lambda_entropy: float = 0.0,
    entropy_mode: str = "sample",
    load_balance_coef: float = 0.01,
    z_loss_coef: float = 0.0,
    impl: str = "fast",
    rank: int | None = None,
    generator: str | None = None,
) -> nn.Module:
    if expert not in FFNS or expert == "moe":
        choices = ", ".join(k for k in FFNS if k != "moe")
        raise ValueError(f"unknown expert {expert!r} for the moe feed-forward; choose one of {choices}")
    options = dict(hidden_dim=hidden_dim, dropout=dropout)
    if bias is not None:
        options["bias"] = bias
    if expert == "adaptive":
        options.update(adapt_dim=adapt_dim)
        options.update({k: v for k, v in (("rank", rank), ("generator", generator)) if v is not None})
    elif rank is not None or generator is not None:
        raise ValueError(f"rank and generator are options of adaptive experts, not of expert={expert!r}")

    def make_expert() -> nn.Module:
        return FFNS[expert](dim, **options)

    return MixtureOfExperts(
        dim,
        num_experts,
        make_expert,
        gate=gate,
        adapt_dim=adapt_dim,
        top_k=top_k,
        lambda_entropy=lambda_entropy,
        entropy_mode=entropy_mode,
        load_balance_coef=load_balance_coef,
        z_loss_coef=z_loss_coef,
        impl=impl,
    )


def _kan(
    dim: int,
    *,
    hidden_dim: int | None = None,
    mlp_hidden_dim: int | None = None,
    dropout: float = 0.0,
    bias: bool = False,
    grid_size: int = 5,
    spline_order: int = 3,
    grid_range: float | tuple[float, float] = 2.0,
    scale_spline: bool = True,
    basis: str = "bspline",
    impl: str = "recompute",
    reg_coef: float = 0.0,
    regularize_activation: float = 1.0,
    regularize_entropy: float = 1.0,
) -> nn.Module:
    if bias:
        raise ValueError(
            "the kan feed-forward has no bias: drop bias=True (a spline can represent a constant)"
        )
    bounds = (-float(grid_range), float(grid_range)) if isinstance(grid_range, int | float) else grid_range
    if hidden_dim is None and mlp_hidden_dim is not None:
        # The width whose parameter count matches a GELU MLP dim -> mlp_hidden_dim -> dim.
        hidden_dim = kan_hidden_for_params(
            dim,
            2 * dim * mlp_hidden_dim,
            grid_size=grid_size,
            spline_order=spline_order,
            scale_spline=scale_spline,
            basis=basis,
        )
    return KANFeedForward(
        dim,
        hidden_dim,
        grid_size=grid_size,
        spline_order=spline_order,
        grid_range=tuple(bounds),
        scale_spline=scale_spline,
        basis=basis,
        impl=impl,
        dropout=dropout,
        reg_coef=reg_coef,
        regularize_activation=regularize_activation,
        regularize_entropy=regularize_entropy,
    )


# Feed-forwards that pick their own width to match the parameters of an MLP: a model passes them
# mlp_hidden_dim (the MLP's hidden width) instead of hidden_dim (their own width).
MLP_MATCHED = frozenset({"kan"})

FFNS: dict[str, Callable[..., nn.Module]] = {
    "mlp": _mlp,
    "swiglu": _swiglu,
    "gated_gelu": _gated_gelu,
    "adaptive": _adaptive,
    "moe": _moe,
    "kan": _kan,
}


def make_ffn(kind: str, dim: int, **options) -> nn.Module:
    """Build feed-forward `kind` of width dim; raises ValueError naming a wrong kind or option."""
    return build(FFNS, "feed-forward", kind, dim, options)


__all__ = ["FFNS", "MLP_MATCHED", "make_ffn"]
