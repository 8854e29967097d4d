"""The baseline: a standard pre-norm decoder-only transformer (GPT-2 shape, modern parts).

Token embedding (tied with the output head) -> num_layers x [x + attn(norm x); x + mlp(norm x)]
-> norm -> logits. Rotary positions, causal SDPA attention with an optional sliding window,
GELU or SwiGLU MLP, LayerNorm or RMSNorm, KV-cache decoding. Every other architecture in seqlab
is measured against this model at the same width, depth and token budget.

Shapes: input_ids [b, t] -> logits [b, t, v].
"""

import math
from dataclasses import dataclass

import torch
from torch import nn

from seqlab.layers.attention import CausalSelfAttention
from seqlab.layers.cache import KVCache
from seqlab.layers.embedding import check_token_ids
from seqlab.layers.mlp import make_mlp
from seqlab.layers.norm import make_norm
from seqlab.layers.rotary import RotaryEmbedding
from seqlab.models.output import ModelOutput, lm_loss


@dataclass
class GPTConfig:
    vocab_size: int = 256
    dim: int = 128
    num_layers: int = 4
    num_heads: int = 4
    max_seq_len: int = 64
    mlp: str = "gelu"  # "gelu" | "swiglu"
    mlp_ratio: float = 4.0
    norm: str = "layernorm"  # "layernorm" | "rmsnorm"
    dropout: float = 0.0
    bias: bool = False
    rope_base: float = 10000.0
    window: int | None = None  # sliding-window attention span; None = full causal
    init_std: float = 0.02


PRESETS = {
    "tiny": dict(dim=32, num_layers=2, num_heads=2, max_seq_len=32),
    # nanoGPT's CPU shakespeare_char config.
    "baby": dict(dim=128, num_layers=4, num_heads=4, max_seq_len=64),
    "small": dict(dim=384, num_layers=6, num_heads=6, max_seq_len=256),
}


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.norm1 = make_norm(cfg.norm, cfg.dim, cfg.bias)
        self.attn = CausalSelfAttention(cfg.dim, cfg.num_heads, cfg.dropout, cfg.bias, cfg.window)
        self.norm2 = make_norm(cfg.norm, cfg.dim, cfg.bias)
        self.mlp = make_mlp(cfg.mlp, cfg.dim, int(cfg.mlp_ratio * cfg.dim), cfg.dropout, cfg.bias)

    def forward(self, x, rotary, cache=None, layer_idx=0):
        x = x + self.attn(self.norm1(x), rotary, cache, layer_idx)
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.rotary = RotaryEmbedding(cfg.dim // cfg.num_heads, cfg.max_seq_len, cfg.rope_base)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = make_norm(cfg.norm, cfg.dim, cfg.bias)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.head.weight = self.embed.weight
        self.apply(self._init_weights)
        self._scale_residual_projections()

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.init_std
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)

    @torch.no_grad()
    def _scale_residual_projections(self) -> None:
        # GPT-2: residual output projections get std / sqrt(2 * num_layers) so the residual
        # stream's variance does not grow with depth.
        std = self.config.init_std / math.sqrt(2 * self.config.num_layers)
        for block in self.blocks:
            nn.init.normal_(block.attn.proj.weight, mean=0.0, std=std)
            nn.init.normal_(block.mlp.proj.weight, mean=0.0, std=std)

    def make_cache(self, batch_size: int, capacity: int, device=None, dtype=None) -> KVCache:
        p = self.embed.weight
        cfg = self.config
        return KVCache(
            cfg.num_layers,
            batch_size,
            cfg.num_heads,
            cfg.dim // cfg.num_heads,
            capacity,
            device or p.device,
            dtype or p.dtype,
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> ModelOutput:
        check_token_ids(input_ids, self.config.vocab_size)
        x = self.dropout(self.embed(input_ids))  # [b, t, c]
        for i, block in enumerate(self.blocks):
            x = block(x, self.rotary, cache, i)
        if cache is not None:
            cache.advance(input_ids.shape[1])
        logits = self.head(self.norm(x))  # [b, t, v]
        loss = lm_loss(logits, targets) if targets is not None else None
        return ModelOutput(logits=logits, loss=loss, cache=cache)
