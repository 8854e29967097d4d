"""Hugging Face wrapper of the LEAP causal LM (seed 001: mtanghu/LEAP).

Optional: needs the `hf` extra (`pip install -e ".[hf]"`, transformers 5.x). seqlab itself never
imports this module; importing it registers model_type "leap" with AutoConfig and
AutoModelForCausalLM.

    from seqlab.models.leap_hf import LeapConfig, LeapForCausalLM   # the seed's API under HF
    model = LeapForCausalLM(LeapConfig(hidden_size=256, n_head=4, rescale=10))
    model.save_pretrained(path); AutoModelForCausalLM.from_pretrained(path).generate(ids)

This is seqlab's generic Hugging Face wrapper (seqlab.models.hf) with the seed's config:
LeapHFConfig takes the seed's keyword arguments (plus position) and builds the core
`seqlab.models.leap.LeapConfig`; LeapHFForCausalLM is a SeqlabHFForCausalLM, so everything
else is the wrapper's: the core model as `self.model` (checkpoint keys `model.<core key>`,
`LeapHFForCausalLM.from_core(core)` wraps a model trained by `seqlab train`), the tied head,
the loss (Trainer's `num_items_in_batch` honoured, so gradient accumulation is exact), and
generation with the recurrent state as its cache, the way transformers' recurrent models
(Mamba, xLSTM) do: a `LeapHFCache` (seqlab.models.hf.SeqlabHFCache holding one LeapState per
layer) fed the prompt once, then one token per step, O(1) per token whatever the context.
`seqlab export` writes the generic form of a leap run (model_type "seqlab_leap", the core
config's own names); this module is for code written against the seed's API.

The core `seqlab.models.leap.LeapForCausalLM` trains under Trainer too (its ModelOutput reads
like HF's: `out[0]` is the loss), but Trainer then divides each micro-batch's mean loss by k,
exact only when every micro-batch has the same number of labelled tokens.

Departures from the seed: the output projection, the mask handling and the numerics of the
core model (see seqlab.models.leap); no attentions or hidden states are returned (use the core
model's `return_maps=True` for the explainability maps).

Shapes: input_ids [b, t] -> logits [b, t, v].
"""

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedConfig

from seqlab.errors import ConfigError
from seqlab.models.hf import CACHE_NAME, SeqlabHFCache, SeqlabHFForCausalLM
from seqlab.models.leap import SEED_NAMES
from seqlab.models.leap import LeapConfig as CoreLeapConfig

# Core config fields the seed has no keyword for; given as extra kwargs they reach the core.
CORE_ONLY_FIELDS = ("rope_base", "mlp_ratio")


@strict
class LeapHFConfig(PreTrainedConfig):
    """The seed's LeapConfig as a Hugging Face config; unknown kwargs go to PreTrainedConfig."""

    model_type = "leap"
    seqlab_model = "leap"  # the registry entry (a class attribute: not saved, always "leap")
    attribute_map = {
        "num_hidden_layers": "n_layer",
        "num_attention_heads": "n_head",
        "max_position_embeddings": "n_positions",
    }

    hidden_size: int = 256
    vocab_size: int = 32100
    n_head: int = 4
    use_local_att: bool = True
    window_sizes: list[int] | None = None
    n_positions: int = 1024
    n_layer: int = 4
    # int accepted beside float: the seed's own example passes rescale=10 (its defect 1).
    hidden_dropout_prob: float | int = 0.1
    initializer_range: float | int | None = None
    rescale: float | int | None = None
    position: str = "learned"
    # The output layer always shares the token embedding's weight.
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if not self.tie_word_embeddings:
            raise ConfigError(
                "LEAP always ties its output layer to the token embedding: drop tie_word_embeddings"
            )
        self.to_core()  # raises ConfigError on invalid values now rather than at model creation

    def to_core(self) -> CoreLeapConfig:
        """The seqlab core config (the seed's names are mapped to seqlab's by the core config)."""
        seed_kwargs = dict(
            hidden_size=self.hidden_size,
            vocab_size=self.vocab_size,
            n_head=self.n_head,
            use_local_att=self.use_local_att,
            window_sizes=self.window_sizes,
            n_positions=self.n_positions,
            n_layer=self.n_layer,
            hidden_dropout_prob=self.hidden_dropout_prob,
            initializer_range=self.initializer_range,
            rescale=self.rescale,
            position=self.position,
        )
        seed_kwargs.update({name: getattr(self, name) for name in CORE_ONLY_FIELDS if hasattr(self, name)})
        return CoreLeapConfig(**seed_kwargs)

    @classmethod
    def from_core(cls, core: CoreLeapConfig, **kwargs) -> "LeapHFConfig":
        seed_kwargs = {seed_name: getattr(core, name) for seed_name, name in SEED_NAMES.items()}
        defaults = CoreLeapConfig.__dataclass_fields__
        extras = {
            name: getattr(core, name)
            for name in CORE_ONLY_FIELDS
            if getattr(core, name) != defaults[name].default
        }
        return cls(
            vocab_size=core.vocab_size,
            use_local_att=core.use_local_att,
            window_sizes=core.window_sizes,
            rescale=core.rescale,
            position=core.position,
            **seed_kwargs,
            **extras,
            **kwargs,
        )


# generate()'s cache for LEAP: the generic adapter around the recurrent state.
LeapHFCache = SeqlabHFCache


class LeapHFForCausalLM(SeqlabHFForCausalLM):
    """The seed's LeapForCausalLM under Hugging Face: save/from_pretrained, Auto classes, generate."""

    config_class = LeapHFConfig
    config: LeapHFConfig


# The seed's names, for `from seqlab.models.leap_hf import LeapConfig, LeapForCausalLM`.
LeapConfig = LeapHFConfig
LeapForCausalLM = LeapHFForCausalLM


def register() -> None:
    """Make AutoConfig / AutoModelForCausalLM resolve model_type "leap" (idempotent)."""
    AutoConfig.register("leap", LeapHFConfig, exist_ok=True)
    AutoModelForCausalLM.register(LeapHFConfig, LeapHFForCausalLM, exist_ok=True)


register()

__all__ = [
    "CACHE_NAME",
    "LeapConfig",
    "LeapForCausalLM",
    "LeapHFCache",
    "LeapHFConfig",
    "LeapHFForCausalLM",
    "register",
]
