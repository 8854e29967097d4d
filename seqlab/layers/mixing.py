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

ChannelMixing: AdaptiveLinear(c, hidden) -> GELU -> AdaptiveLinear(hidden, c), per position.
Departure: the seed's was one AdaptiveLinear with no nonlinearity (defect 5).

Shapes: x [b, t, c], adapt_input [b, a] (per sample) or [b, t, a] (per position) -> [b, t, c].
"""

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import Tensor, nn

from seqlab.layers.adaptive import AdaptiveLinear


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
        self.max_seq_len, self.causal, self.num_heads = max_seq_len, causal, num_heads
        pos = torch.arange(max_seq_len)
        if causal:
            init = torch.tril(1.0 / (pos[:, None] + 1.0).expand(max_seq_len, max_seq_len))
            self.register_buffer("mask", torch.tril(torch.ones(max_seq_len, max_seq_len)), persistent=False)
        else:
            init = torch.full((max_seq_len, max_seq_len), 1.0 / max_seq_len)
            self.mask = None
        self.mix = nn.Parameter(init.repeat(num_heads, 1, 1))  # [h, L, L]
        self.proj = AdaptiveLinear(token_dim, token_dim, adapt_dim, rank=rank, generator=generator)

    def extra_repr(self) -> str:
        return f"max_seq_len={self.max_seq_len}, causal={self.causal}, num_heads={self.num_heads}"

    def mixing_matrix(self, seq_len: int) -> Tensor:
        """The [h, s, s] matrix applied to a sequence of seq_len tokens."""
        if seq_len > self.max_seq_len:
            raise ValueError(
                f"sequence of {seq_len} tokens is longer than TokenMixing's max_seq_len "
                f"{self.max_seq_len}: build the layer (model) with a larger max_seq_len or feed shorter "
                f"sequences"
            )
        m = self.mix[:, :seq_len, :seq_len]
        return m * self.mask[:seq_len, :seq_len] if self.causal else m

    def forward(self, x: Tensor, adapt_input: Tensor) -> Tensor:
        m = self.mixing_matrix(x.shape[1])  # [h, t, t]
        xh = rearrange(x, "b t (h d) -> b t h d", h=self.num_heads)
        mixed = einsum(m.to(x.dtype), xh, "h t j, b j h d -> b t h d")
        return self.proj(rearrange(mixed, "b t h d -> b t (h d)"), adapt_input)


class ChannelMixing(nn.Module):
    def __init__(
        self,
        channel_dim: int,
        adapt_dim: int,
        *,
        hidden_dim: int | None = None,
        rank: int = 8,
        generator: str = "lowrank",
    ):
        super().__init__()
        hidden_dim = hidden_dim or channel_dim
        self.fc = AdaptiveLinear(channel_dim, hidden_dim, adapt_dim, rank=rank, generator=generator)
        self.proj = AdaptiveLinear(hidden_dim, channel_dim, adapt_dim, rank=rank, generator=generator)

    def forward(self, x: Tensor, adapt_input: Tensor) -> Tensor:
        return self.proj(F.gelu(self.fc(x, adapt_input)), adapt_input)
