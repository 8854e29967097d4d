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

kat5: `t5` with KAN feed-forwards has no Hugging Face counterpart; its Hugging Face form is
seqlab's generic wrapper (seqlab.models.hf), as for every other registry model:
`KAT5HFConfig` / `KAT5HFForConditionalGeneration` are the names under which this module keeps
hf_classes("kat5") (model_type "seqlab_kat5", the core config in `seqlab_config`), and
`KAT5HFCache` the generic state cache.

Shapes: input_ids [b, s] -> logits [b, t, vocab_size].
"""

import torch
from transformers import T5Config as HFT5Config
from transformers import T5ForConditionalGeneration

from seqlab.errors import ConfigError
from seqlab.models.hf import SeqlabHFCache, hf_classes
from seqlab.models.t5 import DECODER_START_ID, EOS_ID, PAD_ID, T5Config, T5Model


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


def exportable(cfg: T5Config) -> bool:
    """Whether `cfg` is a Hugging Face T5 v1.1 (check_exportable passes)."""
    try:
        check_exportable(cfg)
    except ConfigError:
        return False
    return True


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


# kat5's Hugging Face form: the generic wrapper, under the names this module gave it.
KAT5HFConfig, KAT5HFForConditionalGeneration = hf_classes("kat5")
KAT5HFCache = SeqlabHFCache

__all__ = [
    "KAT5HFCache",
    "KAT5HFConfig",
    "KAT5HFForConditionalGeneration",
    "check_exportable",
    "exportable",
    "from_hf",
    "from_hf_config",
    "from_hf_state_dict",
    "key_map",
    "to_hf",
    "to_hf_config",
    "to_hf_state_dict",
]
