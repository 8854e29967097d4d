"""Hugging Face for every seqlab model: one generic PreTrainedModel wrapper for the whole registry.

Optional: needs the `hf` extra (`pip install 'seqlab[hf]'`, transformers 5.x); seqlab itself
never imports this module. Importing it registers every registry entry with AutoConfig and,
by the entry's task, AutoModelForCausalLM ("lm"), AutoModelForSeq2SeqLM ("seq2seq") or
AutoModel (any other task: a plain forward, no generate), under model_type "seqlab_<name>":

    import seqlab.models.hf                                    # registers seqlab_gpt, seqlab_t5, ...
    hf = seqlab.models.hf.from_core(core_model)                # weights copied from a seqlab model
    hf.save_pretrained(path)                                   # config.json + model.safetensors
    AutoModelForCausalLM.from_pretrained(path).generate(ids)   # decodes with seqlab's own state

The pieces, each written once:

- `SeqlabHFConfig`: `seqlab_model` (the registry name) and `seqlab_config` (the model's config
  dataclass as a dict, seqlab.config.to_dict / from_dict), plus what Hugging Face reads:
  vocab_size, is_encoder_decoder, and T5's token ids (pad 0 = decoder start, eos 1) for
  encoder-decoders. `to_core()` / `from_core(core_cfg)`.
- `SeqlabHFCache`: generate()'s cache, a transformers Cache holding the core model's decoding
  state (seqlab.layers.cache.Cache, or the model's own, e.g. x-transformers'): it counts the
  tokens fed, reorders / selects / repeats the batch for beam search (through the state's
  map_batch) and cannot be cropped (recurrent states cannot forget tokens).
- `SeqlabHFForCausalLM`, `SeqlabHFForSeq2SeqLM`, `SeqlabHFModel`: the core model as
  `self.model`, so checkpoint keys are `model.<core key>`. Weights the core ties (the output
  head sharing the token embedding) are found by identity and declared as _tied_weights_keys,
  so save_pretrained writes them once and from_pretrained (and Trainer checkpoints) tie them
  again. The core initializes itself when built; from_pretrained then rebuilds what the
  checkpoint cannot hold: non-persistent buffers (rotary tables, decay slopes, masks) and any
  missing tensor, from a freshly built core, after which each module's load hook runs (the
  rotary tables follow the saved RoPE base).
- `hf_classes(name)`: the (config class, model class) of registry entry `name`, made from the
  entry without per-model code; `register()` registers them all; `from_core(model)` wraps a
  core model; `hf_model.model` is the core model again.

Causal LMs: forward(input_ids, attention_mask, labels, cache) -> CausalLMOutputWithPast. With
a cache (use_cache=True starts one) the tokens advance the core's decoding state and generate
feeds only the tokens it has not consumed (the prompt once, then one per step); a model that
cannot decode incrementally (`can_decode` false) recomputes the prefix at every step. Unlike
seqlab.models.generation.generate, no prefix is cropped: a model with learned positions stops
with its own error at max_seq_len. Seq2seq: the encoder runs once (get_encoder), each step
feeds one decoder token, beam search reorders the decoder state; labels are shifted right into
the decoder input as the core does.

Loss (labels given): the core's token cross-entropy (causal labels shifted inside, pads and
-100 ignored; the caller's tensor is never modified) plus the model's auxiliary losses (MoE
entropy and balance, KAN regularization), as seqlab's trainer adds them. When `num_items_in_batch`
is given (transformers.Trainer), the token loss is the summed cross-entropy divided by it and
the auxiliary losses are weighted by this micro-batch's share of those tokens, so gradient
accumulation gives the loss and gradients of the whole batch (exact for the token loss, a
token-weighted mean for the auxiliary ones).

No attentions or hidden states are returned; resize_token_embeddings is not supported (the
core checks token ids against its own config).

Shapes: input_ids [b, t] -> logits [b, t, v]; seq2seq: input_ids [b, s], decoder_input_ids /
labels [b, t] -> logits [b, t, v].
"""

import inspect
from dataclasses import dataclass

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    GenerationMixin,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutput, CausalLMOutputWithPast, Seq2SeqLMOutput
from transformers.utils import ModelOutput as HFModelOutput

from seqlab.config import from_dict, to_dict
from seqlab.errors import ConfigError
from seqlab.models import MODELS, model_entry
from seqlab.models.output import lm_loss
from seqlab.models.t5 import DECODER_START_ID, EOS_ID, PAD_ID, shift_right

# transformers 5.24 renamed the cache argument and output field past_key_values to cache;
# both spellings are accepted, and generate() is answered in the one it uses.
CACHE_NAME = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"

CAUSAL_TASK, SEQ2SEQ_TASK = "lm", "seq2seq"


def model_type(name: str) -> str:
    """The Hugging Face model_type of registry entry `name` (never one of transformers' own)."""
    return f"seqlab_{name}"


@strict
class SeqlabHFConfig(PreTrainedConfig):
    """A seqlab registry model's config as a Hugging Face config: the registry name and the
    model's config dataclass as a dict (missing keys take the dataclass defaults)."""

    model_type = "seqlab"
    # The registry entry of a class made by hf_classes (the default of seqlab_model).
    registry_entry = ""

    seqlab_model: str = ""
    seqlab_config: dict | None = None
    vocab_size: int | None = None  # these three mirror the core config and the registry's task
    is_encoder_decoder: bool = False
    pad_token_id: int | None = None
    eos_token_id: int | None = None
    decoder_start_token_id: int | None = None
    tie_word_embeddings: bool = True  # set by the model: whether its core ties any weights

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.seqlab_model = self.seqlab_model or self.registry_entry
        if not self.seqlab_model:
            raise ConfigError(f"SeqlabHFConfig needs seqlab_model, one of: {', '.join(MODELS)}")
        if self.registry_entry and self.seqlab_model != self.registry_entry:
            raise ConfigError(
                f"{type(self).__name__} is the config of {self.registry_entry!r}, not {self.seqlab_model!r}: "
                f"use hf_classes({self.seqlab_model!r})[0]"
            )
        core = self.to_core()  # invalid values are a ConfigError now, not at model creation
        self.seqlab_config = to_dict(core)  # complete and normalized (the core's __post_init__)
        self.vocab_size = getattr(core, "vocab_size", None)
        self.is_encoder_decoder = model_entry(self.seqlab_model).task == SEQ2SEQ_TASK
        if self.is_encoder_decoder:
            # seqlab's encoder-decoders use T5's ids: pad = decoder start, eos.
            for key, value in (("pad_token_id", PAD_ID), ("eos_token_id", EOS_ID)):
                if getattr(self, key) is None:
                    setattr(self, key, value)
            if self.decoder_start_token_id is None:
                self.decoder_start_token_id = DECODER_START_ID

    def to_core(self):
        """The seqlab config dataclass of the model."""
        entry = model_entry(self.seqlab_model)
        return from_dict(entry.config, dict(self.seqlab_config or {}), where=f"model {self.seqlab_model!r}")

    @classmethod
    def from_core(cls, core, **kwargs) -> "SeqlabHFConfig":
        """The config of a class made by hf_classes(name) for the core config dataclass `core`."""
        return cls(seqlab_config=to_dict(core), **kwargs)


class SeqlabHFCache(Cache):
    """generate()'s cache: the core model's decoding state `state` (a seqlab
    seqlab.layers.cache.Cache, or a model's own state with `length`).

    It holds no key/value layers of Hugging Face's. get_seq_length() counts the tokens fed so
    far (pads included), which is how many columns of input_ids the next step skips. Beam
    search reorders it through the state's map_batch; it cannot be cropped, so assisted
    decoding is not supported.
    """

    def __init__(self, state, batch_size: int | None = None):
        super().__init__(layers=[])
        self.state = state
        self._batch_size = batch_size  # followed through reorder / select / repeat

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.state.length

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return -1

    @property
    def batch_size(self) -> int:
        if self._batch_size is None:
            raise NotImplementedError("this cache was made without its batch size")
        return self._batch_size

    @property
    def is_croppable(self) -> bool:
        return False

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove:
            raise NotImplementedError("a seqlab decoding state cannot be cropped: regenerate from the prompt")

    def _map_batch(self, fn) -> None:
        if not hasattr(self.state, "map_batch"):
            raise NotImplementedError(
                f"{type(self.state).__name__} cannot reorder its batch: use greedy or sampled generate "
                f"(num_beams=1), or use_cache=False"
            )
        self.state.map_batch(fn)
        if self._batch_size is not None:
            self._batch_size = fn(torch.zeros(self._batch_size, 1)).shape[0]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map_batch(lambda x: x.index_select(0, beam_idx.to(x.device)))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map_batch(lambda x: x[indices.to(x.device)])

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map_batch(lambda x: x.repeat_interleave(repeats, dim=0))

    def reset(self) -> None:
        self.state.reset()


def tied_weight_keys(module: nn.Module, prefix: str = "") -> dict[str, str]:
    """{tied name: first name} for every parameter registered under more than one name."""
    first, tied = {}, {}
    for name, param in module.named_parameters(remove_duplicate=False):
        if id(param) in first:
            tied[prefix + name] = first[id(param)]
        else:
            first[id(param)] = prefix + name
    return tied


def token_loss(logits: torch.Tensor, targets: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
    """seqlab's lm_loss of logits [b, t, v] against aligned targets [b, t] (-100 ignored): the
    mean, or the sum divided by num_items_in_batch when given (Trainer's accumulated batch)."""
    targets = targets.to(logits.device)
    if num_items_in_batch is None:
        return lm_loss(logits, targets)
    return lm_loss(logits, targets, reduction="sum") / num_items_in_batch


def with_aux(loss: torch.Tensor, aux: dict, targets: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
    """loss + the auxiliary losses, these weighted by this micro-batch's share of
    num_items_in_batch when given (see the module docstring)."""
    if not aux:
        return loss
    total = sum(aux.values())
    if num_items_in_batch is not None:
        total = total * targets.ne(-100).sum() / num_items_in_batch
    return loss + total


class SeqlabHFPreTrainedModel(PreTrainedModel):
    """What every wrapper shares: the core model built from config.to_core() as `self.model`,
    its tied weights, its own initialization, save/load and from_core."""

    config_class = SeqlabHFConfig
    base_model_prefix = "model"
    _no_split_modules = ["Block"]
    # A seqlab decoding state cannot be rolled back: generate refuses assisted decoding.
    _is_stateful = True

    def __init__(self, config):
        super().__init__(config)
        self.model = model_entry(config.seqlab_model).model(config.to_core())
        self._tied_weights_keys = tied_weight_keys(self.model, f"{self.base_model_prefix}.")
        config.tie_word_embeddings = bool(self._tied_weights_keys)
        self.post_init()

    @classmethod
    def from_core(cls, core: nn.Module):
        """This class wrapping a copy of the trained seqlab model `core` (e.g. to save_pretrained it)."""
        param = next(core.parameters())
        model = cls(cls.config_class.from_core(core.config)).to(device=param.device, dtype=param.dtype)
        model.model.load_state_dict(core.state_dict())
        return model.eval()

    def to_core(self) -> nn.Module:
        """The seqlab core model (not a copy: it shares this model's weights)."""
        return self.model

    def _init_weights(self, module: nn.Module) -> None:
        # The core initializes itself when built; from_pretrained rebuilds the rest (below).
        pass

    @classmethod
    def from_pretrained(cls, *args, output_loading_info: bool = False, **kwargs):
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        model._rebuild_unsaved(set(info.get("missing_keys", ())))
        return (model, info) if output_loading_info else model

    @torch.no_grad()
    def _rebuild_unsaved(self, missing: set[str]) -> None:
        """After from_pretrained: the non-persistent buffers and the missing tensors get the
        values of a freshly built core, then the core's load hooks run on its own state."""
        prefix = f"{self.base_model_prefix}."
        names = {k[len(prefix) :] for k in missing if k.startswith(prefix)}
        for module_name, module in self.model.named_modules():
            names |= {
                f"{module_name}.{b}" if module_name else b
                for b in module._non_persistent_buffers_set
                if getattr(module, b, None) is not None
            }
        if names:
            with torch.device("cpu"):
                fresh = type(self.model)(self.model.config)
            values = {**dict(fresh.named_parameters()), **dict(fresh.named_buffers())}
            for name in names:
                module_name, _, leaf = name.rpartition(".")
                module = self.model.get_submodule(module_name)
                target = getattr(module, leaf)
                value = values[name].to(device=target.device, dtype=target.dtype)
                if target.shape == value.shape:
                    target.copy_(value)
                else:
                    setattr(module, leaf, value)  # a buffer whose size depends on use (rotary tables)
        self.model.load_state_dict(self.model.state_dict())

    def get_input_embeddings(self) -> nn.Module:
        embed = getattr(self.model, "embed", None)
        if embed is None:
            raise NotImplementedError(f"seqlab model {self.config.seqlab_model!r} has no `embed` module")
        return embed

    def get_output_embeddings(self) -> nn.Module | None:
        return getattr(self.model, "head", None)

    def set_input_embeddings(self, value: nn.Module) -> None:
        raise NotImplementedError(
            "a seqlab model's vocabulary is fixed by its config: build a model with the new vocab_size and "
            "copy the weights you keep (resize_token_embeddings is not supported)"
        )

    set_output_embeddings = set_input_embeddings

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # generate() must not build a DynamicCache: forward() starts a SeqlabHFCache.
        return False

    def _start_cache(self, batch_size: int, length: int) -> SeqlabHFCache:
        capacity = getattr(self.model.config, "max_seq_len", None) or length
        return SeqlabHFCache(self.model.make_cache(batch_size, capacity), batch_size)

    @staticmethod
    def _check_cache(cache) -> None:
        if cache is not None and not isinstance(cache, SeqlabHFCache):
            raise TypeError(
                f"seqlab models decode with their own state, not a {type(cache).__name__}: pass cache=None "
                f"(generate starts one) or a cache returned by this model"
            )

    @staticmethod
    def _check_outputs(kwargs: dict) -> None:
        if kwargs.get("output_attentions") or kwargs.get("output_hidden_states"):
            raise ValueError(
                "seqlab's Hugging Face wrapper returns no attentions or hidden states; call the core model "
                "(model.model) for what it offers, e.g. LEAP's maps with return_maps=True"
            )


class SeqlabHFForCausalLM(SeqlabHFPreTrainedModel, GenerationMixin):
    """A seqlab causal LM ("lm" task) under Hugging Face: save/from_pretrained, Auto classes, generate."""

    def __init__(self, config):
        super().__init__(config)
        self._takes_mask = "attention_mask" in inspect.signature(self.model.forward).parameters

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        next_sequence_length: int | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: SeqlabHFCache | None = None,
        past_key_values: SeqlabHFCache | None = None,
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

    def _mask_kwargs(self, attention_mask: torch.Tensor | None) -> dict:
        if attention_mask is None:
            return {}
        if self._takes_mask:
            return {"attention_mask": attention_mask}
        if not bool(attention_mask.all()):
            raise ValueError(
                f"seqlab model {self.config.seqlab_model!r} takes no attention_mask: give unpadded rows "
                f"(prompts of one length)"
            )
        return {}

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        cache: SeqlabHFCache | None = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
        past_key_values: SeqlabHFCache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast | tuple:
        """labels: aligned with input_ids, shifted inside (pads and -100 ignored). With a cache
        (or use_cache=True, which starts one when the core can decode) the tokens continue the
        ones it consumed; attention_mask then covers only input_ids. Loss: module docstring."""
        self._check_outputs(kwargs)
        cache = cache if cache is not None else past_key_values
        self._check_cache(cache)
        if cache is None and use_cache and self.model.can_decode:
            cache = self._start_cache(*input_ids.shape)
        out = self.model(
            input_ids, **self._mask_kwargs(attention_mask), cache=cache.state if cache is not None else None
        )
        loss = None
        if labels is not None:
            # Trainer passes num_items_in_batch (the labelled tokens of the whole accumulated
            # batch) because forward takes **kwargs, and then stops dividing the loss by the
            # accumulation steps.
            num_items = kwargs.get("num_items_in_batch")
            targets = labels[:, 1:]
            if attention_mask is not None:
                targets = targets.masked_fill(attention_mask[:, 1:] == 0, -100)
            loss = token_loss(out.logits[:, :-1], targets, num_items)
            loss = with_aux(loss, out.aux_losses, targets, num_items)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if not return_dict:
            return tuple(v for v in (loss, out.logits, cache) if v is not None)
        return CausalLMOutputWithPast(loss=loss, logits=out.logits, **{CACHE_NAME: cache})


class _Encoder(nn.Module):
    """get_encoder() for generate: the core's encode() behind Hugging Face's encoder call."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids=None, attention_mask=None, return_dict=True, **kwargs):
        return BaseModelOutput(last_hidden_state=self.model.encode(input_ids, attention_mask))


class SeqlabHFForSeq2SeqLM(SeqlabHFPreTrainedModel, GenerationMixin):
    """A seqlab encoder-decoder ("seq2seq" task: encode / decode / make_cache, as t5) under
    Hugging Face: save/from_pretrained, Auto classes, generate (greedy, beam)."""

    main_input_name = "input_ids"

    def get_encoder(self, modality=None) -> nn.Module:
        return _Encoder(self.model)

    def prepare_inputs_for_generation(
        self,
        decoder_input_ids: torch.LongTensor,
        cache: SeqlabHFCache | None = None,
        past_key_values: SeqlabHFCache | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_outputs=None,
        **kwargs,
    ):
        # The state has consumed the first `past` decoder tokens: feed the rest (one per step).
        cache = cache if cache is not None else past_key_values
        past = cache.get_seq_length() if cache is not None else 0
        return {
            "decoder_input_ids": decoder_input_ids[:, past:],
            "attention_mask": attention_mask,
            "encoder_outputs": encoder_outputs,
            CACHE_NAME: cache,
            "use_cache": kwargs.get("use_cache", True),
        }

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        encoder_outputs=None,
        cache: SeqlabHFCache | None = None,
        past_key_values: SeqlabHFCache | None = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> Seq2SeqLMOutput | tuple:
        """labels [b, t]: target ids (-100 ignored), shifted right into the decoder inputs when
        decoder_input_ids is None. The memory comes from encoder_outputs when given (then the
        loss has the decoder's auxiliary losses only), else input_ids are encoded (once per
        cache: a cache that holds the memory's keys and values reuses them)."""
        self._check_outputs(kwargs)
        cache = cache if cache is not None else past_key_values
        self._check_cache(cache)
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError(
                    "give decoder_input_ids or labels (the decoder input is labels shifted right)"
                )
            decoder_input_ids = shift_right(labels)
        if cache is None and use_cache and self.model.can_decode:
            cache = self._start_cache(*decoder_input_ids.shape)
        state = cache.state if cache is not None else None
        if encoder_outputs is not None:
            memory = encoder_outputs[0] if state is None or state.length == 0 else None
            out = self.model.decode(decoder_input_ids, memory, attention_mask, state)
        else:
            out = self.model(
                input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids, cache=state
            )
        loss = None
        if labels is not None:
            num_items = kwargs.get("num_items_in_batch")
            loss = with_aux(token_loss(out.logits, labels, num_items), out.aux_losses, labels, num_items)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if not return_dict:
            return tuple(v for v in (loss, out.logits, cache) if v is not None)
        return Seq2SeqLMOutput(loss=loss, logits=out.logits, **{CACHE_NAME: cache})


@dataclass
class SeqlabHFOutput(HFModelOutput):
    """SeqlabHFModel's output: the core's loss (with its auxiliary losses) and logits."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None


class SeqlabHFModel(SeqlabHFPreTrainedModel):
    """A seqlab model of another task (grids, forecasting) under Hugging Face: save/from_pretrained
    and AutoModel; forward takes the core model's own arguments; no generate."""

    def forward(self, *args, return_dict: bool | None = None, **kwargs) -> SeqlabHFOutput | tuple:
        out = self.model(*args, **kwargs)
        loss = out.total_loss() if out.loss is not None else None
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if not return_dict:
            return tuple(v for v in (loss, out.logits) if v is not None)
        return SeqlabHFOutput(loss=loss, logits=out.logits)


WRAPPERS = {CAUSAL_TASK: SeqlabHFForCausalLM, SEQ2SEQ_TASK: SeqlabHFForSeq2SeqLM}
AUTO_CLASSES = {CAUSAL_TASK: AutoModelForCausalLM, SEQ2SEQ_TASK: AutoModelForSeq2SeqLM}
_CLASSES: dict[str, tuple[type, type]] = {}


def hf_classes(name: str) -> tuple[type, type]:
    """(config class, model class) of registry entry `name`, model_type "seqlab_<name>": e.g.
    SeqlabGptConfig and SeqlabGptForCausalLM, importable from this module."""
    if name not in _CLASSES:
        task = model_entry(name).task
        camel = "".join(part.capitalize() for part in name.split("_"))
        config_cls = type(
            f"Seqlab{camel}Config",
            (SeqlabHFConfig,),
            {"model_type": model_type(name), "registry_entry": name, "__module__": __name__},
        )
        base = WRAPPERS.get(task, SeqlabHFModel)
        model_cls = type(
            f"Seqlab{camel}{base.__name__.removeprefix('SeqlabHF')}",  # ...ForCausalLM, ...Model
            (base,),
            {"config_class": config_cls, "__module__": __name__, "__annotations__": {"config": config_cls}},
        )
        globals()[config_cls.__name__] = config_cls  # importable by name (pickle, copy)
        globals()[model_cls.__name__] = model_cls
        _CLASSES[name] = config_cls, model_cls
    return _CLASSES[name]


def registry_name(model: nn.Module) -> str:
    """The registry entry whose model class `model` is."""
    for name, entry in MODELS.items():
        if type(model) is entry.model:
            return name
    raise ConfigError(f"{type(model).__name__} is not a model of seqlab's registry (seqlab.models.MODELS)")


def from_core(model: nn.Module) -> SeqlabHFPreTrainedModel:
    """The Hugging Face form of a seqlab registry model, with a copy of its weights."""
    return hf_classes(registry_name(model))[1].from_core(model)


def register() -> None:
    """Register every registry entry with AutoConfig and its task's Auto model class (idempotent)."""
    for name, entry in MODELS.items():
        config_cls, model_cls = hf_classes(name)
        AutoConfig.register(model_type(name), config_cls, exist_ok=True)
        AUTO_CLASSES.get(entry.task, AutoModel).register(config_cls, model_cls, exist_ok=True)


register()

__all__ = [
    "CACHE_NAME",
    "SeqlabHFCache",
    "SeqlabHFConfig",
    "SeqlabHFForCausalLM",
    "SeqlabHFForSeq2SeqLM",
    "SeqlabHFModel",
    "SeqlabHFOutput",
    "SeqlabHFPreTrainedModel",
    "from_core",
    "hf_classes",
    "model_type",
    "register",
    "registry_name",
    "tied_weight_keys",
    "token_loss",
]
