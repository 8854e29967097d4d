"""The model registry: one line per architecture.

Each entry names the config dataclass, the model class, its presets (always a CPU-sized
"tiny") and the task it is trained on. `build_model("gpt", "baby", vocab_size=65)`.
"""

from dataclasses import dataclass, field

from seqlab.config import from_dict
from seqlab.errors import ConfigError
from seqlab.models import autonomic_host, fastformer, gpt, heptapod, kat5, leap, lfm, stack, t5
from seqlab.models import hybrid as hybrid_lm
from seqlab.models import xtransformers as xt
from seqlab.models.output import ModelOutput


@dataclass(frozen=True)
class ModelEntry:
    config: type
    model: type
    presets: dict = field(default_factory=dict)
    task: str = "lm"  # the task it trains on by default
    description: str = ""
    # Training callbacks this model always trains with (names in seqlab.train.callbacks), on top
    # of those the run config lists; e.g. the autonomic controller for "hybrid".
    callbacks: tuple[str, ...] = ()
    # Other tasks it can be trained on (e.g. gpt on 2D grids read in raster order).
    tasks: tuple[str, ...] = ()

    @property
    def all_tasks(self) -> tuple[str, ...]:
        return (self.task, *(t for t in self.tasks if t != self.task))


MODELS: dict[str, ModelEntry] = {
    "gpt": ModelEntry(
        gpt.GPTConfig,
        gpt.GPT,
        gpt.PRESETS,
        "lm",
        "baseline pre-norm transformer (RoPE, SDPA, KV cache)",
        tasks=("grid", "grid2grid"),  # 2D grids read in raster order (the baseline of heptapod)
    ),
    "xtransformers": ModelEntry(xt.XTransformersConfig, xt.XTransformersLM, xt.PRESETS, "lm", xt.DESCRIPTION),
    "leap": ModelEntry(
        leap.LeapConfig, leap.LeapForCausalLM, leap.PRESETS, "lm", "LEAP linear explainable attention"
    ),
    "fastformer": ModelEntry(
        fastformer.FastformerConfig,
        fastformer.FastformerForCausalLM,
        fastformer.PRESETS,
        "lm",
        "Fastformer additive attention (LEAP repo legacy), windowed + recurrent",
    ),
    "lfm": ModelEntry(
        lfm.LFMConfig, lfm.LFMForCausalLM, lfm.PRESETS, "lm", "LFModel: adaptive mixing + entropy MoE"
    ),
    "lfm_series": ModelEntry(
        lfm.LFMSeriesConfig, lfm.LFMForecaster, lfm.PRESETS, "forecast", "LFModel next-value forecaster (MSE)"
    ),
    "hybrid": ModelEntry(
        hybrid_lm.HybridConfig,
        hybrid_lm.HybridLM,
        hybrid_lm.PRESETS,
        "lm",
        "hybrid local+global attention; RoPE base and window for the autonomic controller",
    ),
    "autonomic_host": ModelEntry(
        autonomic_host.AutonomicHostConfig,
        autonomic_host.AutonomicHost,
        autonomic_host.PRESETS,
        "seq2seq",
        "the autonomic seed's encoder-decoder: t5 with hybrid self-attention and RoPE",
    ),
    "t5": ModelEntry(
        t5.T5Config, t5.T5Model, t5.PRESETS, "seq2seq", "T5 v1.1 encoder-decoder (relative bias, gated GELU)"
    ),
    "kat5": ModelEntry(
        kat5.KAT5Config,
        kat5.KAT5Model,
        kat5.PRESETS,
        "seq2seq",
        "t5 with KAN feed-forwards, parameter-matched to t5",
    ),
    "heptapod": ModelEntry(
        heptapod.HeptapodConfig,
        heptapod.HeptapodModel,
        heptapod.PRESETS,
        "grid",
        "2D grid transformer: local 2D attention, 2D rotary, weight-shared iterations",
        tasks=("grid2grid",),
    ),
    "stack": ModelEntry(
        stack.StackConfig,
        stack.StackLM,
        stack.PRESETS,
        "lm",
        "mix and match: per-layer mixer and feed-forward (model.layers)",
    ),
}


def model_entry(name: str) -> ModelEntry:
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[name]


def build_config(name: str, preset: str | None = "tiny", **overrides):
    """The config of model `name`: its dataclass defaults, then the preset, then overrides."""
    entry = model_entry(name)
    values = {}
    if preset is not None:
        if preset not in entry.presets:
            raise ConfigError(
                f"unknown preset {preset!r} for model {name!r}; choose one of: {', '.join(entry.presets)}"
            )
        values.update(entry.presets[preset])
    values.update(overrides)
    return from_dict(entry.config, values, where=f"model {name!r}")


def build_model(name: str, preset: str | None = "tiny", **overrides):
    cfg = build_config(name, preset, **overrides)
    return model_entry(name).model(cfg)


def count_parameters(model) -> int:
    """Unique trainable parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters() if p.requires_grad}.values())


__all__ = [
    "MODELS",
    "ModelEntry",
    "ModelOutput",
    "build_config",
    "build_model",
    "count_parameters",
    "model_entry",
]
