"""LEAP causal language model (seed 001: mtanghu/LEAP; spec specs/leap.md).

token embedding -> positions (learned by default) -> num_layers x [x + LEAP(LN x); x + MLP(LN x)]
-> LN -> logits tied to the embedding. Layers alternate global and windowed focus by the
seed's default schedule ([N] + [4, 8, 16, N] * k)[:num_layers], N = max_seq_len = global.

Training runs every layer in parallel form; `make_cache` gives one recurrent state per layer
so generation costs O(1) per token whatever the context (global layers keep three sums,
windowed layers their last W entries).

The seed's public API is kept: `LeapConfig(hidden_size=256, vocab_size=32100, n_head=4,
use_local_att=True, window_sizes=None, n_positions=1024, n_layer=4, hidden_dropout_prob=0.1,
initializer_range=None, rescale=None, **kwargs)` and `LeapForCausalLM(config)` whose forward
takes (input_ids, attention_mask=None, labels=None). Inside seqlab the same config uses the
package's size names (dim, num_heads, num_layers, max_seq_len); the seed's names are mapped
in `LeapConfig.__init__` and nowhere else.

Shapes: input_ids [b, t] -> logits [b, t, v].
"""

import math
import warnings
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import nn

from seqlab.errors import ConfigError
from seqlab.layers.embedding import check_token_ids
from seqlab.layers.leap import MultiheadLeap, head_dim_warning
from seqlab.layers.mlp import MLP
from seqlab.layers.rotary import RotaryEmbedding
from seqlab.models.output import ModelOutput, lm_loss

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
        names = {f.name for f in fields(self)}
        for seed_name, name in SEED_NAMES.items():
            if seed_name in kwargs:
                value = kwargs.pop(seed_name)
                if name in kwargs and kwargs[name] != value:
                    raise ConfigError(
                        f"LeapConfig got both {seed_name}={value!r} and {name}={kwargs[name]!r}"
                    )
                kwargs[name] = value
        extra = dict(kwargs.pop("extra", None) or {})
        extra.update({k: kwargs.pop(k) for k in list(kwargs) if k not in names})
        for f in fields(self):
            default = f.default_factory() if callable(f.default_factory) else f.default
            setattr(self, f.name, kwargs.get(f.name, default))
        self.extra = extra
        self._validate()

    def _validate(self) -> None:
        if self.dim % self.num_heads:
            raise ConfigError(
                f"hidden_size (dim) {self.dim} must be divisible by n_head (num_heads) {self.num_heads}"
            )
        if self.position not in POSITIONS:
            raise ConfigError(f"position {self.position!r} is not one of {POSITIONS}")
        if self.window_sizes is not None:
            self.window_sizes = [int(w) for w in self.window_sizes]
            if len(self.window_sizes) != self.num_layers:
                raise ConfigError(
                    f"window_sizes has {len(self.window_sizes)} entries but n_layer (num_layers) is "
                    f"{self.num_layers}: give one window per layer, or None for the default schedule"
                )
            if any(w < 1 for w in self.window_sizes):
                raise ConfigError(f"window_sizes must be positive, got {self.window_sizes}")
        if self.rescale is not None and self.rescale <= 0:
            raise ConfigError(f"rescale must be > 0 (the seed uses 10), got {self.rescale}")
        message = head_dim_warning(self.dim, self.num_heads)
        if message:
            warnings.warn(message, stacklevel=3)

    @property
    def focus(self) -> str:
        return "elu" if self.rescale is None else "exp"

    @property
    def initializer_range(self) -> float:
        return self.init_std if self.init_std is not None else 1 / math.sqrt(self.dim)

    def layer_windows(self) -> list[int | None]:
        """Window per layer; None = global (a window >= max_seq_len covers every position)."""
        if self.window_sizes is not None:
            windows = self.window_sizes
        elif self.use_local_att:
            n = self.max_seq_len
            windows = ([n] + [4, 8, 16, n] * math.ceil(self.num_layers / 4))[: self.num_layers]
        else:
            windows = [self.max_seq_len] * self.num_layers
        return [None if w >= self.max_seq_len else w for w in windows]


PRESETS = {
    # Same width, depth and context as gpt's presets, so comparisons are at equal size.
    # Head dims follow the seed's advice (32..128) where the width allows.
    "tiny": dict(dim=32, num_heads=1, num_layers=2, max_seq_len=32, dropout=0.0),
    "baby": dict(dim=128, num_heads=4, num_layers=4, max_seq_len=64, dropout=0.0),
    "small": dict(dim=384, num_heads=6, num_layers=6, max_seq_len=256, dropout=0.0),
}


class LeapBlock(nn.Module):
    """Pre-norm block around a linear-attention mixer (MultiheadLeap, or Fastformer's)."""

    def __init__(self, cfg: LeapConfig, window: int | None, mixer: type = MultiheadLeap):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.attn = mixer(
            cfg.dim,
            cfg.num_heads,
            window,
            cfg.dropout,
            focus=cfg.focus,
            rescale=cfg.rescale,
            decay=cfg.position == "decay",
        )
        self.norm2 = nn.LayerNorm(cfg.dim)
        self.mlp = MLP(cfg.dim, int(cfg.mlp_ratio * cfg.dim), cfg.dropout, bias=True)

    def forward(self, x, attention_mask=None, rotary=None, state=None, return_maps=False):
        maps = None
        if state is not None:
            a = self.attn.step(self.norm1(x), state, attention_mask, rotary)
        elif return_maps:
            a, maps = self.attn(self.norm1(x), attention_mask, rotary, return_maps=True)
        else:
            a = self.attn(self.norm1(x), attention_mask, rotary)
        x = x + a
        return x + self.mlp(self.norm2(x)), maps


@dataclass
class LeapCache:
    """Decoding state of a LeapForCausalLM: one LeapState per layer, real tokens per sample."""

    states: list
    seen: torch.Tensor  # [b] real (unpadded) tokens fed so far: the next learned position

    def layer_states(self):
        """Every LeapState, in layer order (a Fastformer layer keeps a pair)."""
        for state in self.states:
            yield from state if isinstance(state, tuple) else (state,)

    @property
    def length(self) -> int:
        """Tokens fed so far, pads included."""
        return next(self.layer_states()).count if self.states else 0

    def map_batch(self, fn) -> None:
        """Apply fn to every per-sample tensor (beam reorder, batch select or repeat)."""
        for state in self.layer_states():
            state.map_batch(fn)
        self.seen = fn(self.seen)

    def reset(self) -> None:
        """Back to an empty context, keeping the buffers."""
        self.map_batch(torch.zeros_like)
        for state in self.layer_states():
            state.count = 0


@dataclass
class LeapOutput(ModelOutput):
    """ModelOutput plus the explainability maps (per layer) when asked for."""

    maps: list[dict[str, torch.Tensor]] | None = None


class LeapForCausalLM(nn.Module):
    mixer: type = MultiheadLeap

    def __init__(self, config: LeapConfig):
        super().__init__()
        self.config = cfg = config
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.pos_embed = nn.Embedding(cfg.max_seq_len, cfg.dim) if cfg.position == "learned" else None
        self.rotary = (
            RotaryEmbedding(cfg.dim // cfg.num_heads, cfg.max_seq_len, cfg.rope_base)
            if cfg.position == "rotary"
            else None
        )
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(LeapBlock(cfg, w, self.mixer) for w in cfg.layer_windows())
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.head.weight = self.embed.weight
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @property
    def max_positions(self) -> int | None:
        """Longest sequence the model can read: n_positions with learned positions, else None."""
        return self.config.max_seq_len if self.pos_embed is not None else None

    def make_cache(self, batch_size: int, capacity: int | None = None, device=None) -> LeapCache:
        """Recurrent decoding state; `capacity` is ignored (the state does not grow with t)."""
        device = device or self.embed.weight.device
        states = [block.attn.init_state(batch_size, device) for block in self.blocks]
        return LeapCache(states, torch.zeros(batch_size, dtype=torch.long, device=device))

    def _positions(self, input_ids, attention_mask, cache):
        b, t = input_ids.shape
        if attention_mask is None:
            mask = torch.ones(b, t, dtype=torch.long, device=input_ids.device)
        else:
            mask = attention_mask.long()
        start = cache.seen[:, None] if cache is not None else 0
        # Positions count real tokens only, so a left-padded sequence gets the same positions
        # as the unpadded one.
        pos = (start + mask.cumsum(1) - 1).clamp(min=0)
        if cache is not None:
            cache.seen = cache.seen + mask.sum(1)
        return pos

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        cache: LeapCache | None = None,
        return_maps: bool = False,
    ) -> LeapOutput:
        """labels: the seed's/HF convention, aligned with input_ids and shifted here (pads and
        -100 ignored; never modified). targets: seqlab's convention, already shifted."""
        cfg = self.config
        check_token_ids(input_ids, cfg.vocab_size)
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} must equal input_ids shape "
                f"{tuple(input_ids.shape)}"
            )
        x = self.embed(input_ids)  # [b, t, c]
        pos = self._positions(input_ids, attention_mask, cache)
        if self.pos_embed is not None:
            # Positions are at most (tokens fed before) + t - 1: read them (a host sync) only when
            # that bound could pass the table.
            fed = cache.length if cache is not None else 0
            if fed + input_ids.shape[1] > cfg.max_seq_len and int(pos.max()) >= cfg.max_seq_len:
                raise ValueError(
                    f"sequence reaches position {int(pos.max())} but n_positions (max_seq_len) is "
                    f"{cfg.max_seq_len} with learned positions; use position='rotary' or 'none' for "
                    f"unbounded context, or a larger n_positions"
                )
            x = x + self.pos_embed(pos)
        x = self.dropout(x)
        maps = [] if return_maps else None
        for i, block in enumerate(self.blocks):
            state = cache.states[i] if cache is not None else None
            x, layer_maps = block(x, attention_mask, self.rotary, state, return_maps)
            if return_maps:
                maps.append(layer_maps)
        logits = self.head(self.norm(x))  # [b, t, v]
        loss = None
        if targets is not None:
            loss = lm_loss(logits, targets)
        elif labels is not None:
            shifted = labels[:, 1:]  # a new tensor below: the caller's labels are never modified
            if attention_mask is not None:
                shifted = shifted.masked_fill(attention_mask[:, 1:] == 0, -100)
            loss = lm_loss(logits[:, :-1], shifted)
        return LeapOutput(logits=logits, loss=loss, cache=cache, maps=maps)


__all__ = ["PRESETS", "LeapCache", "LeapConfig", "LeapForCausalLM", "LeapOutput"]
