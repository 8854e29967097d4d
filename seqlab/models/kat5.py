"""kat5: T5 v1.1 with every feed-forward a Kolmogorov-Arnold network (seed 004, the "KAT5" blog).

The model is seqlab.models.t5.T5Model unchanged (shared embedding, RMSNorm pre-norm residuals,
relative position bias, causal decoder fed the shifted target, cross-attention, untied head);
only the feed-forward of every encoder and decoder layer is the registry's `kan`
(seqlab.layers.kan.KANFeedForward): KANLinear c -> h -> c, a learnable B-spline plus a SiLU
base branch on every edge, so channels mix (the seed's "KAN" was element-wise).

Parameter match: `ffn_dim` keeps t5's meaning, the width of the gated-GELU feed-forward
(3 c ffn_dim weights) this model is compared with, and the KAN hidden width h is the one whose
parameter count is closest to it (seqlab.layers.kan.kan_hidden_for_params, for the KAN options
in ffn_options), so `kat5` and `t5` of the same preset and overrides have the same parameter
count to within a few hundred weights. `kan_hidden_dim` sets h directly instead.

KAN regularization (the KAN paper's L1 + entropy of the spline magnitudes) enters the loss
through aux_losses: kan_reg_coef (default 1e-5, about 1e-3 of the loss at init for the presets;
0 = off; ffn_options.reg_coef overrides it) times each feed-forward's regularization_loss(),
named "<block>/kan_reg".

Departures from the seed: it shared one layer instance across all layers and both stacks,
did not chain decoder layers, had no causal mask, fed the unshifted target and added
positions twice; here (as in t5) every layer has its own weights, layer i + 1 reads layer i,
the decoder is causal and reads the target shifted right, and positions enter once (relative
bias). Shapes as t5: input_ids [b, s], labels [b, t] -> logits [b, t, vocab_size].
"""

from dataclasses import dataclass

from seqlab.errors import ConfigError
from seqlab.layers.kan import kan_hidden_for_params
from seqlab.models.t5 import PRESETS as T5_PRESETS
from seqlab.models.t5 import T5Config, T5Model

# The options of the kan feed-forward that change its parameter count.
SIZE_OPTIONS = ("grid_size", "spline_order", "scale_spline", "basis")


@dataclass
class KAT5Config(T5Config):
    ffn: str = "kan"
    kan_hidden_dim: int | None = None  # None = matched to a gated GELU of width ffn_dim
    kan_reg_coef: float = 1e-5

    def __post_init__(self):
        super().__post_init__()
        h = self.kan_hidden_dim
        if h is not None and (isinstance(h, bool) or not isinstance(h, int) or h < 1):
            raise ConfigError(
                f"model.kan_hidden_dim must be null (parameter-matched) or an int >= 1, got {h!r}"
            )
        if not self.kan_reg_coef >= 0:
            raise ConfigError(f"model.kan_reg_coef must be >= 0 (0 = off), got {self.kan_reg_coef!r}")

    def ffn_arguments(self) -> dict:
        if self.ffn != "kan":
            return super().ffn_arguments()
        hidden = self.kan_hidden_dim
        if hidden is None:
            size_options = {k: v for k, v in self.ffn_options.items() if k in SIZE_OPTIONS}
            hidden = kan_hidden_for_params(self.dim, 3 * self.dim * self.ffn_dim, **size_options)
        return {"hidden_dim": hidden, "reg_coef": self.kan_reg_coef, **self.ffn_options}


PRESETS = {name: dict(values) for name, values in T5_PRESETS.items()}


class KAT5Model(T5Model):
    """T5Model over a KAT5Config (the class only names the architecture in the registry)."""

    def __init__(self, cfg: KAT5Config):
        if not isinstance(cfg, KAT5Config):
            raise ConfigError(f"KAT5Model takes a KAT5Config, got {type(cfg).__name__}")
        super().__init__(cfg)


__all__ = ["PRESETS", "KAT5Config", "KAT5Model"]
