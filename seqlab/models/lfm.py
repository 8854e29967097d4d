"""LFModel (LFM_Entropy, seed 000; spec specs/lfm.md) and its causal language model "lfm".

    adapt = featurizer(x)                  a summary of the sequence, [b, a] or [b, t, a]
    num_layers x [x + TokenMixing(LN x, adapt)        mixes positions (causal: j <= t)
                  x + ChannelMixing(LN x, adapt)      adaptive MLP over features
                  x + MixtureOfExperts(LN x, adapt)]  entropy-regularized adaptive experts
    y = Linear(LN x)

The seed's API is kept: `LFModel(token_dim, channel_dim, expert_dim, adapt_dim, num_experts,
lambda_entropy=0.01)`, `forward(x [b, t, token_dim]) -> [b, t, token_dim]` (a plain tensor,
for the seed's MSE path), and `entropy_regularization_loss(model, loss)` (seqlab.ops.entropy)
adds the MoE terms of the latest forward; `model.aux_losses()` and `model.metrics()` return
them by name ("moe{i}/entropy", "moe{i}/h_sample", "moe{i}/load{e}", ...).

Causal adapt input. The seed summarizes the whole sequence into one adapt vector per
sample, so every position's weights depend on the future. In causal mode (the default; what
language modeling and next-value forecasting need) the featurizer is the running mean
adapt_t = Linear(mean_{j <= t} LN(x_j)), a [b, t, a] summary of each prefix; every
AdaptiveLinear then uses one effective weight per (sample, position), which the low-rank
generator applies without materializing it, and the per-sequence MoE gate becomes one gate
per prefix. With causal=False the featurizer is the seed's per-sample mean, [b, a].

Dimensions. The seed chained its layers without residuals, which forced token_dim ==
channel_dim == expert_dim. Here the residual stream has width token_dim; channel_dim is the
hidden width of channel mixing and expert_dim the hidden width of each expert (their first
adaptive layer projects into it, their second back to token_dim, which plays the seed's
output Linear(expert_dim, token_dim) role), so any combination is valid. Departures (all
listed in the spec's defects): residuals, pre-norms and nonlinearities added; the seed had
none and computed one affine map per sample.

LFMForCausalLM ("lfm" in the registry): token embedding -> LFModel(causal) -> logits tied to
the embedding; forward(input_ids, targets=None) -> ModelOutput with the MoE terms in
aux_losses and the gate entropies and loads in metrics.

Shapes: x [b, t, c] -> [b, t, c] (c = token_dim); input_ids [b, t] -> logits [b, t, v].
"""

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from seqlab.errors import ConfigError
from seqlab.layers.adaptive import GENERATORS
from seqlab.layers.embedding import check_token_ids
from seqlab.layers.mixing import ChannelMixing, TokenMixing
from seqlab.layers.moe import GATES, MixtureOfExperts
from seqlab.layers.series import SeriesModel
from seqlab.models.output import ModelOutput, lm_loss
from seqlab.ops.entropy import ENTROPY_MODES
from seqlab.ops.moe import DISPATCH_IMPLS


@dataclass
class LFMConfig:
    vocab_size: int = 256
    dim: int = 128  # residual width (the seed's token_dim)
    num_layers: int = 4
    max_seq_len: int = 64
    num_heads: int = 4  # token-mixing heads: channels split into groups with their own mixing matrix
    adapt_dim: int = 32
    num_experts: int = 4
    top_k: int | None = None  # None: dense (every expert on every token), as in the seed
    gate: str = "sequence"  # "sequence" (from the adapt input, the seed) | "token" (from x_t)
    # mode "sample": > 0 sharpens each gate decision (measured: collapses usage onto one expert),
    # < 0 spreads it; mode "balance": sharp per decision and balanced overall
    lambda_entropy: float = 0.01
    entropy_mode: str = "sample"  # "sample" | "balance"
    load_balance_coef: float = 0.0
    z_loss_coef: float = 0.0
    channel_dim: int | None = None  # channel-mixing hidden width; None: dim
    expert_dim: int | None = None  # hidden width of each expert; None: dim
    rank: int = 8  # rank of the low-rank DeltaW generator
    generator: str = "lowrank"  # "lowrank" | "full" (the seed's Linear(adapt_dim, out * in))
    impl: str = "fast"  # top-k dispatch: "fast" | "reference"
    init_std: float = 0.02  # token embedding (tied output head)

    def __post_init__(self):
        for name in (
            "vocab_size",
            "dim",
            "num_layers",
            "max_seq_len",
            "num_heads",
            "adapt_dim",
            "num_experts",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"lfm {name} must be a positive int, got {getattr(self, name)}")
        if self.dim % self.num_heads:
            raise ConfigError(f"lfm dim {self.dim} must be divisible by num_heads {self.num_heads}")
        if self.top_k is not None and not 1 <= self.top_k <= self.num_experts:
            raise ConfigError(
                f"lfm top_k must be null (dense) or lie in [1, num_experts={self.num_experts}], "
                f"got {self.top_k}"
            )
        for name, choices in (
            ("gate", GATES),
            ("entropy_mode", ENTROPY_MODES),
            ("generator", GENERATORS),
            ("impl", DISPATCH_IMPLS),
        ):
            if getattr(self, name) not in choices:
                raise ConfigError(f"lfm {name} {getattr(self, name)!r} is not one of {choices}")


PRESETS = {
    # Same width, depth and context as gpt's presets; token-mixing heads as gpt's attention heads.
    "tiny": dict(dim=32, num_layers=2, max_seq_len=32, num_heads=2, adapt_dim=16),
    "baby": dict(dim=128, num_layers=4, max_seq_len=64, num_heads=4, adapt_dim=32),
    "small": dict(dim=384, num_layers=6, max_seq_len=256, num_heads=6, adapt_dim=64),
}


class LFBlock(nn.Module):
    """Pre-norm residual block: token mixing, channel mixing, MoE; moe_kwargs go to the MoE."""

    def __init__(
        self,
        dim: int,
        channel_dim: int,
        expert_dim: int,
        adapt_dim: int,
        *,
        max_seq_len: int,
        causal: bool,
        num_heads: int,
        rank: int,
        generator: str,
        **moe_kwargs,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mixing = TokenMixing(
            dim, adapt_dim, max_seq_len, causal, num_heads=num_heads, rank=rank, generator=generator
        )
        self.norm2 = nn.LayerNorm(dim)
        self.channel_mixing = ChannelMixing(
            dim, adapt_dim, hidden_dim=channel_dim, rank=rank, generator=generator
        )
        self.norm3 = nn.LayerNorm(dim)
        self.moe = MixtureOfExperts(
            dim, adapt_dim=adapt_dim, hidden_dim=expert_dim, rank=rank, generator=generator, **moe_kwargs
        )

    def forward(self, x: Tensor, adapt: Tensor) -> Tensor:
        x = x + self.token_mixing(self.norm1(x), adapt)
        x = x + self.channel_mixing(self.norm2(x), adapt)
        return x + self.moe(self.norm3(x), adapt)


class LFModel(nn.Module):
    def __init__(
        self,
        token_dim: int,
        channel_dim: int,
        expert_dim: int,
        adapt_dim: int,
        num_experts: int,
        lambda_entropy: float = 0.01,
        *,
        num_layers: int = 1,
        causal: bool = True,
        max_seq_len: int = 256,
        num_heads: int = 1,
        gate: str = "sequence",
        top_k: int | None = None,
        entropy_mode: str = "sample",
        load_balance_coef: float = 0.0,
        z_loss_coef: float = 0.0,
        rank: int = 8,
        generator: str = "lowrank",
        impl: str = "fast",
    ):
        super().__init__()
        sizes = dict(
            token_dim=token_dim,
            channel_dim=channel_dim,
            expert_dim=expert_dim,
            adapt_dim=adapt_dim,
            num_experts=num_experts,
            num_layers=num_layers,
            max_seq_len=max_seq_len,
        )
        bad = {k: v for k, v in sizes.items() if not isinstance(v, int) or v < 1}
        if bad:
            raise ConfigError(f"LFModel sizes must be positive ints, got {bad}")
        self.token_dim, self.max_seq_len, self.causal = token_dim, max_seq_len, causal
        self.featurizer_norm = nn.LayerNorm(token_dim)
        self.featurizer = nn.Linear(token_dim, adapt_dim)
        self.blocks = nn.ModuleList(
            LFBlock(
                token_dim,
                channel_dim,
                expert_dim,
                adapt_dim,
                max_seq_len=max_seq_len,
                causal=causal,
                num_heads=num_heads,
                rank=rank,
                generator=generator,
                num_experts=num_experts,
                lambda_entropy=lambda_entropy,
                gate=gate,
                top_k=top_k,
                entropy_mode=entropy_mode,
                load_balance_coef=load_balance_coef,
                z_loss_coef=z_loss_coef,
                impl=impl,
            )
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(token_dim)
        self.output = nn.Linear(token_dim, token_dim)

    def adapt_input(self, x: Tensor) -> Tensor:
        """The featurizer: [b, t, a] running-mean summary of each prefix (causal), else [b, a]."""
        h = self.featurizer_norm(x).float()
        if self.causal:
            count = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=h.dtype)
            summary = h.cumsum(1) / count[:, None]  # [b, t, c]
        else:
            summary = h.mean(1)  # [b, c]
        return self.featurizer(summary.to(x.dtype))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.token_dim:
            raise ValueError(
                f"LFModel wants x [batch, seq_len, token_dim={self.token_dim}], got {tuple(x.shape)}"
            )
        if x.shape[1] > self.max_seq_len:
            raise ValueError(
                f"sequence of {x.shape[1]} positions is longer than the model's max_seq_len "
                f"{self.max_seq_len}: build it with a larger max_seq_len or feed shorter windows"
            )
        adapt = self.adapt_input(x)
        for block in self.blocks:
            x = block(x, adapt)
        return self.output(self.norm(x))

    def aux_losses(self) -> dict[str, Tensor]:
        """The MoE losses of the latest forward, by name: moe{i}/entropy, load_balance, z_loss."""
        return {f"moe{i}/{k}": v for i, b in enumerate(self.blocks) for k, v in b.moe.last_aux_losses.items()}

    def metrics(self) -> dict[str, Tensor]:
        """Gate statistics of the latest forward: moe{i}/h_sample, h_usage, load{e}."""
        return {f"moe{i}/{k}": v for i, b in enumerate(self.blocks) for k, v in b.moe.last_metrics.items()}


def build_backbone(cfg: LFMConfig) -> LFModel:
    """The causal LFModel that both registered LFM models put between their input and output."""
    return LFModel(
        cfg.dim,
        cfg.channel_dim or cfg.dim,
        cfg.expert_dim or cfg.dim,
        cfg.adapt_dim,
        cfg.num_experts,
        cfg.lambda_entropy,
        num_layers=cfg.num_layers,
        causal=True,
        max_seq_len=cfg.max_seq_len,
        num_heads=cfg.num_heads,
        gate=cfg.gate,
        top_k=cfg.top_k,
        entropy_mode=cfg.entropy_mode,
        load_balance_coef=cfg.load_balance_coef,
        z_loss_coef=cfg.z_loss_coef,
        rank=cfg.rank,
        generator=cfg.generator,
        impl=cfg.impl,
    )


class LFMForCausalLM(nn.Module):
    def __init__(self, config: LFMConfig):
        super().__init__()
        self.config = cfg = config
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        nn.init.normal_(self.embed.weight, std=cfg.init_std)
        self.backbone = build_backbone(cfg)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, input_ids: Tensor, targets: Tensor | None = None) -> ModelOutput:
        check_token_ids(input_ids, self.config.vocab_size)
        h = self.backbone(self.embed(input_ids))  # [b, t, c]
        logits = self.head(h)  # [b, t, v]
        loss = lm_loss(logits, targets) if targets is not None else None
        return ModelOutput(
            logits=logits, loss=loss, aux_losses=self.backbone.aux_losses(), metrics=self.backbone.metrics()
        )


@dataclass
class LFMSeriesConfig(LFMConfig):
    """LFMConfig for forecasting: num_features series in and out (set by the forecast task);
    vocab_size and init_std are unused. residual: predict the change from the last value."""

    num_features: int = 1
    residual: bool = True


class LFMForecaster(nn.Module):
    """ "lfm_series": series features -> dim -> causal LFModel -> next value of every feature.

    x [b, t, f] -> prediction [b, t, f]; with residual=True the untrained model is the naive
    (last value) forecast, and training has to beat it.
    """

    def __init__(self, config: LFMSeriesConfig):
        super().__init__()
        self.config = cfg = config
        self.backbone = build_backbone(cfg)
        self.net = SeriesModel(self.backbone, cfg.num_features, cfg.dim, cfg.residual)

    def forward(self, x: Tensor, targets: Tensor | None = None) -> ModelOutput:
        pred = self.net(x)  # [b, t, f]
        loss = torch.nn.functional.mse_loss(pred.float(), targets.float()) if targets is not None else None
        return ModelOutput(
            logits=pred, loss=loss, aux_losses=self.backbone.aux_losses(), metrics=self.backbone.metrics()
        )


__all__ = [
    "PRESETS",
    "LFBlock",
    "LFMConfig",
    "LFMForCausalLM",
    "LFMForecaster",
    "LFMSeriesConfig",
    "LFModel",
    "build_backbone",
]
