"""`hybrid`: the baseline decoder with hybrid local + global attention (Autonomic-Layer seed).

gpt's model (seqlab.models.gpt: pre-norm blocks, rotary positions, GELU or SwiGLU MLP, tied
head, GPT-2 initialization) with its attention replaced per layer by

    hybrid   seqlab.layers.hybrid.HybridAttention: a causal sliding-window branch and a causal
             full branch over the same q, k, v, mixed per head and token by a learned gate
    local    causal sliding-window softmax attention (seqlab.layers.attention.Attention)
    global   causal full softmax attention (gpt's layer)

`model.pattern` lists layer kinds, repeated over the depth: "hybrid" (every layer, the
default), "local,local,global" (two local layers per global one), ... `model.window` is the
local span of every local and hybrid layer. The RoPE base (`set_base`) and the window
(`set_window`) are saved state, so the autonomic controller (seqlab.train.autonomic, the
`autonomic` callback) can move them while the model trains and checkpoints keep them.

The controller is not this model's default: `hybrid` trains with fixed values unless the run
asks for it (`--set train.autonomic=true`), so the same model can be compared with and
without it (a registry callback would always run).

Shapes: input_ids [b, t] -> logits [b, t, v].
"""

from dataclasses import dataclass

from torch import nn

from seqlab.config import check_fields
from seqlab.errors import ConfigError
from seqlab.layers.attention import Attention
from seqlab.layers.block import Block
from seqlab.layers.ffn import make_ffn
from seqlab.layers.hybrid import HybridAttention
from seqlab.layers.norm import NORMS
from seqlab.models.decoder import DecoderLM, init_gpt_weights
from seqlab.models.gpt import MLPS

KINDS = ("hybrid", "local", "global")


def parse_pattern(pattern: str, num_layers: int) -> list[str]:
    """ "local,global" and 4 layers -> ["local", "global", "local", "global"]."""
    kinds = [p.strip() for p in pattern.split(",")]
    bad = [k for k in kinds if k not in KINDS]
    if not kinds or bad:
        raise ConfigError(
            f"model.pattern={pattern!r}: {bad or 'empty'}; list layer kinds from {', '.join(KINDS)}, "
            f"e.g. 'hybrid' or 'local,local,global'"
        )
    return [kinds[i % len(kinds)] for i in range(num_layers)]


@dataclass
class HybridConfig:
    vocab_size: int = 256
    dim: int = 128
    num_layers: int = 4
    num_heads: int = 4
    max_seq_len: int = 64
    window: int = 16  # local span of the local and hybrid layers (the keys each query sees)
    pattern: str = "hybrid"  # layer kinds repeated over the depth: hybrid | local | global
    mlp: str = "gelu"  # "gelu" | "swiglu"
    mlp_ratio: float = 4.0
    norm: str = "layernorm"
    dropout: float = 0.0
    bias: bool = False
    rope_base: float = 10000.0
    init_std: float = 0.02

    def __post_init__(self):
        check_fields(
            self,
            positive_ints=("vocab_size", "dim", "num_layers", "num_heads", "max_seq_len", "window"),
            above={"mlp_ratio": 0, "rope_base": 1, "init_std": 0},
            unit=("dropout",),
            choices={"norm": NORMS, "mlp": tuple(MLPS)},
        )
        if self.dim % self.num_heads or (self.dim // self.num_heads) % 2:
            raise ConfigError(
                f"model.num_heads={self.num_heads} must divide model.dim={self.dim} into an even head dim "
                f"(rotary positions rotate pairs of channels)"
            )
        parse_pattern(self.pattern, self.num_layers)


PRESETS = {
    # gpt's sizes; the window is a quarter of the context.
    "tiny": dict(dim=32, num_layers=2, num_heads=2, max_seq_len=32, window=8),
    "baby": dict(dim=128, num_layers=4, num_heads=4, max_seq_len=64, window=16),
    "small": dict(dim=384, num_layers=6, num_heads=6, max_seq_len=256, window=64),
}


def _mixer(cfg: HybridConfig, kind: str) -> nn.Module:
    if kind == "hybrid":
        return HybridAttention(cfg.dim, cfg.num_heads, cfg.window, dropout=cfg.dropout, bias=cfg.bias)
    window = cfg.window if kind == "local" else None
    return Attention(cfg.dim, cfg.num_heads, window=window, dropout=cfg.dropout, bias=cfg.bias)


def hybrid_block(cfg: HybridConfig, kind: str) -> Block:
    ffn = make_ffn(
        MLPS[cfg.mlp], cfg.dim, hidden_dim=int(cfg.mlp_ratio * cfg.dim), dropout=cfg.dropout, bias=cfg.bias
    )
    return Block(cfg.dim, _mixer(cfg, kind), ffn, cfg.norm, bias=cfg.bias)


class HybridLM(DecoderLM):
    def __init__(self, cfg: HybridConfig):
        self.kinds = parse_pattern(cfg.pattern, cfg.num_layers)
        super().__init__(
            cfg,
            [hybrid_block(cfg, kind) for kind in self.kinds],
            vocab_size=cfg.vocab_size,
            dim=cfg.dim,
            max_seq_len=cfg.max_seq_len,
            position="rotary",
            rotary_dim=cfg.dim // cfg.num_heads,
            rope_base=cfg.rope_base,
            dropout=cfg.dropout,
            norm=cfg.norm,
            norm_bias=cfg.bias,
        )
        init_gpt_weights(self, cfg.init_std, cfg.num_layers)

    def set_window(self, window: int) -> None:
        """Local span of every local and hybrid layer (global layers keep full attention);
        saved with the model's state."""
        for kind, block in zip(self.kinds, self.blocks):
            if kind != "global":
                block.mixer.set_window(window)


__all__ = ["KINDS", "PRESETS", "HybridConfig", "HybridLM", "parse_pattern"]
