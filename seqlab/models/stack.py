"""`stack`: mix and match, a decoder LM whose every layer picks its mixer and feed-forward.

    model.layers = "leap*2, attention, leap"                     LEAP with one attention layer
    model.layers = "attention+moe(num_experts=4,top_k=2)*4"      attention with MoE feed-forwards
    model.layers = "attention(window=16)*3, attention"           sliding window + one global layer

Grammar: a comma-separated list of layers; a layer is `mixer[(options)][+ffn[(options)]][*N]`.
`mixer` names an entry of seqlab.layers.mixers.MIXERS (attention, leap, fastformer,
token_mixing) or `none` (a feed-forward-only block); `ffn` an entry of
seqlab.layers.ffn.FFNS (mlp, swiglu, moe, adaptive), default `model.ffn`; options are
`key=value` pairs (values read as YAML scalars: 16, 1e-3, true, null) passed to that entry;
`*N` repeats the layer N times. `layers` fixes the depth (num_layers is set from it);
without it the stack is num_layers x `attention+mlp`, i.e. gpt.

Every layer is a seqlab.layers.block.Block; the model is the shared DecoderLM skeleton
(token embedding, rotary positions by default, final norm, tied head). When a layer reads
LFM's adapt input (token_mixing, the adaptive feed-forward, a MoE with adaptive experts or
a sequence gate) the model computes it once per forward with LFM's causal featurizer
(adapt_t = Linear(mean_{j <= t} LN(x_j)), width model.adapt_dim). Decoding keeps one
state per layer of whatever kind its mixer needs (KV caches beside LEAP's running sums), so
mixed stacks decode token by token. Presets have gpt's sizes. Initialization is gpt's
(normal(init_std), residual output projections scaled by 1/sqrt(2 num_layers)).

Shapes: input_ids [b, t] -> logits [b, t, v].
"""

import math
import re
from dataclasses import dataclass, field

from torch import nn

from seqlab.config import check_fields, parse_scalar
from seqlab.errors import ConfigError
from seqlab.layers.block import Block
from seqlab.layers.ffn import FFNS, MLP_MATCHED, make_ffn
from seqlab.layers.mixers import MIXERS, NEEDS_ADAPT, make_mixer
from seqlab.layers.mixing import AdaptFeaturizer
from seqlab.layers.norm import NORMS
from seqlab.models.decoder import POSITIONS, DecoderLM


@dataclass(frozen=True)
class LayerSpec:
    mixer: str
    mixer_options: dict = field(default_factory=dict)
    ffn: str | None = None  # None: the config's default feed-forward
    ffn_options: dict = field(default_factory=dict)


_ITEM = re.compile(
    r"^(?P<mixer>\w+)\s*(?:\((?P<mopts>[^()]*)\))?"
    r"\s*(?:\+\s*(?P<ffn>\w+)\s*(?:\((?P<fopts>[^()]*)\))?)?"
    r"\s*(?:\*\s*(?P<count>\d+))?$"
)


def _split_top_level(spec: str) -> list[str]:
    parts, depth, current = [], 0, []
    for ch in spec:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts]


def _options(text: str | None, where: str) -> dict:
    out = {}
    for pair in _split_top_level(text or ""):
        if not pair:
            continue
        if "=" not in pair:
            raise ConfigError(f"model.layers: option {pair!r} of {where} must look like key=value")
        key, value = pair.split("=", 1)
        out[key.strip()] = parse_scalar(value.strip())
    return out


def parse_layers(spec: str) -> list[LayerSpec]:
    """ "leap*2, attention+moe(top_k=2)" -> one LayerSpec per layer (repeats expanded)."""
    layers = []
    for item in _split_top_level(spec):
        m = _ITEM.match(item)
        if not item or m is None:
            raise ConfigError(
                f"model.layers: cannot read {item!r}; a layer is mixer[(k=v,...)][+ffn[(k=v,...)]][*N], "
                f"e.g. 'leap*2, attention(window=16)+moe(top_k=2), leap'"
            )
        mixer, ffn = m["mixer"], m["ffn"]
        if mixer != "none" and mixer not in MIXERS:
            raise ConfigError(
                f"model.layers: unknown mixer {mixer!r}; choose one of {', '.join(MIXERS)} or none"
            )
        if ffn is not None and ffn != "none" and ffn not in FFNS:
            raise ConfigError(
                f"model.layers: unknown feed-forward {ffn!r}; choose one of {', '.join(FFNS)} or none"
            )
        if mixer == "none" and ffn == "none":
            raise ConfigError(f"model.layers: {item!r} has neither a mixer nor a feed-forward")
        count = int(m["count"] or 1)
        if count < 1:
            raise ConfigError(f"model.layers: {item!r} repeats a layer {count} times; use *1 or more")
        layer = LayerSpec(mixer, _options(m["mopts"], mixer), ffn, _options(m["fopts"], ffn or "the ffn"))
        layers.extend([layer] * count)
    if not layers:
        raise ConfigError("model.layers is empty: give at least one layer, e.g. 'attention*4'")
    return layers


@dataclass
class StackConfig:
    vocab_size: int = 256
    dim: int = 128
    num_layers: int = 4  # set from `layers` when given
    num_heads: int = 4
    max_seq_len: int = 64
    layers: str | None = None  # None: num_layers x "attention"
    ffn: str = "mlp"  # feed-forward of a layer that names none
    mlp_ratio: float = 4.0
    norm: str = "layernorm"
    bias: bool = False
    dropout: float = 0.0
    position: str = "rotary"  # rotary | learned | none
    rope_base: float = 10000.0
    init_std: float = 0.02
    adapt_dim: int = 32  # width of LFM's adapt input, when a layer reads it (token_mixing, adaptive)

    def __post_init__(self):
        check_fields(
            self,
            positive_ints=("vocab_size", "dim", "num_layers", "num_heads", "max_seq_len", "adapt_dim"),
            above={"mlp_ratio": 0, "rope_base": 1, "init_std": 0},
            unit=("dropout",),
            choices={"norm": NORMS, "ffn": tuple(FFNS) + ("none",), "position": POSITIONS},
        )
        if self.dim % self.num_heads or (self.dim // self.num_heads) % 2:
            raise ConfigError(
                f"model.num_heads={self.num_heads} must divide model.dim={self.dim} into an even head dim"
            )
        if self.layers is not None:
            self.num_layers = len(parse_layers(self.layers))

    def layer_specs(self) -> list[LayerSpec]:
        if self.layers is None:
            return [LayerSpec("attention")] * self.num_layers
        return parse_layers(self.layers)


PRESETS = {
    # gpt's sizes.
    "tiny": dict(dim=32, num_layers=2, num_heads=2, max_seq_len=32),
    "baby": dict(dim=128, num_layers=4, num_heads=4, max_seq_len=64),
    "small": dict(dim=384, num_layers=6, num_heads=6, max_seq_len=256),
}


def needs_adapt(spec: LayerSpec, default_ffn: str) -> tuple[bool, bool]:
    """(mixer, ffn) of this layer read LFM's adapt input from the context."""
    ffn = spec.ffn or default_ffn
    ffn_reads = ffn == "adaptive" or (
        ffn == "moe"
        and (spec.ffn_options.get("expert") == "adaptive" or spec.ffn_options.get("gate") == "sequence")
    )
    return spec.mixer in NEEDS_ADAPT, ffn_reads


def _build_block(cfg: StackConfig, i: int, spec: LayerSpec) -> Block:
    mixer_adapt, ffn_adapt = needs_adapt(spec, cfg.ffn)
    if mixer_adapt:
        spec = LayerSpec(
            spec.mixer, {"adapt_dim": cfg.adapt_dim, **spec.mixer_options}, spec.ffn, spec.ffn_options
        )
    if ffn_adapt:
        spec = LayerSpec(
            spec.mixer, spec.mixer_options, spec.ffn, {"adapt_dim": cfg.adapt_dim, **spec.ffn_options}
        )
    mixer = None
    if spec.mixer != "none":
        try:
            mixer = make_mixer(
                spec.mixer,
                cfg.dim,
                num_heads=cfg.num_heads,
                dropout=cfg.dropout,
                max_seq_len=cfg.max_seq_len,
                **spec.mixer_options,
            )
        except ValueError as e:
            raise ConfigError(f"model.layers, layer {i}: {e}") from None
    ffn_kind = spec.ffn or cfg.ffn
    ffn = None
    if ffn_kind != "none":
        width = "mlp_hidden_dim" if ffn_kind in MLP_MATCHED else "hidden_dim"
        options = {width: int(cfg.mlp_ratio * cfg.dim), "dropout": cfg.dropout, **spec.ffn_options}
        try:
            ffn = make_ffn(ffn_kind, cfg.dim, **options)
        except ValueError as e:
            raise ConfigError(f"model.layers, layer {i}: {e}") from None
    return Block(cfg.dim, mixer, ffn, cfg.norm, bias=cfg.bias, name=f"layer{i}")


class StackLM(DecoderLM):
    def __init__(self, config: StackConfig):
        cfg = config
        specs = cfg.layer_specs()
        blocks = [_build_block(cfg, i, spec) for i, spec in enumerate(specs)]
        adapt = any(any(needs_adapt(spec, cfg.ffn)) for spec in specs)
        super().__init__(
            cfg,
            blocks,
            vocab_size=cfg.vocab_size,
            dim=cfg.dim,
            max_seq_len=cfg.max_seq_len,
            position=cfg.position,
            rotary_dim=cfg.dim // cfg.num_heads,
            rope_base=cfg.rope_base,
            dropout=cfg.dropout,
            norm=cfg.norm,
            norm_bias=cfg.bias,
            featurizer=AdaptFeaturizer(cfg.dim, cfg.adapt_dim) if adapt else None,
        )
        self.apply(self._init_weights)
        std = cfg.init_std / math.sqrt(2 * len(blocks))
        for block in self.blocks:
            for sub in (block.mixer, block.ffn):
                proj = getattr(sub, "proj", None)
                if isinstance(proj, nn.Linear):
                    nn.init.normal_(proj.weight, mean=0.0, std=std)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)


__all__ = ["PRESETS", "LayerSpec", "StackConfig", "StackLM", "parse_layers"]
