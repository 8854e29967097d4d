"""Fastformer causal LM: LEAP's repository's legacy model (seed 001: mtanghu/LEAP).

    token embedding [+ learned positions] -> num_layers x Block(Fastformer mixer, GELU MLP)
    -> LN -> logits tied to the embedding

built on seqlab.models.decoder.DecoderLM from seqlab.layers.block.Block(dim,
FastformerAttention, MLP, "layernorm"). It shares LEAP's configuration conventions (the seed's
keyword names, the window schedule, the init), through the plain functions of
seqlab.models.leap, not by inheritance, and LEAP's focus sums, so it trains in parallel and
decodes with O(1) recurrent state per layer. Positions: "learned", "decay" (the pooled sums
fade old tokens by gamma_h) or "none"; the additive pooling has no rotary form and no
per-token attention map (so `seqlab explain` does not apply to it).

Shapes: input_ids [b, t] -> logits [b, t, v].
"""

import math
from dataclasses import dataclass, field
from typing import Any

from seqlab.errors import ConfigError
from seqlab.layers.fastformer import FastformerAttention
from seqlab.models.decoder import DecoderLM
from seqlab.models.leap import PRESETS as LEAP_PRESETS
from seqlab.models.leap import (
    check_seed_config,
    init_seed_config,
    init_seed_weights,
    seed_blocks,
    seed_window_schedule,
)

POSITIONS = ("learned", "decay", "none")


@dataclass(init=False)
class FastformerConfig:
    """Fastformer's config: the seed's keyword names accepted (hidden_size, n_head, ...)."""

    vocab_size: int = 32100
    dim: int = 256
    num_heads: int = 4
    num_layers: int = 4
    max_seq_len: int = 1024
    use_local_att: bool = True
    window_sizes: list[int] | None = None  # None: the seed's schedule; a window >= max_seq_len is global
    dropout: float = 0.1
    init_std: float | None = None  # None: 1 / sqrt(dim), the seed's default
    rescale: float | None = 10.0  # the pooling logits' c_r; None is read as 10 (LEAP's repo)
    position: str = "learned"  # learned | decay | none
    mlp_ratio: float = 4.0
    extra: dict[str, Any] = field(default_factory=dict)  # unknown seed kwargs, kept for round trips

    def __init__(self, **kwargs):
        init_seed_config(self, kwargs)

    def _validate(self) -> None:
        if self.position == "rotary":
            raise ConfigError(
                "FastformerConfig.position 'rotary' is not supported: the additive pooling has no "
                "rotary form; use learned, decay or none"
            )
        check_seed_config(self, POSITIONS)
        if self.rescale is None:
            self.rescale = 10.0
        if isinstance(self.rescale, bool) or not isinstance(self.rescale, (int, float)) or self.rescale <= 0:
            raise ConfigError(
                f"FastformerConfig.rescale must be a number > 0 (LEAP's repo uses 10), got {self.rescale!r}"
            )

    @property
    def initializer_range(self) -> float:
        return self.init_std if self.init_std is not None else 1 / math.sqrt(self.dim)

    def layer_windows(self) -> list[int | None]:
        """Window per layer; None = global (a window >= max_seq_len covers every position)."""
        return seed_window_schedule(self.num_layers, self.max_seq_len, self.use_local_att, self.window_sizes)


# LEAP's sizes, which are gpt's: comparisons are at equal width, depth and context.
PRESETS = {name: dict(values) for name, values in LEAP_PRESETS.items()}


class FastformerForCausalLM(DecoderLM):
    def __init__(self, config: FastformerConfig):
        cfg = config
        blocks = seed_blocks(
            cfg,
            lambda window: FastformerAttention(
                cfg.dim,
                cfg.num_heads,
                window,
                cfg.dropout,
                rescale=cfg.rescale,
                decay=cfg.position == "decay",
            ),
        )
        super().__init__(
            cfg,
            blocks,
            vocab_size=cfg.vocab_size,
            dim=cfg.dim,
            max_seq_len=cfg.max_seq_len,
            position="learned" if cfg.position == "learned" else "none",
            dropout=cfg.dropout,
            norm="layernorm",
            norm_bias=True,
        )
        self.apply(lambda module: init_seed_weights(module, cfg.initializer_range))


__all__ = ["POSITIONS", "PRESETS", "FastformerConfig", "FastformerForCausalLM"]
