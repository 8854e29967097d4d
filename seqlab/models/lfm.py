"""LFModel (LFM_Entropy, seed 000: davidwynter/LFM_Entropy) and its models "lfm" and "lfm_series".

    adapt = featurizer(x)                  a summary of the sequence, [b, a] or [b, t, a]
    layer i = two seqlab.layers.block.Block:
        "mix{i}": x + TokenMixing(LN x)       mixes positions (causal: j <= t)
                  x + ChannelMixing(LN x)     adaptive MLP over features
        "moe{i}": x + MixtureOfExperts(LN x)  entropy-regularized adaptive experts
    y = Linear(LN x)

Every adaptive sublayer reads the adapt input from the block Context (ctx.adapt); the MoE
reports its losses and gate statistics there, under its block's name ("moe{i}/entropy",
"moe{i}/h_sample", "moe{i}/load{e}", ...), and the models return them in ModelOutput.

The seed's API is kept: `LFModel(token_dim, channel_dim, expert_dim, adapt_dim, num_experts,
lambda_entropy=0.01)`, `forward(x [b, t, token_dim]) -> [b, t, token_dim]` (a plain tensor,
for the seed's MSE path), and `entropy_regularization_loss(model, loss)` (seqlab.ops.entropy)
adds the MoE terms of the latest forward. That is the one exception to "nothing is left on a
module": called the seed's way (without a Context), LFModel keeps its latest forward's aux
losses and metrics in `last_aux_losses` / `last_metrics` (also `aux_losses()` / `metrics()`).
Called with a Context, as the registered models call it, it keeps nothing.

Causal adapt input. The seed summarizes the whole sequence into one adapt vector per
sample, so every position's weights depend on the future. In causal mode (the default; what
language modeling and next-value forecasting need) the featurizer is the running mean
adapt_t = Linear(mean_{j <= t} LN(x_j)), a [b, t, a] summary of each prefix; every
AdaptiveLinear then uses one effective weight per (sample, position), which the low-rank
generator applies without materializing it, and the per-sequence MoE gate becomes one gate
per prefix. With causal=False the featurizer is the seed's per-sample mean, [b, a].

Decoding. A causal LFModel decodes from a seqlab.layers.cache.Cache (`make_cache`): one
TokenMixingState per token-mixing block (the normed inputs it mixes; the MoE blocks keep
none) and the featurizer's running sum and count of LN(x_j) in `cache.extra`
(seqlab.layers.mixing.AdaptFeaturizer). A new token costs O(t) (one row of each mixing
matrix), not a recomputed prefix. Positions end at max_seq_len (the mixing matrices have one
row per position): a call that would pass it is a ConfigError naming max_seq_len, and
`max_positions` tells seqlab.models.generation to recompute a cropped prefix from there, as
uncached decoding does.

Dimensions. The seed chained its layers without residuals, which forced token_dim ==
channel_dim == expert_dim. Here the residual stream has width token_dim; channel_dim is the
hidden width of channel mixing and expert_dim the hidden width of each expert (their first
adaptive layer projects into it, their second back to token_dim, which plays the seed's
output Linear(expert_dim, token_dim) role), so any combination is valid. Departures from the
seed, each fixing one of its defects: residuals, pre-norms and nonlinearities added (it had
none and computed one affine map per sample).

LFMForCausalLM ("lfm"): token embedding -> LFModel(causal) -> logits tied to the embedding.
LFMForecaster ("lfm_series"): series features -> Linear -> LFModel(causal) -> Linear -> the
next value of every feature (seqlab.layers.series.SeriesModel, which holds the backbone: it is
registered once).

Shapes: x [b, t, c] -> [b, t, c] (c = token_dim); input_ids [b, t] -> logits [b, t, v];
series [b, t, f] -> predictions [b, t, f].
"""

import functools
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from seqlab.errors import ConfigError
from seqlab.layers.adaptive import GENERATORS
from seqlab.layers.block import Block, Context, blocks_init_state
from seqlab.layers.cache import Cache
from seqlab.layers.embedding import check_token_ids
from seqlab.layers.mixing import AdaptFeaturizer, ChannelMixing, TokenMixing
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
            "rank",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"lfm {name} must be a positive int, got {getattr(self, name)}")
        for name in ("channel_dim", "expert_dim"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(
                    f"lfm {name} must be a positive int or null (= dim), got {getattr(self, name)}"
                )
        if self.dim % self.num_heads:
            raise ConfigError(f"lfm dim {self.dim} must be divisible by num_heads {self.num_heads}")
        if self.top_k is not None and not 1 <= self.top_k <= self.num_experts:
            raise ConfigError(
                f"lfm top_k must be null (dense) or lie in [1, num_experts={self.num_experts}], "
                f"got {self.top_k}"
            )
        for name in ("load_balance_coef", "z_loss_coef"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"lfm {name} must be >= 0 (0 = off), got {getattr(self, name)}")
        if not abs(self.lambda_entropy) < float("inf"):
            raise ConfigError(f"lfm lambda_entropy must be a finite number, got {self.lambda_entropy}")
        if not self.init_std > 0:
            raise ConfigError(f"lfm init_std must be > 0, got {self.init_std}")
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


def lfm_blocks(
    dim: int,
    channel_dim: int,
    expert_dim: int,
    adapt_dim: int,
    *,
    num_layers: int,
    max_seq_len: int,
    causal: bool,
    num_heads: int,
    rank: int,
    generator: str,
    **moe_kwargs,
) -> list[Block]:
    """LFM's layers as Blocks: layer i is Block "mix{i}" (token mixing, channel mixing) and
    Block "moe{i}" (the mixture of adaptive experts alone); moe_kwargs go to the MoE."""
    adaptive = dict(rank=rank, generator=generator)
    blocks = []
    for i in range(num_layers):
        mixer = TokenMixing(dim, adapt_dim, max_seq_len, causal, num_heads=num_heads, **adaptive)
        channel = ChannelMixing(dim, adapt_dim, hidden_dim=channel_dim, **adaptive)
        expert = functools.partial(ChannelMixing, dim, adapt_dim, hidden_dim=expert_dim, **adaptive)
        moe = MixtureOfExperts(dim, expert=expert, adapt_dim=adapt_dim, **moe_kwargs)
        blocks.append(Block(dim, mixer, channel, "layernorm", bias=True, name=f"mix{i}"))
        blocks.append(Block(dim, None, moe, "layernorm", bias=True, name=f"moe{i}"))
    return blocks


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
        self.featurizer = AdaptFeaturizer(token_dim, adapt_dim, causal)
        self.blocks = nn.ModuleList(
            lfm_blocks(
                token_dim,
                channel_dim,
                expert_dim,
                adapt_dim,
                num_layers=num_layers,
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
        )
        self.norm = nn.LayerNorm(token_dim)
        self.output = nn.Linear(token_dim, token_dim)
        # The seed API's aux losses / metrics of the latest forward called without a Context.
        self.last_aux_losses: dict[str, Tensor] = {}
        self.last_metrics: dict[str, Tensor] = {}

    @property
    def can_decode(self) -> bool:
        return self.causal

    def make_cache(self, batch_size: int, capacity: int | None = None, device=None, dtype=None) -> Cache:
        """Decoding state for batch_size sequences of up to capacity (<= max_seq_len) tokens."""
        if not self.causal:
            raise ValueError("a bidirectional LFModel (causal=False) cannot decode token by token")
        p = self.featurizer.proj.weight
        device, dtype = device or p.device, dtype or p.dtype
        capacity = min(capacity or self.max_seq_len, self.max_seq_len)
        layers = blocks_init_state(self.blocks, batch_size, capacity, device, dtype)
        return Cache(layers)

    def adapt_input(self, x: Tensor, cache: Cache | None = None) -> Tensor:
        """The featurizer: [b, t, a] running-mean summary of each prefix (causal), else [b, a].
        With a cache its running sum continues from the tokens seen (and is updated)."""
        return self.featurizer(x, cache=cache)

    def forward(self, x: Tensor, ctx: Context | None = None, cache: Cache | None = None) -> Tensor:
        """x [b, t, token_dim] -> [b, t, token_dim]. The MoE terms go to ctx (aux, metrics);
        without a ctx (the seed's call) they are kept in last_aux_losses / last_metrics."""
        if x.dim() != 3 or x.shape[-1] != self.token_dim:
            raise ValueError(
                f"LFModel wants x [batch, seq_len, token_dim={self.token_dim}], got {tuple(x.shape)}"
            )
        start = cache.length if cache is not None else 0
        if start + x.shape[1] > self.max_seq_len:
            seen = f" ({start} decoded before this call)" if start else ""
            raise ConfigError(
                f"sequence of {start + x.shape[1]} positions{seen} is longer than the model's "
                f"max_seq_len {self.max_seq_len}: build it with a larger max_seq_len or feed shorter "
                "windows (generation recomputes a cropped prefix past it)"
            )
        seed_call = ctx is None
        ctx = Context() if seed_call else ctx
        ctx.adapt = self.adapt_input(x, cache)
        for i, block in enumerate(self.blocks):
            x = block(x, ctx, cache.layers[i] if cache is not None else None)
        ctx.adapt = None
        # Only the seed's context-free call keeps its losses (for entropy_regularization_loss);
        # any other call clears them, so a stale graph is never added again.
        self.last_aux_losses, self.last_metrics = (ctx.aux, ctx.metrics) if seed_call else ({}, {})
        return self.output(self.norm(x))

    def aux_losses(self) -> dict[str, Tensor]:
        """The seed API: the MoE losses of the latest forward called without a Context, by name:
        moe{i}/entropy, load_balance, z_loss."""
        return dict(self.last_aux_losses)

    def metrics(self) -> dict[str, Tensor]:
        """The seed API: gate statistics of the latest forward called without a Context:
        moe{i}/h_sample, h_usage, load{e}."""
        return dict(self.last_metrics)


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
    """ "lfm": input_ids [b, t] -> embedding -> causal LFModel -> tied logits [b, t, v]."""

    causal = True
    can_decode = True

    def __init__(self, config: LFMConfig):
        super().__init__()
        self.config = cfg = config
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        nn.init.normal_(self.embed.weight, std=cfg.init_std)
        self.backbone = build_backbone(cfg)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.head.weight = self.embed.weight

    @property
    def max_positions(self) -> int:
        """Cached decoding ends at max_seq_len (one mixing-matrix row per position)."""
        return self.config.max_seq_len

    def make_cache(self, batch_size: int, capacity: int | None = None, device=None, dtype=None) -> Cache:
        return self.backbone.make_cache(batch_size, capacity, device, dtype)

    def forward(
        self, input_ids: Tensor, targets: Tensor | None = None, cache: Cache | None = None
    ) -> ModelOutput:
        check_token_ids(input_ids, self.config.vocab_size)
        ctx = Context()
        h = self.backbone(self.embed(input_ids), ctx, cache)  # [b, t, c]
        logits = self.head(h)  # [b, t, v]
        loss = lm_loss(logits, targets) if targets is not None else None
        return ModelOutput(logits=logits, loss=loss, aux_losses=ctx.aux, metrics=ctx.metrics, cache=cache)


@dataclass
class LFMSeriesConfig(LFMConfig):
    """LFMConfig for forecasting: num_features series in and out (set by the forecast task);
    vocab_size and init_std are unused. residual: predict the change from the last value."""

    num_features: int = 1
    residual: bool = True

    def __post_init__(self):
        super().__post_init__()
        if self.num_features < 1:
            raise ConfigError(f"lfm_series num_features must be a positive int, got {self.num_features}")


class LFMForecaster(nn.Module):
    """ "lfm_series": series features -> dim -> causal LFModel -> next value of every feature.

    x [b, t, f] -> prediction [b, t, f]; with residual=True the untrained model is the naive
    (last value) forecast, and training has to beat it. The backbone lives in `net` only
    (`backbone` is a view of net.backbone, not a second registration).
    """

    causal = True
    can_decode = True

    def __init__(self, config: LFMSeriesConfig):
        super().__init__()
        self.config = cfg = config
        self.net = SeriesModel(build_backbone(cfg), cfg.num_features, cfg.dim, cfg.residual)

    @property
    def backbone(self) -> LFModel:
        return self.net.backbone

    @property
    def max_positions(self) -> int:
        return self.config.max_seq_len

    def make_cache(self, batch_size: int, capacity: int | None = None, device=None, dtype=None) -> Cache:
        return self.backbone.make_cache(batch_size, capacity, device, dtype)

    def forward(self, x: Tensor, targets: Tensor | None = None, cache: Cache | None = None) -> ModelOutput:
        ctx = Context()
        pred = self.net(x, ctx, cache)  # [b, t, f]
        loss = F.mse_loss(pred.float(), targets.float()) if targets is not None else None
        return ModelOutput(logits=pred, loss=loss, aux_losses=ctx.aux, metrics=ctx.metrics, cache=cache)


__all__ = [
    "PRESETS",
    "LFMConfig",
    "LFMForCausalLM",
    "LFMForecaster",
    "LFMSeriesConfig",
    "LFModel",
    "build_backbone",
    "lfm_blocks",
]
