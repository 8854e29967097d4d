"""Hugging Face for seqlab's encoder-decoders: `t5` <-> transformers' own T5, and a wrapper for `kat5`.

Optional: needs the `hf` extra (`pip install 'seqlab[hf]'`, transformers 5.x); seqlab itself
never imports this module (seqlab.train.export imports it when asked to export).

t5: seqlab's T5Model computes exactly what T5ForConditionalGeneration computes for a T5 v1.1
config (feed_forward_proj="gated-gelu", untied head without rescale), so a checkpoint converts
both ways without loss: `to_hf(model)` / `from_hf(hf_model)`, with the key mapping in one
place, `key_map(cfg)`. Where seqlab fuses projections, one seqlab tensor is several Hugging Face
tensors concatenated along dim 0: self-attention qkv = [q; k; v], cross-attention kv = [k; v],
the gated FFN's fc = [wi_0; wi_1]. The relative bias tables, which Hugging Face keeps in block
0 of each stack, are seqlab's `encoder_bias` / `decoder_bias`.

transformers 5 always ties T5's lm_head to the shared embedding unless the config is told
otherwise after it is built (its T5Config forces tie_word_embeddings=True and reads a False
only as "do not rescale"), so `to_hf` builds an untied model and writes the shared embedding
into every embedding slot. Loading such a checkpoint with from_pretrained keeps the head
untied (its values differ from the embedding's; transformers logs a line saying so).

kat5: `t5` with KAN feed-forwards has no Hugging Face counterpart, so it gets its own
PreTrainedModel + GenerationMixin wrapper, `KAT5HFForConditionalGeneration` (model_type "kat5",
config `KAT5HFConfig` carrying the fields of seqlab's KAT5Config), registered with AutoConfig and
AutoModelForSeq2SeqLM on import. It holds the seqlab model as `self.model` (checkpoint keys
`model.<seqlab key>`), saves and loads safetensors, and decodes through generate (greedy, beam)
with the seqlab decoding state as its cache: the encoder runs once, every decoder step feeds
one token, beam search reorders the state.

Shapes: input_ids [b, s] -> logits [b, t, vocab_size].
"""

import dataclasses

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSeq2SeqLM,
    GenerationMixin,
    PreTrainedConfig,
    PreTrainedModel,
    T5ForConditionalGeneration,
)
from transformers import T5Config as HFT5Config
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput

from seqlab.errors import ConfigError
from seqlab.layers.cache import Cache as StateCache
from seqlab.layers.rotary import RotaryEmbedding
from seqlab.models.kat5 import KAT5Config, KAT5Model
from seqlab.models.t5 import DECODER_START_ID, EOS_ID, PAD_ID, T5Config, T5Model

CACHE_NAME = "cache" if "cache" in Seq2SeqLMOutput.__dataclass_fields__ else "past_key_values"


def check_exportable(cfg: T5Config) -> None:
    """A seqlab config is a Hugging Face T5 v1.1 exactly when it uses T5's own pieces."""
    if cfg.ffn != "gated_gelu" or cfg.ffn_options:
        raise ConfigError(f"only ffn='gated_gelu' exports to Hugging Face T5, got ffn={cfg.ffn!r}")
    if cfg.self_attention != "attention" or cfg.self_attention_options:
        raise ConfigError(
            f"only self_attention='attention' (no options) exports to Hugging Face T5, got "
            f"{cfg.self_attention!r} {cfg.self_attention_options or ''}".rstrip()
        )
    if cfg.position != "relative":
        raise ConfigError(f"only position='relative' exports to Hugging Face T5, got {cfg.position!r}")


def key_map(cfg: T5Config) -> list[tuple[str, tuple[str, ...]]]:
    """(seqlab key, Hugging Face keys): the seqlab tensor is the HF tensors concatenated on dim 0."""
    pairs = [
        ("embed.weight", ("shared.weight",)),
        ("head.weight", ("lm_head.weight",)),
        (
            "encoder_bias.embedding.weight",
            ("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",),
        ),
        (
            "decoder_bias.embedding.weight",
            ("decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",),
        ),
        ("encoder_norm.weight", ("encoder.final_layer_norm.weight",)),
        ("decoder_norm.weight", ("decoder.final_layer_norm.weight",)),
    ]

    def ffn(ours: str, theirs: str):
        return [
            (
                f"{ours}.ffn.fc.weight",
                (f"{theirs}.DenseReluDense.wi_0.weight", f"{theirs}.DenseReluDense.wi_1.weight"),
            ),
            (f"{ours}.ffn.proj.weight", (f"{theirs}.DenseReluDense.wo.weight",)),
        ]

    def self_attention(ours: str, theirs: str):
        qkv = tuple(f"{theirs}.SelfAttention.{n}.weight" for n in "qkv")
        return [
            (f"{ours}.norm1.weight", (f"{theirs}.layer_norm.weight",)),
            (f"{ours}.mixer.qkv.weight", qkv),
            (f"{ours}.mixer.proj.weight", (f"{theirs}.SelfAttention.o.weight",)),
        ]

    for i in range(cfg.num_layers):
        ours, theirs = f"encoder.{i}", f"encoder.block.{i}.layer"
        pairs += self_attention(ours, f"{theirs}.0")
        pairs += [(f"{ours}.norm2.weight", (f"{theirs}.1.layer_norm.weight",))]
        pairs += ffn(ours, f"{theirs}.1")
    for i in range(cfg.num_decoder_layers):
        self_block, cross_block, theirs = (
            f"decoder.{2 * i}",
            f"decoder.{2 * i + 1}",
            f"decoder.block.{i}.layer",
        )
        pairs += self_attention(self_block, f"{theirs}.0")
        pairs += [
            (f"{cross_block}.norm1.weight", (f"{theirs}.1.layer_norm.weight",)),
            (f"{cross_block}.mixer.q.weight", (f"{theirs}.1.EncDecAttention.q.weight",)),
            (
                f"{cross_block}.mixer.kv.weight",
                (f"{theirs}.1.EncDecAttention.k.weight", f"{theirs}.1.EncDecAttention.v.weight"),
            ),
            (f"{cross_block}.mixer.proj.weight", (f"{theirs}.1.EncDecAttention.o.weight",)),
            (f"{cross_block}.norm2.weight", (f"{theirs}.2.layer_norm.weight",)),
        ]
        pairs += ffn(cross_block, f"{theirs}.2")
    return pairs


def to_hf_config(cfg: T5Config) -> HFT5Config:
    check_exportable(cfg)
    hf = HFT5Config(
        vocab_size=cfg.vocab_size,
        d_model=cfg.dim,
        d_kv=cfg.head_dim,
        d_ff=cfg.ffn_dim,
        num_layers=cfg.num_layers,
        num_decoder_layers=cfg.num_decoder_layers,
        num_heads=cfg.num_heads,
        relative_attention_num_buckets=cfg.relative_attention_num_buckets,
        relative_attention_max_distance=cfg.relative_attention_max_distance,
        dropout_rate=cfg.dropout,
        layer_norm_epsilon=cfg.eps,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,  # v1.1: no d^-0.5 rescale of the decoder output
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        decoder_start_token_id=DECODER_START_ID,
    )
    hf.tie_word_embeddings = False  # and an lm_head of its own (see the module docstring)
    return hf


def from_hf_config(hf: HFT5Config) -> T5Config:
    if not getattr(hf, "is_gated_act", False) or hf.dense_act_fn not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ConfigError(
            f"only T5 v1.1 (feed_forward_proj='gated-gelu') converts to seqlab's t5, got "
            f"feed_forward_proj={hf.feed_forward_proj!r}"
        )
    if getattr(hf, "scale_decoder_outputs", False):
        raise ConfigError("this T5 rescales its decoder output by d^-0.5 (T5 v1.0); seqlab's t5 is v1.1")
    return T5Config(
        vocab_size=hf.vocab_size,
        dim=hf.d_model,
        head_dim=hf.d_kv,
        ffn_dim=hf.d_ff,
        num_layers=hf.num_layers,
        num_decoder_layers=hf.num_decoder_layers,
        num_heads=hf.num_heads,
        relative_attention_num_buckets=hf.relative_attention_num_buckets,
        relative_attention_max_distance=hf.relative_attention_max_distance,
        dropout=float(hf.dropout_rate),
        eps=hf.layer_norm_epsilon,
    )


def to_hf_state_dict(model: T5Model) -> dict[str, torch.Tensor]:
    """The seqlab state as Hugging Face T5 keys (the shared embedding in all three slots)."""
    state = model.state_dict()
    out = {}
    for ours, theirs in key_map(model.config):
        for key, part in zip(theirs, state[ours].chunk(len(theirs), dim=0)):
            out[key] = part.clone()
    out["encoder.embed_tokens.weight"] = out["decoder.embed_tokens.weight"] = out["shared.weight"]
    return out


def from_hf_state_dict(state: dict[str, torch.Tensor], cfg: T5Config) -> dict[str, torch.Tensor]:
    """Hugging Face T5 keys -> seqlab keys (the parameters of T5Model(cfg))."""
    missing = [k for _, theirs in key_map(cfg) for k in theirs if k not in state]
    if missing:
        raise ConfigError(f"the Hugging Face T5 state lacks {len(missing)} keys, e.g. {missing[0]!r}")
    return {ours: torch.cat([state[k] for k in theirs], dim=0) for ours, theirs in key_map(cfg)}


def to_hf(model: T5Model) -> T5ForConditionalGeneration:
    """A Hugging Face T5ForConditionalGeneration with the weights of seqlab's `t5` model."""
    param = model.embed.weight
    hf = T5ForConditionalGeneration(to_hf_config(model.config)).to(device=param.device, dtype=param.dtype)
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(model), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"T5 key mapping is incomplete: missing {missing}, unexpected {unexpected}")
    return hf.train(model.training)


def from_hf(hf: T5ForConditionalGeneration) -> T5Model:
    """seqlab's `t5` with the weights of a Hugging Face T5 v1.1 T5ForConditionalGeneration."""
    cfg = from_hf_config(hf.config)
    param = hf.shared.weight
    model = T5Model(cfg).to(device=param.device, dtype=param.dtype)
    model.load_state_dict(from_hf_state_dict(hf.state_dict(), cfg), strict=False)
    return model.train(hf.training)


# The kat5 wrapper.

CORE_FIELDS = tuple(f.name for f in dataclasses.fields(KAT5Config))


@strict
class KAT5HFConfig(PreTrainedConfig):
    """seqlab's KAT5Config as a Hugging Face config, field for field."""

    model_type = "kat5"
    attribute_map = {
        "hidden_size": "dim",
        "num_attention_heads": "num_heads",
        "num_hidden_layers": "num_layers",
        "d_model": "dim",
    }

    vocab_size: int = 384
    dim: int = 64
    head_dim: int = 16
    ffn_dim: int = 128
    num_layers: int = 2
    num_decoder_layers: int | None = None
    num_heads: int = 4
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout: float | int = 0.1
    eps: float = 1e-6
    ffn: str = "kan"
    ffn_options: dict | None = None
    self_attention: str = "attention"
    self_attention_options: dict | None = None
    position: str = "relative"
    rope_base: float | int = 10000.0
    max_seq_len: int = 512
    kan_hidden_dim: int | None = None
    kan_reg_coef: float | int = 1e-5
    is_encoder_decoder: bool = True
    pad_token_id: int | None = PAD_ID
    eos_token_id: int | None = EOS_ID
    decoder_start_token_id: int | None = DECODER_START_ID
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.to_core()  # invalid values are a ConfigError now, not at model creation

    def to_core(self) -> KAT5Config:
        values = {name: getattr(self, name) for name in CORE_FIELDS}
        if values["ffn_options"] is None:
            del values["ffn_options"]
        else:
            values["ffn_options"] = dict(values["ffn_options"])
        values["self_attention_options"] = dict(values["self_attention_options"] or {})
        values["dropout"] = float(values["dropout"])
        values["rope_base"] = float(values["rope_base"])
        values["kan_reg_coef"] = float(values["kan_reg_coef"])
        return KAT5Config(**values)

    @classmethod
    def from_core(cls, core: KAT5Config, **kwargs) -> "KAT5HFConfig":
        return cls(**{name: getattr(core, name) for name in CORE_FIELDS}, **kwargs)


class KAT5HFCache(Cache):
    """generate()'s cache: the seqlab decoding state `state` (per decoder block a KVState or a
    CrossKVState). get_seq_length() counts the decoder tokens it has consumed."""

    def __init__(self, state: StateCache):
        super().__init__(layers=[])
        self.state = state

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.state.length

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return -1

    @property
    def is_croppable(self) -> bool:
        return False

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


class _Encoder(nn.Module):
    """get_encoder() for generate: the seqlab encoder behind Hugging Face's encoder call."""

    def __init__(self, model: T5Model):
        super().__init__()
        self.model = model

    def forward(self, input_ids=None, attention_mask=None, return_dict=True, **kwargs):
        return BaseModelOutput(last_hidden_state=self.model.encode(input_ids, attention_mask))


class KAT5HFForConditionalGeneration(PreTrainedModel, GenerationMixin):
    """seqlab's kat5 under Hugging Face: save/from_pretrained, Auto classes, generate (greedy
    and beam) with the seqlab decoding state as the cache."""

    config: KAT5HFConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["Block"]

    def __init__(self, config: KAT5HFConfig):
        super().__init__(config)
        self.model = KAT5Model(config.to_core())
        self.post_init()

    @classmethod
    def from_core(cls, core: KAT5Model) -> "KAT5HFForConditionalGeneration":
        """Wrap a trained seqlab kat5 model (copies its weights), e.g. to save_pretrained it."""
        param = core.embed.weight
        model = cls(KAT5HFConfig.from_core(core.config)).to(device=param.device, dtype=param.dtype)
        model.model.load_state_dict(core.state_dict())
        return model.eval()

    def _init_weights(self, module: nn.Module) -> None:
        # The seqlab model initializes itself when built; only non-persistent buffers that
        # from_pretrained leaves empty need rebuilding.
        if isinstance(module, RotaryEmbedding):
            module.set_base(module.base)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed

    def get_output_embeddings(self) -> nn.Linear:
        return self.model.head

    def get_encoder(self, modality=None) -> nn.Module:
        return _Encoder(self.model)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # forward() creates the KAT5HFCache

    def prepare_inputs_for_generation(
        self,
        decoder_input_ids: torch.LongTensor,
        cache: KAT5HFCache | None = None,
        past_key_values: KAT5HFCache | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_outputs=None,
        **kwargs,
    ):
        # The cache has consumed the first `past` decoder tokens: feed the rest (one per step).
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
        cache: KAT5HFCache | None = None,
        past_key_values: KAT5HFCache | None = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> Seq2SeqLMOutput | tuple:
        """labels [b, t]: target ids (-100 ignored), shifted right into the decoder inputs
        when decoder_input_ids is None; the loss is their mean cross-entropy plus the model's
        auxiliary losses (KAN regularization). With a cache (or use_cache=True, which starts
        one) the decoder tokens continue the ones it consumed; the memory comes from
        encoder_outputs when given, else input_ids are encoded (once per cache)."""
        kwargs.pop("num_items_in_batch", None)
        cache = cache if cache is not None else past_key_values
        if cache is None and use_cache:
            rows = decoder_input_ids if decoder_input_ids is not None else input_ids
            cache = KAT5HFCache(self.model.make_cache(rows.shape[0]))
        out = self.model(
            input_ids,
            attention_mask,
            decoder_input_ids,
            labels=labels,
            cache=cache.state if cache is not None else None,
            memory=encoder_outputs[0] if encoder_outputs is not None else None,
        )
        loss = out.total_loss() if out.loss is not None else None
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if not return_dict:
            return tuple(v for v in (loss, out.logits, cache) if v is not None)
        return Seq2SeqLMOutput(loss=loss, logits=out.logits, **{CACHE_NAME: cache})


def register() -> None:
    """Make AutoConfig / AutoModelForSeq2SeqLM resolve model_type "kat5" (idempotent)."""
    AutoConfig.register("kat5", KAT5HFConfig, exist_ok=True)
    AutoModelForSeq2SeqLM.register(KAT5HFConfig, KAT5HFForConditionalGeneration, exist_ok=True)


register()

__all__ = [
    "KAT5HFCache",
    "KAT5HFConfig",
    "KAT5HFForConditionalGeneration",
    "check_exportable",
    "from_hf",
    "from_hf_config",
    "from_hf_state_dict",
    "key_map",
    "register",
    "to_hf",
    "to_hf_config",
    "to_hf_state_dict",
]
