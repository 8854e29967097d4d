"""The baseline: a standard pre-norm decoder-only transformer (GPT-2 shape, modern parts).

Token embedding (tied with the output head) -> num_layers x [x + attn(norm x); x + mlp(norm x)]
-> norm -> logits. Rotary positions, causal SDPA attention with an optional sliding window,
GELU or SwiGLU MLP, LayerNorm or RMSNorm, KV-cache decoding. Every other architecture in seqlab
is measured against this model at the same width, depth and token budget.

Built from the shared pieces: seqlab.models.decoder.DecoderLM (embedding, positions, padding,
cache, head) over seqlab.layers.block.Block(Attention, feed-forward). Initialization is
GPT-2's: every weight ~ N(0, init_std), the residual output projections (attention `proj`,
MLP `proj`) ~ N(0, init_std / sqrt(2 num_layers)) so the residual stream's variance does not
grow with depth.

Shapes: input_ids [b, t] -> logits [b, t, v].
"""

from dataclasses import dataclass

from seqlab.errors import ConfigError
from seqlab.layers.attention import Attention
from seqlab.layers.block import Block
from seqlab.layers.ffn import make_ffn
from seqlab.layers.norm import NORMS
from seqlab.models.decoder import DecoderLM, init_gpt_weights

# GPTConfig.mlp names the activation; the feed-forward registry names the layer.
MLPS = {"gelu": "mlp", "swiglu": "swiglu"}


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

    def __post_init__(self):
        for name in ("vocab_size", "dim", "num_layers", "num_heads", "max_seq_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"model.{name} must be an int >= 1, got {value!r}")
        if self.dim % self.num_heads:
            raise ConfigError(
                f"model.num_heads={self.num_heads} must divide model.dim={self.dim}: pick a divisor of dim "
                f"(with an even quotient, the head dim)"
            )
        if (self.dim // self.num_heads) % 2:
            raise ConfigError(
                f"rotary positions need an even head dim, but model.dim={self.dim} / "
                f"model.num_heads={self.num_heads} = {self.dim // self.num_heads}: change dim or num_heads"
            )
        if self.mlp not in MLPS:
            raise ConfigError(f"model.mlp must be one of {', '.join(MLPS)}, got {self.mlp!r}")
        if self.norm not in NORMS:
            raise ConfigError(f"model.norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if not self.mlp_ratio > 0 or int(self.mlp_ratio * self.dim) < 1:
            raise ConfigError(
                f"model.mlp_ratio must be > 0 (hidden width mlp_ratio * dim), got {self.mlp_ratio}"
            )
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"model.dropout must lie in [0, 1), got {self.dropout}")
        if not self.rope_base > 1:
            raise ConfigError(f"model.rope_base must be > 1, got {self.rope_base}")
        window = self.window
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            raise ConfigError(f"model.window must be null (full attention) or an int >= 1, got {window!r}")
        if not self.init_std > 0:
            raise ConfigError(f"model.init_std must be > 0, got {self.init_std}")


PRESETS = {
    "tiny": dict(dim=32, num_layers=2, num_heads=2, max_seq_len=32),
    # nanoGPT's CPU shakespeare_char config.
    "baby": dict(dim=128, num_layers=4, num_heads=4, max_seq_len=64),
    "small": dict(dim=384, num_layers=6, num_heads=6, max_seq_len=256),
}


def gpt_block(cfg: GPTConfig) -> Block:
    attn = Attention(cfg.dim, cfg.num_heads, window=cfg.window, dropout=cfg.dropout, bias=cfg.bias)
    ffn = make_ffn(
        MLPS[cfg.mlp], cfg.dim, hidden_dim=int(cfg.mlp_ratio * cfg.dim), dropout=cfg.dropout, bias=cfg.bias
    )
    return Block(cfg.dim, attn, ffn, cfg.norm, bias=cfg.bias)


class GPT(DecoderLM):
    def __init__(self, cfg: GPTConfig):
        super().__init__(
            cfg,
            [gpt_block(cfg) for _ in range(cfg.num_layers)],
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

    def set_window(self, window: int | None) -> None:
        """Sliding-window size of every attention layer (None = full causal attention); saved
        with the model's state."""
        for block in self.blocks:
            block.mixer.set_window(window)


__all__ = ["GPT", "GPTConfig", "PRESETS"]
