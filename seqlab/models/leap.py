"""LEAP causal language model (seed 001: mtanghu/LEAP).

    token embedding [+ learned positions] -> num_layers x Block(LEAP mixer, GELU MLP) -> LN
    -> logits tied to the embedding

built on seqlab.models.decoder.DecoderLM from seqlab.layers.block.Block(dim, MultiheadLeap,
MLP, "layernorm"). Layers alternate global and windowed focus by the seed's default schedule
([N] + [4, 8, 16, N] * k)[:num_layers], N = max_seq_len = global. Positions: "learned" (the
seed's, bounded by max_seq_len), "rotary" (on Q, F and K), "decay" (no table: every head's
focus sums fade old tokens by gamma_h, ALiBi's slopes) or "none".

Training runs every layer in parallel form; `make_cache` gives a seqlab.layers.cache.Cache
with one recurrent LeapState per layer, so generation costs O(1) per token whatever the
context (global layers keep three sums, windowed layers their last W entries).
`forward(..., return_maps=True)` returns each layer's implicit attention and gate in
ModelOutput.maps (what `seqlab explain` draws).

The seed's public API is kept: `LeapConfig(hidden_size=256, vocab_size=32100, n_head=4,
use_local_att=True, window_sizes=None, n_positions=1024, n_layer=4, hidden_dropout_prob=0.1,
initializer_range=None, rescale=None, **kwargs)` and `LeapForCausalLM(config)` whose forward
takes (input_ids, attention_mask=None, labels=None). Inside seqlab the same config uses the
package's size names (dim, num_heads, num_layers, max_seq_len); the seed's names are mapped
by `init_seed_config` (shared with seqlab.models.fastformer) and nowhere else.

Shapes: input_ids [b, t] -> logits [b, t, v].
"""

import math
import warnings
from dataclasses import dataclass, field, fields
from typing import Any

from torch import nn

from seqlab.errors import ConfigError
from seqlab.layers.block import Block
from seqlab.layers.ffn import make_ffn
from seqlab.layers.leap import MultiheadLeap, head_dim_warning
from seqlab.models.decoder import DecoderLM

POSITIONS = ("learned", "rotary", "decay", "none")

# The seed's keyword -> seqlab's field.
SEED_NAMES = {
    "hidden_size": "dim",
    "n_head": "num_heads",
    "n_layer": "num_layers",
    "n_positions": "max_seq_len",
    "hidden_dropout_prob": "dropout",
    "initializer_range": "init_std",
}
SEQLAB_TO_SEED = {name: seed_name for seed_name, name in SEED_NAMES.items()}


def init_seed_config(config, kwargs: dict) -> None:
    """The __init__ of the LEAP-family configs: seed names mapped to seqlab's, unknown keyword
    arguments kept in `extra` (the seed and Hugging Face configs accept them), the dataclass
    defaults for the rest, then `config._validate()`."""
    kwargs = dict(kwargs)
    cls = type(config).__name__
    for seed_name, name in SEED_NAMES.items():
        if seed_name in kwargs:
            value = kwargs.pop(seed_name)
            if name in kwargs and kwargs[name] != value:
                raise ConfigError(
                    f"{cls} got both {seed_name}={value!r} and {name}={kwargs[name]!r}; give one"
                )
            kwargs[name] = value
    names = {f.name for f in fields(config)}
    extra = dict(kwargs.pop("extra", None) or {})
    extra.update({k: kwargs.pop(k) for k in list(kwargs) if k not in names})
    for f in fields(config):
        default = f.default_factory() if callable(f.default_factory) else f.default
        setattr(config, f.name, kwargs.get(f.name, default))
    config.extra = extra
    config._validate()


def seed_window_schedule(
    num_layers: int, max_seq_len: int, use_local_att: bool, window_sizes: list[int] | None
) -> list[int | None]:
    """Window per layer; None = global (a window >= max_seq_len covers every position).

    window_sizes if given, else the seed's ([N] + [4, 8, 16, N] * k)[:num_layers] with
    use_local_att, else every layer global.
    """
    if window_sizes is not None:
        windows = window_sizes
    elif use_local_att:
        n = max_seq_len
        windows = ([n] + [4, 8, 16, n] * math.ceil(num_layers / 4))[:num_layers]
    else:
        windows = [max_seq_len] * num_layers
    return [None if w >= max_seq_len else w for w in windows]


def _name(key: str) -> str:
    seed = SEQLAB_TO_SEED.get(key)
    return f"{key} ({seed})" if seed else key


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_seed_config(config, positions: tuple[str, ...]) -> None:
    """Validate the fields the LEAP-family configs share; ConfigError naming key, value, range."""
    cls = type(config).__name__

    def fail(key: str, valid: str) -> None:
        raise ConfigError(f"{cls}.{_name(key)} must be {valid}, got {getattr(config, key)!r}")

    for key in ("vocab_size", "dim", "num_heads", "num_layers", "max_seq_len"):
        if not _is_int(getattr(config, key)) or getattr(config, key) < 1:
            fail(key, "an int >= 1")
    if config.dim % config.num_heads:
        raise ConfigError(
            f"{cls}.dim (hidden_size) {config.dim} must be divisible by num_heads (n_head) "
            f"{config.num_heads}; change one of them"
        )
    if not isinstance(config.use_local_att, bool):
        fail("use_local_att", "true or false")
    if not _is_number(config.dropout) or not 0 <= config.dropout < 1:
        fail("dropout", "a number in [0, 1)")
    if config.init_std is not None and (not _is_number(config.init_std) or not config.init_std > 0):
        fail("init_std", "a number > 0, or None for 1 / sqrt(dim)")
    if config.position not in positions:
        fail("position", f"one of {', '.join(positions)}")
    if not _is_number(config.mlp_ratio) or int(config.mlp_ratio * config.dim) < 1:
        fail("mlp_ratio", "a number > 0 (the MLP's hidden width is mlp_ratio * dim)")
    if config.window_sizes is not None:
        windows = config.window_sizes
        if not isinstance(windows, (list, tuple)) or not all(_is_int(w) and w >= 1 for w in windows):
            fail(
                "window_sizes",
                "a list of positive ints (one window per layer), or None (the seed's schedule)",
            )
        if len(windows) != config.num_layers:
            raise ConfigError(
                f"{cls}.window_sizes has {len(windows)} entries but n_layer (num_layers) is "
                f"{config.num_layers}: give one window per layer, or None for the default schedule"
            )
        config.window_sizes = list(windows)
    if not isinstance(config.extra, dict):
        fail("extra", "a mapping")
    message = head_dim_warning(config.dim, config.num_heads)
    if message:
        warnings.warn(message, stacklevel=5)  # the line that built the config


def init_seed_weights(module: nn.Module, std: float) -> None:
    """The seed's init: normal(0, std) for linear and embedding weights, zero linear biases."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=std)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


@dataclass(init=False)
class LeapConfig:
    vocab_size: int = 32100
    dim: int = 256
    num_heads: int = 4
    num_layers: int = 4
    max_seq_len: int = 1024
    use_local_att: bool = True
    window_sizes: list[int] | None = None  # None: the seed's schedule; a window >= max_seq_len is global
    dropout: float = 0.1
    init_std: float | None = None  # None: 1 / sqrt(dim), the seed's default
    rescale: float | None = None  # None: "elu" focus; a number c_r: "exp" focus with that rescale
    position: str = "learned"  # learned | rotary | decay | none
    rope_base: float = 10000.0
    mlp_ratio: float = 4.0
    extra: dict[str, Any] = field(default_factory=dict)  # unknown seed kwargs, kept for round trips

    def __init__(self, **kwargs):
        init_seed_config(self, kwargs)

    def _validate(self) -> None:
        check_seed_config(self, POSITIONS)
        if self.rescale is not None and (not _is_number(self.rescale) or not self.rescale > 0):
            raise ConfigError(
                f"LeapConfig.rescale must be None (elu focus) or a number > 0 (exp focus; the seed "
                f"uses 10), got {self.rescale!r}"
            )
        if not _is_number(self.rope_base) or not self.rope_base > 1:
            raise ConfigError(f"LeapConfig.rope_base must be a number > 1, got {self.rope_base!r}")
        if self.position == "rotary" and (self.dim // self.num_heads) % 2:
            raise ConfigError(
                f"LeapConfig.position 'rotary' needs an even head dim, but dim (hidden_size) {self.dim} / "
                f"num_heads (n_head) {self.num_heads} = {self.dim // self.num_heads}; change n_head"
            )

    @property
    def focus(self) -> str:
        return "elu" if self.rescale is None else "exp"

    @property
    def initializer_range(self) -> float:
        return self.init_std if self.init_std is not None else 1 / math.sqrt(self.dim)

    def layer_windows(self) -> list[int | None]:
        """Window per layer; None = global (a window >= max_seq_len covers every position)."""
        return seed_window_schedule(self.num_layers, self.max_seq_len, self.use_local_att, self.window_sizes)


PRESETS = {
    # Same width, depth and context as gpt's presets, so comparisons are at equal size.
    # Head dims follow the seed's advice (32..128) where the width allows.
    "tiny": dict(dim=32, num_heads=1, num_layers=2, max_seq_len=32, dropout=0.0),
    "baby": dict(dim=128, num_heads=4, num_layers=4, max_seq_len=64, dropout=0.0),
    "small": dict(dim=384, num_heads=6, num_layers=6, max_seq_len=256, dropout=0.0),
}


def seed_blocks(cfg, mixer_for_window) -> list[Block]:
    """The LEAP repository's layers (LEAP's and Fastformer's): per window of the schedule,
    Block(LayerNorm, mixer_for_window(window), LayerNorm, GELU MLP with biases)."""
    hidden = int(cfg.mlp_ratio * cfg.dim)
    return [
        Block(
            cfg.dim,
            mixer_for_window(window),
            make_ffn("mlp", cfg.dim, hidden_dim=hidden, dropout=cfg.dropout, bias=True),
            "layernorm",
            bias=True,
        )
        for window in cfg.layer_windows()
    ]


class LeapForCausalLM(DecoderLM):
    def __init__(self, config: LeapConfig):
        cfg = config
        blocks = seed_blocks(
            cfg,
            lambda window: MultiheadLeap(
                cfg.dim,
                cfg.num_heads,
                window,
                cfg.dropout,
                focus=cfg.focus,
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
            # "decay" positions live in the mixers' sums: the skeleton adds none.
            position="none" if cfg.position == "decay" else cfg.position,
            rotary_dim=cfg.dim // cfg.num_heads,
            rope_base=cfg.rope_base,
            dropout=cfg.dropout,
            norm="layernorm",
            norm_bias=True,
        )
        self.apply(lambda module: init_seed_weights(module, cfg.initializer_range))


__all__ = [
    "POSITIONS",
    "PRESETS",
    "SEED_NAMES",
    "LeapConfig",
    "LeapForCausalLM",
    "check_seed_config",
    "init_seed_config",
    "init_seed_weights",
    "seed_window_schedule",
]
