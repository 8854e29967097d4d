"""Hugging Face wrapper of the LEAP causal LM (seed 001: mtanghu/LEAP).

Optional: needs the `hf` extra (`pip install -e ".[hf]"`, transformers 5.x). seqlab itself never
imports this module; importing it registers model_type "leap" with AutoConfig and
AutoModelForCausalLM.

    from seqlab.models.leap_hf import LeapConfig, LeapForCausalLM   # the seed's API under HF
    model = LeapForCausalLM(LeapConfig(hidden_size=256, n_head=4, rescale=10))
    model.save_pretrained(path); AutoModelForCausalLM.from_pretrained(path).generate(ids)

LeapHFConfig takes the seed's keyword arguments (plus position) and builds the core
`seqlab.models.leap.LeapConfig`; LeapHFForCausalLM holds the core model as `self.model`, so
the checkpoint keys are `model.<core key>` and a core model trained by `seqlab train` is
exported with `LeapHFForCausalLM.from_core(core).save_pretrained(path)`.

Generation uses the recurrent state as its cache, the way transformers' recurrent models
(Mamba, xLSTM) do: `forward(use_cache=True)` creates a `LeapHFCache` (a transformers `Cache`
holding the core's seqlab.layers.cache.Cache, one LeapState per layer) and returns it;
generate hands it back on every step, and `prepare_inputs_for_generation` feeds only the
tokens the state has not consumed yet: the prompt once, then one token per step, O(1) per
token whatever the context.

Training with `transformers.Trainer` (needs accelerate): the loss honours Trainer's
`num_items_in_batch` (summed token loss / labelled tokens of the accumulated batch), so
gradient_accumulation_steps k x batch b gives the loss and gradients of batch k*b, as GPT-2
does. The core `seqlab.models.leap.LeapForCausalLM` trains under Trainer too (its ModelOutput
reads like HF's: `out[0]` is the loss), but Trainer then divides each micro-batch's mean loss by
k, exact only when every micro-batch has the same number of labelled tokens.

Departures from the seed: the output projection, the mask handling and the numerics of the
core model (see seqlab.models.leap); no attentions or hidden states are returned (use the core
model's `return_maps=True` for the explainability maps).

Shapes: input_ids [b, t] -> logits [b, t, v].
"""

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast

from seqlab.errors import ConfigError
from seqlab.layers.cache import Cache as StateCache
from seqlab.layers.rotary import RotaryEmbedding
from seqlab.models.leap import SEED_NAMES, init_seed_weights
from seqlab.models.leap import LeapConfig as CoreLeapConfig
from seqlab.models.leap import LeapForCausalLM as CoreLeapForCausalLM

# transformers 5.24 renamed the cache argument and output field past_key_values to cache;
# both spellings are accepted, and generate() is answered in the one it uses.
CACHE_NAME = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"

# Core config fields the seed has no keyword for; given as extra kwargs they reach the core.
CORE_ONLY_FIELDS = ("rope_base", "mlp_ratio")


@strict
class LeapHFConfig(PreTrainedConfig):
    """The seed's LeapConfig as a Hugging Face config; unknown kwargs go to PreTrainedConfig."""

    model_type = "leap"
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


def summed_lm_loss(
    logits: torch.Tensor, labels: torch.LongTensor, attention_mask: torch.Tensor | None
) -> torch.Tensor:
    """Sum over tokens of the core's label loss (labels shifted, pads and -100 ignored), fp32.

    Trainer counts num_items_in_batch as labels[:, 1:] != -100, which ignores attention_mask:
    label pads -100 (as DataCollatorForLanguageModeling does) for the two to agree.
    """
    shifted = labels[:, 1:]
    if attention_mask is not None:
        shifted = shifted.masked_fill(attention_mask[:, 1:] == 0, -100)
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)).float(),
        shifted.reshape(-1).to(logits.device),
        ignore_index=-100,
        reduction="sum",
    )


class LeapHFCache(Cache):
    """generate()'s cache for LEAP: the core's recurrent decoding state `state` (a seqlab
    Cache: one LeapState per layer and the real tokens seen per sample).

    It holds no key/value layers: its size does not grow with the context. get_seq_length()
    counts the columns fed so far (pads included), which is how many columns of input_ids
    the next step skips. Beam search reorders it; it cannot be cropped (a recurrent state
    cannot forget tokens), so assisted decoding is not supported.
    """

    def __init__(self, state: StateCache):
        super().__init__(layers=[])
        self.state = state

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.state.length

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return -1

    @property
    def batch_size(self) -> int:
        return self.state.seen.shape[0]

    @property
    def is_croppable(self) -> bool:
        return False

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove:
            raise NotImplementedError("a recurrent LEAP state cannot be cropped: regenerate from the prompt")

    def _map_batch(self, fn) -> None:
        self.state.map_batch(fn)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map_batch(lambda x: x.index_select(0, beam_idx.to(x.device)))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map_batch(lambda x: x[indices.to(x.device)])

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map_batch(lambda x: x.repeat_interleave(repeats, dim=0))

    def reset(self) -> None:
        self.state.reset()


class LeapHFForCausalLM(PreTrainedModel, GenerationMixin):
    """The seed's LeapForCausalLM under Hugging Face: save/from_pretrained, Auto classes, generate."""

    config: LeapHFConfig
    _tied_weights_keys = {"model.head.weight": "model.embed.weight"}
    _no_split_modules = ["Block"]
    # A recurrent state cannot be rolled back: generate refuses assisted decoding.
    _is_stateful = True

    def __init__(self, config: LeapHFConfig):
        super().__init__(config)
        self.model = CoreLeapForCausalLM(config.to_core())
        self.post_init()

    @classmethod
    def from_core(cls, core: CoreLeapForCausalLM) -> "LeapHFForCausalLM":
        """Wrap a trained seqlab core model (copies its weights), e.g. to save_pretrained it."""
        param = next(core.parameters())
        model = cls(LeapHFConfig.from_core(core.config)).to(device=param.device, dtype=param.dtype)
        model.model.load_state_dict(core.state_dict())
        return model.eval()

    def _init_weights(self, module: nn.Module) -> None:
        # The core's own init (normal(0, initializer_range) for linear and embedding weights, zero
        # biases). initialize_weights() guards torch.nn.init, so weights loaded by from_pretrained
        # are left alone.
        init_seed_weights(module, self.model.config.initializer_range)
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, RotaryEmbedding):
            # cos/sin are non-persistent buffers: from_pretrained leaves them empty, rebuild them.
            module.set_base(module.base)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed

    def get_output_embeddings(self) -> nn.Linear:
        return self.model.head

    def set_input_embeddings(self, value: nn.Module) -> None:
        # The core model checks token ids against its own config's vocab_size.
        raise NotImplementedError(
            "LEAP's vocabulary is fixed by its config: build a model with the new vocab_size and copy "
            "the weights you keep (resize_token_embeddings is not supported)"
        )

    set_output_embeddings = set_input_embeddings

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # generate() must not build a DynamicCache: forward() creates the recurrent LeapHFCache.
        return False

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        next_sequence_length: int | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: LeapHFCache | None = None,
        past_key_values: LeapHFCache | None = None,
        **kwargs,
    ):
        # generate() slices to `next_sequence_length` (None, then 1) columns; the state knows
        # better: it has consumed the first `past` columns of input_ids (the attention mask
        # covers the whole sequence), so feed the rest, i.e. the prompt once, then one token.
        cache = cache if cache is not None else past_key_values
        past = cache.get_seq_length() if cache is not None else 0
        input_ids = input_ids[:, past:]
        if attention_mask is not None:
            attention_mask = attention_mask[:, past:]
        return super().prepare_inputs_for_generation(
            input_ids, attention_mask=attention_mask, **{CACHE_NAME: cache}, **kwargs
        )

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        cache: LeapHFCache | None = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
        past_key_values: LeapHFCache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast | tuple:
        """labels: aligned with input_ids, shifted inside (pads and -100 ignored, never modified).
        The loss is their mean token cross-entropy, or, when `num_items_in_batch` is given (as
        Trainer does), their summed cross-entropy divided by it, so that gradient accumulation
        gives the loss and gradients of the whole batch (as Hugging Face's own models do).

        With a cache (or use_cache=True, which starts one) the tokens run through the
        recurrent form and advance the cache; attention_mask then covers only input_ids.
        Without, the parallel form runs (training).
        """
        if kwargs.get("output_attentions") or kwargs.get("output_hidden_states"):
            raise ValueError(
                "LeapHFForCausalLM returns no attentions or hidden states; for LEAP's attention maps "
                "call the core model: model.model(input_ids, return_maps=True).maps"
            )
        cache = cache if cache is not None else past_key_values
        if cache is not None and not isinstance(cache, LeapHFCache):
            raise TypeError(
                f"LEAP decodes with its recurrent state, not a {type(cache).__name__}: pass cache=None "
                f"(generate creates one) or a cache returned by this model"
            )
        if cache is None and use_cache:
            cache = LeapHFCache(self.model.make_cache(input_ids.shape[0]))
        # Trainer passes num_items_in_batch (the labelled tokens of the whole accumulated batch)
        # because forward takes **kwargs, and then stops dividing the loss by the accumulation
        # steps: the loss must be the token sum divided by it, or it is gradient_accumulation_steps
        # times too large.
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        out = self.model(
            input_ids,
            attention_mask=attention_mask,
            labels=labels if num_items_in_batch is None else None,
            cache=cache.state if cache is not None else None,
        )
        if labels is not None and num_items_in_batch is not None:
            out.loss = summed_lm_loss(out.logits, labels, attention_mask) / num_items_in_batch
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if not return_dict:
            return tuple(v for v in (out.loss, out.logits, cache) if v is not None)
        return CausalLMOutputWithPast(loss=out.loss, logits=out.logits, **{CACHE_NAME: cache})


# The seed's names, for `from seqlab.models.leap_hf import LeapConfig, LeapForCausalLM`.
LeapConfig = LeapHFConfig
LeapForCausalLM = LeapHFForCausalLM


def register() -> None:
    """Make AutoConfig / AutoModelForCausalLM resolve model_type "leap" (idempotent)."""
    AutoConfig.register("leap", LeapHFConfig, exist_ok=True)
    AutoModelForCausalLM.register(LeapHFConfig, LeapHFForCausalLM, exist_ok=True)


register()

__all__ = ["LeapConfig", "LeapForCausalLM", "LeapHFCache", "LeapHFConfig", "LeapHFForCausalLM", "register"]
