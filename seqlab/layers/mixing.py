"""Token mixing (across positions) and channel mixing (across features) of LFModel (seed 000).

TokenMixing, MLP-Mixer style (Tolstikhin et al. 2021) over the sequence axis:

    m_t = sum_{j} M[t, j] x_j              per head: channels split into h groups of d
    y   = AdaptiveLinear(m, adapt)          adaptive output projection (per sample / per token)

M [h, L, L] is a learned position-by-position matrix (L = max_seq_len); a sequence of s <= L
tokens uses its top-left [s, s] block. Causal mode keeps M lower triangular (j <= t), so
position t never sees t' > t and the output at t does not depend on the sequence length.
M starts as the running mean (M[t, j] = 1 / (t + 1) for j <= t; 1 / L everywhere when not
causal) so a deep stack starts from averaged, not exploding, context. Departure from the
seed: its TokenMixing was an AdaptiveLinear over the feature axis, i.e. a second channel
mixing that never combined positions (defect 4).

TokenMixing is a mixer of seqlab.layers.block (`forward(x, ctx, state=None)`, the adapt input
from ctx.adapt). Causal token mixing decodes from a `TokenMixingState`: the inputs it has
mixed so far, [b, <= L, c]. A call with the state mixes its new tokens at positions
p = n .. n + t - 1 (n = tokens already seen) with rows M[p, :p + 1] of the matrix over every
stored input: O(p c) per token, no prefix recomputed. Positions end at L: a state that would
pass max_seq_len is an error naming it (seqlab.models.generation then recomputes a cropped
prefix, as for learned absolute positions).

AdaptFeaturizer makes the adapt input they read: adapt_t = Linear(mean_{j <= t} LN(x_j)).

ChannelMixing: AdaptiveLinear(c, hidden) -> GELU -> AdaptiveLinear(hidden, c), per position; a
feed-forward of seqlab.layers.block (`forward(x, ctx)`, "adaptive" in seqlab.layers.ffn) and
the default expert of LFM's mixture of experts. Departure: the seed's was one AdaptiveLinear
with no nonlinearity (defect 5).

Shapes: x [b, t, c], ctx.adapt [b, a] (per sample) or [b, t, a] (per position) -> [b, t, c].
"""

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from seqlab.layers.adaptive import AdaptiveLinear
from seqlab.layers.block import Context


class AdaptFeaturizer(nn.Module):
    """LFM's adapt input, a summary of the sequence that every adaptive layer reads (ctx.adapt).

        causal:  adapt_t = Linear(mean_{j <= t} LN(x_j))   [b, t, a], one per prefix
        else:    adapt   = Linear(mean_j LN(x_j))          [b, a], the seed's, one per sequence

    Sums in fp32. padding_mask [b, t] (1 = token) leaves pads out of the means. With a
    seqlab.layers.cache.Cache the running sum and count continue across calls, kept in
    cache.extra["adapt_sum"] [b, c] and ["adapt_count"] [b, 1] (a new or reset cache starts
    from zero), so decoding costs O(1) per token. Any model can put it before its blocks to
    use TokenMixing or the adaptive feed-forwards.
    """

    def __init__(self, dim: int, adapt_dim: int, causal: bool = True):
        super().__init__()
        self.causal = causal
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, adapt_dim)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None, cache=None) -> Tensor:
        h = self.norm(x)
        h = h.to(torch.promote_types(h.dtype, torch.float32))  # [b, t, c]; fp64 stays fp64
        w = None if padding_mask is None else padding_mask.to(h.dtype)[..., None]  # [b, t, 1]
        if w is not None:
            h = h * w
        if not self.causal:
            summary = h.mean(1) if w is None else h.sum(1) / w.sum(1).clamp(min=1)
            return self.proj(summary.to(x.dtype))  # [b, a]
        total = h.cumsum(1)  # [b, t, c]
        count = (torch.ones_like(h[..., :1]) if w is None else w).cumsum(1)  # [b, t, 1]
        if cache is not None:
            if "adapt_sum" in cache.extra:
                total = total + cache.extra["adapt_sum"][:, None]
                count = count + cache.extra["adapt_count"][:, None]
            cache.extra["adapt_sum"], cache.extra["adapt_count"] = total[:, -1], count[:, -1]
        return self.proj((total / count.clamp(min=1)).to(x.dtype))  # [b, t, a]


def adapt_of(ctx: Context | None, layer: str) -> Tensor:
    """ctx.adapt, or a ValueError saying which layer needs it and where it comes from."""
    if ctx is None or ctx.adapt is None:
        raise ValueError(
            f"{layer} reads its adapt input from ctx.adapt ([b, a] or [b, t, a]), but the context has "
            "none: set ctx.adapt with a seqlab.layers.mixing.AdaptFeaturizer before the blocks (the "
            "LFM models do), or pass Context(adapt=...) yourself"
        )
    return ctx.adapt


class TokenMixingState:
    """Decoding state of causal token mixing: the (normed) inputs mixed so far.

    x [b, capacity, c] grows by doubling up to max_len (= the layer's max_seq_len) and never
    past it; `length` tokens are filled.
    """

    def __init__(self, batch_size: int, dim: int, capacity: int, max_len: int, device=None, dtype=None):
        self.max_len = max_len
        shape = (batch_size, min(max(capacity, 1), max_len), dim)
        self.x = torch.zeros(shape, device=device, dtype=dtype or torch.float32)
        self.length = 0

    def update(self, x: Tensor) -> Tensor:
        """Append x [b, t, c]; return every input so far, [b, length, c]."""
        end = self.length + x.shape[1]
        if end > self.max_len:
            raise ValueError(
                f"token mixing decodes at most max_seq_len={self.max_len} positions, and this call "
                f"would reach {end}: build the model with a larger max_seq_len, or recompute a "
                f"cropped prefix (seqlab.models.generation.generate does)"
            )
        if end > self.x.shape[1]:
            grown = min(max(end, 2 * self.x.shape[1]), self.max_len)
            extra = self.x.new_zeros(self.x.shape[0], grown - self.x.shape[1], self.x.shape[2])
            self.x = torch.cat([self.x, extra], dim=1)
        self.x[:, self.length : end] = x.to(self.x.dtype)
        self.length = end
        return self.x[:, :end]

    def map_batch(self, fn) -> None:
        self.x = fn(self.x)

    def reset(self) -> None:
        self.length = 0


class TokenMixing(nn.Module):
    def __init__(
        self,
        token_dim: int,
        adapt_dim: int,
        max_seq_len: int = 256,
        causal: bool = True,
        *,
        num_heads: int = 1,
        rank: int = 8,
        generator: str = "lowrank",
    ):
        super().__init__()
        if token_dim % num_heads:
            raise ValueError(f"token_dim {token_dim} must be divisible by num_heads {num_heads}")
        if max_seq_len < 1:
            raise ValueError(f"max_seq_len must be positive, got {max_seq_len}")
        self.token_dim, self.max_seq_len, self.causal, self.num_heads = (
            token_dim,
            max_seq_len,
            causal,
            num_heads,
        )
        pos = torch.arange(max_seq_len)
        if causal:
            init = torch.tril(1.0 / (pos[:, None] + 1.0).expand(max_seq_len, max_seq_len))
            self.register_buffer("mask", torch.tril(torch.ones(max_seq_len, max_seq_len)), persistent=False)
        else:
            init = torch.full((max_seq_len, max_seq_len), 1.0 / max_seq_len)
            self.mask = None
        self.mix = nn.Parameter(init.repeat(num_heads, 1, 1))  # [h, L, L]
        self.proj = AdaptiveLinear(token_dim, token_dim, adapt_dim, rank=rank, generator=generator)

    @property
    def max_positions(self) -> int:
        """Longest sequence this mixer reads: its mixing matrix has max_seq_len rows."""
        return self.max_seq_len

    def extra_repr(self) -> str:
        return f"max_seq_len={self.max_seq_len}, causal={self.causal}, num_heads={self.num_heads}"

    def mixing_matrix(self, seq_len: int, start: int = 0) -> Tensor:
        """Rows start .. start + seq_len - 1 of the matrix, over every position they may read:
        [h, seq_len, start + seq_len]."""
        end = start + seq_len
        if end > self.max_seq_len:
            seen = f" ({start} decoded before, {seq_len} new)" if start else ""
            raise ValueError(
                f"sequence of {end} tokens{seen} is longer than TokenMixing's max_seq_len "
                f"{self.max_seq_len}: build the layer (model) with a larger max_seq_len or feed shorter "
                f"sequences (generation past it recomputes a cropped prefix)"
            )
        m = self.mix[:, start:end, :end]
        # One new row (decoding) reads exactly the positions up to itself: nothing to mask.
        return m * self.mask[start:end, :end] if self.causal and seq_len > 1 else m

    def init_state(self, batch_size: int, capacity: int, device=None, dtype=None) -> TokenMixingState:
        if not self.causal:
            raise ValueError("bidirectional token mixing (causal=False) cannot decode token by token")
        return TokenMixingState(batch_size, self.token_dim, capacity, self.max_seq_len, device, dtype)

    def forward(self, x: Tensor, ctx: Context | None = None, state: TokenMixingState | None = None) -> Tensor:
        adapt = adapt_of(ctx, "TokenMixing")
        b, t, _ = x.shape
        start = 0 if state is None else state.length
        m = self.mixing_matrix(t, start).to(x.dtype)  # [h, t, s], s = start + t
        source = x if state is None else state.update(x).to(x.dtype)  # [b, s, c]
        # The einsum "h t j, b j h d -> b t h d" as one batched matmul over heads:
        # [h, t, s] @ [h, s, b d], every sample's head-h channels side by side.
        xh = rearrange(source, "b s (h d) -> h s (b d)", h=self.num_heads)
        mixed = rearrange(torch.bmm(m, xh), "h t (b d) -> b t (h d)", b=b)
        return self.proj(mixed, adapt)


class ChannelMixing(nn.Module):
    def __init__(
        self,
        channel_dim: int,
        adapt_dim: int,
        *,
        hidden_dim: int | None = None,
        rank: int = 8,
        generator: str = "lowrank",
        dropout: float = 0.0,
        bias: bool = True,
    ):
        super().__init__()
        hidden_dim = hidden_dim or channel_dim
        kw = dict(rank=rank, generator=generator, bias=bias)
        self.fc = AdaptiveLinear(channel_dim, hidden_dim, adapt_dim, **kw)
        self.proj = AdaptiveLinear(hidden_dim, channel_dim, adapt_dim, **kw)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, ctx: Context | None = None) -> Tensor:
        adapt = adapt_of(ctx, "ChannelMixing (the adaptive feed-forward)")
        return self.dropout(self.proj(F.gelu(self.fc(x, adapt)), adapt))


__all__ = ["AdaptFeaturizer", "ChannelMixing", "TokenMixing", "TokenMixingState", "adapt_of"]
