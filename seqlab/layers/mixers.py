"""The mixer registry: any block's token mixer, chosen by name.

    make_mixer("attention", dim, num_heads=4, window=16)     softmax attention (SDPA)
    make_mixer("leap", dim, num_heads=4, window=8)            LEAP linear attention
    make_mixer("fastformer", dim, num_heads=4)                Fastformer additive attention
    make_mixer("token_mixing", dim, num_heads=4, max_seq_len=64, adapt_dim=32)   LFM's
    make_mixer("local2d", dim, num_heads=4, window=7)       2D neighbourhood attention on grids
    make_mixer("global2d", dim, num_heads=4)                full 2D attention on grids (2D rotary)
    make_mixer("hybrid", dim, num_heads=4, window=16)       sliding-window + global attention, gated

Every entry follows the mixer protocol of seqlab.layers.block: `forward(x, ctx, state=None)`
over x [b, t, c] and `init_state(batch_size, capacity, device, dtype)` for decoding, so
any mixer composes with any feed-forward (seqlab.layers.ffn) and a model may mix them per
layer (the `stack` model). An entry is a factory `(dim, *, num_heads, dropout, max_seq_len,
causal, **options)`; options it does not know are an error that names them.
"""

from collections.abc import Callable

from torch import nn

from seqlab.layers.registry import build


def _attention(
    dim,
    *,
    num_heads,
    dropout=0.0,
    max_seq_len=None,
    causal=True,
    window=None,
    bias=False,
    head_dim=None,
    scale=None,
    rotary=True,
):
    from seqlab.layers.attention import Attention

    return Attention(
        dim,
        num_heads,
        causal=causal,
        window=window,
        dropout=dropout,
        bias=bias,
        head_dim=head_dim,
        scale=scale,
        rotary=rotary,
    )


def _leap(
    dim, *, num_heads, dropout=0.0, max_seq_len=None, causal=True, window=None, rescale=None, decay=False
):
    from seqlab.layers.leap import MultiheadLeap

    if window is not None and max_seq_len is not None and window >= max_seq_len:
        window = None  # a window covering the whole context is a global layer
    return MultiheadLeap(
        dim,
        num_heads,
        window,
        dropout,
        focus="elu" if rescale is None else "exp",
        rescale=rescale,
        causal=causal,
        decay=decay,
    )


def _fastformer(
    dim, *, num_heads, dropout=0.0, max_seq_len=None, causal=True, window=None, rescale=10.0, decay=False
):
    from seqlab.layers.fastformer import FastformerAttention

    if not causal:
        raise ValueError("the fastformer mixer is causal only")
    return FastformerAttention(dim, num_heads, window, dropout, rescale=rescale, decay=decay)


def _token_mixing(
    dim, *, num_heads, dropout=0.0, max_seq_len, causal=True, adapt_dim=32, rank=8, generator="lowrank"
):
    from seqlab.layers.mixing import TokenMixing

    return TokenMixing(
        dim, adapt_dim, max_seq_len, causal, num_heads=num_heads, rank=rank, generator=generator
    )


def _hybrid(dim, *, num_heads, dropout=0.0, max_seq_len=None, causal=True, window=16, bias=False):
    from seqlab.layers.hybrid import HybridAttention

    return HybridAttention(dim, num_heads, window, causal=causal, dropout=dropout, bias=bias)


def _local2d(
    dim, *, num_heads, dropout=0.0, max_seq_len=None, causal=True, window=7, bias=False, impl="tiled"
):
    from seqlab.layers.local2d import Local2DAttention

    return Local2DAttention(dim, num_heads, window, causal=causal, dropout=dropout, bias=bias, impl=impl)


def _global2d(dim, *, num_heads, dropout=0.0, max_seq_len=None, causal=True, bias=False):
    from seqlab.layers.local2d import Local2DAttention

    return Local2DAttention(dim, num_heads, None, causal=causal, dropout=dropout, bias=bias)


MIXERS: dict[str, Callable[..., nn.Module]] = {
    "attention": _attention,
    "leap": _leap,
    "fastformer": _fastformer,
    "token_mixing": _token_mixing,
    "local2d": _local2d,  # x [b, gy, gx, c] (a sequence is one row)
    "global2d": _global2d,
    "hybrid": _hybrid,
}

# Mixers that read the adapt input (ctx.adapt) computed by an LFM featurizer.
NEEDS_ADAPT = {"token_mixing"}


def make_mixer(kind: str, dim: int, **options) -> nn.Module:
    """Build mixer `kind` of width dim; raises ValueError naming a wrong kind or option."""
    return build(MIXERS, "mixer", kind, dim, options)


__all__ = ["MIXERS", "NEEDS_ADAPT", "make_mixer"]
