"""The peer: lucidrains/x-transformers configured as the same architecture as seqlab `gpt`.

`seqlab bench` runs every case through this model too, in the same process, so throughput,
latency and loss are reported as ratios against an independent, widely used implementation.
x-transformers is an optional dependency (`pip install 'seqlab[bench]'`), imported only
when the model is built.

Architecture mapping (x-transformers 2.x `TransformerWrapper` + `Decoder`):
- pre-norm blocks with a final norm; LayerNorm or RMSNorm with a plain gamma
  (norm_add_unit_offset=False), no biases in attention, no biases in the GELU MLP (ff_no_bias)
- rotary positions on the whole head (rotary_emb_dim = head_dim), base mapped through
  rotary_base_rescale_factor; no absolute position embedding
- causal SDPA attention (attn_flash=True); feed-forward width mlp_ratio * dim
- output head tied to the token embedding with scale 1 (x-transformers defaults to dim**-0.5)
- GPT-2 initialization exactly as `gpt` (normal 0.02, residual projections scaled by
  1/sqrt(2 * num_layers)) instead of x-transformers' kaiming embedding init, so that equal
  losses at equal budgets mean equal implementations and not different inits

Departures that x-transformers does not let us remove:
- its rotary embedding rotates interleaved pairs (GPT-J layout), seqlab's rotates halves
  (GPT-NeoX layout): a fixed permutation of each head's q/k channels, same function class
- its SwiGLU input projection always has a bias (2 * hidden extra parameters per layer)
- dropout sits on the embedding, the attention probabilities and after the MLP activation
  (emb_dropout, attn_dropout, ff_dropout), not on the residual branches as in `gpt`
- its KV cache grows by concatenation each step (seqlab's preallocates and doubles)

Shapes: input_ids [b, t] -> logits [b, t, v].
"""

import importlib.metadata
import math
from dataclasses import dataclass

import torch
from torch import nn

from seqlab.config import check_fields
from seqlab.errors import ConfigError
from seqlab.layers.embedding import check_token_ids
from seqlab.models.gpt import PRESETS
from seqlab.models.output import ModelOutput, lm_loss

DESCRIPTION = "benchmark peer: x-transformers configured as gpt (pip install 'seqlab[bench]')"

__all__ = ["DESCRIPTION", "PRESETS", "XTransformersCache", "XTransformersConfig", "XTransformersLM"]


@dataclass
class XTransformersConfig:
    vocab_size: int = 256
    dim: int = 128
    num_layers: int = 4
    num_heads: int = 4
    max_seq_len: int = 64
    mlp: str = "gelu"  # "gelu" | "swiglu"
    mlp_ratio: float = 4.0
    norm: str = "layernorm"  # "layernorm" | "rmsnorm"
    dropout: float = 0.0
    rope_base: float = 10000.0
    init_std: float = 0.02

    def __post_init__(self):
        check_fields(
            self,
            positive_ints=("vocab_size", "dim", "num_layers", "num_heads", "max_seq_len"),
            above={"mlp_ratio": 0, "rope_base": 1, "init_std": 0},
            unit=("dropout",),
            choices={"mlp": ("gelu", "swiglu"), "norm": ("layernorm", "rmsnorm")},
        )
        if self.dim % self.num_heads:
            raise ConfigError(f"model.num_heads={self.num_heads} must divide model.dim={self.dim}")


def _import_x_transformers():
    try:
        import x_transformers
    except ImportError as e:
        raise ImportError(
            "model 'xtransformers' (the benchmark peer) needs the x-transformers package: "
            "pip install 'seqlab[bench]'"
        ) from e
    return x_transformers


class XTransformersCache:
    """Decoding state of the peer, behind seqlab's in-place cache interface.

    x-transformers returns a new `LayerIntermediates` from every cached call instead of
    writing into a buffer; this holder keeps the latest one, so `generate` can pass the same
    object to every call as it does for seqlab's `Cache`.
    """

    def __init__(self):
        self.state = None

    @property
    def length(self) -> int:
        return self.state.cache_length if self.state is not None else 0


class XTransformersLM(nn.Module):
    can_decode = True  # causal, with a cache: generate() decodes through make_cache

    def __init__(self, cfg: XTransformersConfig):
        super().__init__()
        xt = _import_x_transformers()
        if cfg.mlp not in ("gelu", "swiglu"):
            raise ConfigError(f"model.mlp must be 'gelu' or 'swiglu', got {cfg.mlp!r}")
        if cfg.norm not in ("layernorm", "rmsnorm"):
            raise ConfigError(f"model.norm must be 'layernorm' or 'rmsnorm', got {cfg.norm!r}")
        if cfg.dim % cfg.num_heads:
            raise ConfigError(f"model.dim={cfg.dim} is not divisible by model.num_heads={cfg.num_heads}")
        head_dim = cfg.dim // cfg.num_heads
        if head_dim % 2 or head_dim < 4:
            raise ConfigError(f"rotary positions need an even head_dim >= 4, got {head_dim}")
        self.config = cfg
        # x-transformers multiplies its base (10000) by factor ** (d / (d - 2)); invert that.
        rescale = (cfg.rope_base / 10000.0) ** ((head_dim - 2) / head_dim)
        try:
            decoder = xt.Decoder(
                dim=cfg.dim,
                depth=cfg.num_layers,
                heads=cfg.num_heads,
                attn_dim_head=head_dim,
                attn_flash=True,
                attn_dropout=cfg.dropout,
                rotary_pos_emb=True,
                rotary_emb_dim=head_dim,
                rotary_base_rescale_factor=rescale,
                use_rmsnorm=cfg.norm == "rmsnorm",
                norm_add_unit_offset=False,
                ff_mult=cfg.mlp_ratio,
                ff_glu=cfg.mlp == "swiglu",
                ff_swish=cfg.mlp == "swiglu",
                ff_no_bias=True,
                ff_dropout=cfg.dropout,
                verbose=False,
            )
            self.net = xt.TransformerWrapper(
                num_tokens=cfg.vocab_size,
                max_seq_len=cfg.max_seq_len,
                attn_layers=decoder,
                use_abs_pos_emb=False,
                tie_embedding=True,
                tie_embedding_scale=1.0,
                emb_dropout=cfg.dropout,
            )
        except (TypeError, AssertionError) as e:
            # Older x-transformers releases lack some of these arguments.
            raise ImportError(
                f"x-transformers {importlib.metadata.version('x-transformers')} does not accept the peer's "
                f"configuration"
                f" ({e}); pip install 'x-transformers>=2.31'"
            ) from e
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        std = self.config.init_std
        for module in self.net.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        residual_std = std / math.sqrt(2 * self.config.num_layers)
        for _, block, _ in self.net.attn_layers.layers:
            # The last Linear of each block is its residual output projection (to_out / proj_out).
            out_proj = [m for m in block.modules() if isinstance(m, nn.Linear)][-1]
            nn.init.normal_(out_proj.weight, mean=0.0, std=residual_std)

    def make_cache(self, batch_size: int, capacity: int, device=None, dtype=None) -> XTransformersCache:
        # x-transformers sizes its cache by concatenation, so batch size and capacity are unused.
        return XTransformersCache()

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: XTransformersCache | None = None,
    ) -> ModelOutput:
        check_token_ids(input_ids, self.config.vocab_size)
        if cache is None:
            logits = self.net(input_ids)  # [b, t, v]
        else:
            past = {}
            if cache.state is not None:
                # Only the new tokens are given: positions continue from the cache length.
                past = dict(cache=cache.state, input_not_include_cache=True, cache_age=input_ids.shape[1])
            logits, cache.state = self.net(input_ids, return_intermediates=True, **past)
        loss = lm_loss(logits, targets) if targets is not None else None
        return ModelOutput(logits=logits, loss=loss, cache=cache)
