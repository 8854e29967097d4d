"""T5 v1.1: the encoder-decoder transformer of Raffel et al. 2020, as Hugging Face's
T5ForConditionalGeneration computes it with feed_forward_proj="gated-gelu".

    encoder: x = dropout(E[src]);  L x [x += dropout(SelfAttn(rms(x), bias_bi, src padding));
                                         x += FFN(rms(x))];  memory = dropout(rms(x))
    decoder: y = dropout(E[shift_right(labels)]);
             L x [y += dropout(CausalSelfAttn(rms(y), bias_causal));
                  y += dropout(CrossAttn(rms(y), memory, src padding));  y += FFN(rms(y))]
    logits = head(dropout(rms(y)))

- one token embedding E shared by encoder and decoder inputs; an untied output head and NO
  d^-0.5 rescale of the decoder output (T5 v1.1; v1.0 tied the head and rescaled). The head
  is initialized N(0, dim^-0.5), so initial logits are O(1) (Hugging Face's _init_weights
  draws N(0, 1), initial logits of std sqrt(dim)); everything else is initialized as T5 does:
  E ~ N(0, 1), q ~ N(0, (dim head_dim)^-0.5), k, v ~ N(0, dim^-0.5), o ~ N(0, (h head_dim)^-0.5),
  FFN in ~ N(0, dim^-0.5), out ~ N(0, ffn_dim^-0.5), relative bias ~ N(0, dim^-0.5);
- rms = T5's RMSNorm: x / sqrt(mean(x^2) + eps) * w, no bias, no mean (torch.nn.RMSNorm, which
  matches Hugging Face's T5LayerNorm to fp32 round-off); pre-norm residual around every
  sublayer, each with its own norm (Hugging Face's layer[0], layer[1], layer[2]);
- attention logits are q.k with NO 1/sqrt(d) (T5 folds it into the init of q); h heads of
  width head_dim (T5's d_kv, free of dim);
- positions enter once, through T5's relative position bias only (no absolute embedding):
  bidirectional buckets in the encoder, causal buckets in the decoder (32 buckets, max distance
  128), one table per stack, computed once per forward and shared by all of its layers (T5
  stores it in the first layer); cross-attention has none;
- FFN: gated GELU with GELU's tanh approximation, dropout on the hidden product and output;
- every layer has its own weights; decoder layer i + 1 reads layer i's output.

Built from the shared pieces: seqlab.layers.block.Block (an encoder layer is one Block(self
attention, FFN); a decoder layer is two: Block(causal self-attention, None) then Block(cross
attention, FFN), so `decoder[2 i]` and `decoder[2 i + 1]` are decoder layer i), Attention,
Context and the decoding states of seqlab.layers.cache. The self-attention mixer of both stacks
comes from the mixer registry (`self_attention`, default "attention"), the feed-forward from
the feed-forward registry (`ffn`: "gated_gelu" for t5, "kan" for kat5), and `position` picks
"relative" (T5's bias) or "rotary" (RoPE tables in the Context, for hosts such as hybrid
local + global attention).

Token ids follow Hugging Face's T5: pad = 0, eos = 1, unk = 2; the decoder start token is pad.
Sources may be padded on either side (attention_mask 1 = token): positions are column indices,
and a relative bias only sees their differences.

Decoding: make_cache(batch_size) holds, per decoder block, a KVState (self-attention) and a
CrossKVState (the memory's keys and values, projected on the first call and reused after).
`forward(input_ids, decoder_input_ids=..., cache=cache)` encodes the source on the first call
only; later calls pass the new decoder tokens (input_ids may be None).

Shapes: input_ids [b, s], attention_mask [b, s], decoder_input_ids / labels [b, t]
-> logits [b, t, vocab_size].
"""

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from seqlab.config import check_fields
from seqlab.errors import ConfigError
from seqlab.layers.attention import Attention
from seqlab.layers.block import Block, Context
from seqlab.layers.cache import Cache, CrossKVState
from seqlab.layers.embedding import check_token_ids
from seqlab.layers.ffn import FFNS, make_ffn
from seqlab.layers.mixers import MIXERS, make_mixer
from seqlab.layers.mlp import GatedGELU
from seqlab.layers.norm import make_norm
from seqlab.layers.relative_bias import RelativePositionBias
from seqlab.layers.rotary import RotaryEmbedding
from seqlab.models.output import ModelOutput, lm_loss

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
DECODER_START_ID = PAD_ID
POSITIONS = ("relative", "rotary")


@dataclass
class T5Config:
    vocab_size: int = 384
    dim: int = 64  # T5's d_model
    head_dim: int = 16  # T5's d_kv: the width of one head (num_heads * head_dim need not be dim)
    ffn_dim: int = 128  # T5's d_ff
    num_layers: int = 2  # encoder layers
    num_decoder_layers: int | None = None  # None = num_layers
    num_heads: int = 4
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout: float = 0.1
    eps: float = 1e-6
    ffn: str = "gated_gelu"  # a feed-forward of seqlab.layers.ffn ("kan" for kat5)
    ffn_options: dict = field(default_factory=dict)
    self_attention: str = "attention"  # a mixer of seqlab.layers.mixers, both stacks
    self_attention_options: dict = field(default_factory=dict)
    position: str = "relative"  # "relative" (T5's bias) | "rotary"
    rope_base: float = 10000.0  # position="rotary" only
    # The longest source or target a task should feed. T5's relative positions have no hard
    # limit; this sizes decoding caches and rotary tables (which grow on demand).
    max_seq_len: int = 512

    def __post_init__(self):
        if self.num_decoder_layers is None:
            self.num_decoder_layers = self.num_layers
        check_fields(
            self,
            positive_ints=(
                "vocab_size",
                "dim",
                "head_dim",
                "ffn_dim",
                "num_layers",
                "num_decoder_layers",
                "num_heads",
                "relative_attention_num_buckets",
                "relative_attention_max_distance",
                "max_seq_len",
            ),
            above={"eps": 0.0, "rope_base": 1.0},
            unit=("dropout",),
            choices={"ffn": tuple(FFNS), "self_attention": tuple(MIXERS), "position": POSITIONS},
        )
        if self.vocab_size <= UNK_ID:
            raise ConfigError(
                f"model.vocab_size={self.vocab_size} leaves no room for tokens: ids 0, 1, 2 are pad, eos, unk"
            )
        if self.relative_attention_num_buckets < 4:
            raise ConfigError(
                "model.relative_attention_num_buckets must be >= 4, got "
                f"{self.relative_attention_num_buckets}"
            )
        exact = self.relative_attention_num_buckets // 4  # the encoder's exact buckets (the fewest)
        if self.relative_attention_max_distance <= exact:
            raise ConfigError(
                f"model.relative_attention_max_distance must exceed {exact} "
                f"(relative_attention_num_buckets / 4), got {self.relative_attention_max_distance}"
            )
        if self.position == "rotary" and self.head_dim % 2:
            raise ConfigError(f"position='rotary' needs an even model.head_dim, got {self.head_dim}")

    def ffn_arguments(self) -> dict:
        """Keyword arguments of every feed-forward (kat5 derives its KAN width from ffn_dim)."""
        return {"hidden_dim": self.ffn_dim, **self.ffn_options}


PRESETS = {
    "tiny": dict(dim=32, head_dim=8, ffn_dim=80, num_layers=2, num_heads=4),
    "baby": dict(dim=128, head_dim=32, ffn_dim=320, num_layers=3, num_heads=4),
    # T5 v1.1 small is dim 512, d_kv 64, d_ff 1024, 8 + 8 layers, 6 heads; this is its shape at
    # CPU scale.
    "small": dict(dim=256, head_dim=32, ffn_dim=640, num_layers=4, num_heads=6),
}


def shift_right(labels: Tensor, start_id: int = DECODER_START_ID, pad_id: int = PAD_ID) -> Tensor:
    """Decoder inputs from labels [b, t]: the start token, then labels[:, :-1]; -100 -> pad."""
    shifted = labels.new_full(labels.shape, start_id)
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill(shifted == -100, pad_id)


def _self_attention(cfg: T5Config, causal: bool) -> nn.Module:
    options = dict(cfg.self_attention_options)
    if cfg.self_attention == "attention":
        options = {
            "head_dim": cfg.head_dim,
            "scale": 1.0,
            "rotary": cfg.position == "rotary",
            **options,
        }
    try:
        return make_mixer(
            cfg.self_attention,
            cfg.dim,
            num_heads=cfg.num_heads,
            dropout=cfg.dropout,
            max_seq_len=cfg.max_seq_len,
            causal=causal,
            **options,
        )
    except ValueError as e:
        raise ConfigError(f"model.self_attention={cfg.self_attention!r}: {e}") from None


def _ffn(cfg: T5Config) -> nn.Module:
    try:
        return make_ffn(cfg.ffn, cfg.dim, dropout=cfg.dropout, **cfg.ffn_arguments())
    except ValueError as e:
        raise ConfigError(f"model.ffn={cfg.ffn!r}: {e}") from None


class T5Model(nn.Module):
    is_seq2seq = True
    causal = False  # the encoder sees its whole source; the decoder alone is causal

    def __init__(self, cfg: T5Config):
        super().__init__()
        self.config = cfg
        C, h = cfg.dim, cfg.num_heads
        self.embed = nn.Embedding(cfg.vocab_size, C)  # shared by encoder and decoder inputs
        self.dropout = nn.Dropout(cfg.dropout)

        def block(mixer, ffn, name):
            return Block(C, mixer, ffn, "rmsnorm", eps=cfg.eps, name=name)

        def cross_attention():
            return Attention(C, h, cross=True, head_dim=cfg.head_dim, scale=1.0, dropout=cfg.dropout)

        self.encoder = nn.ModuleList(
            [
                block(_self_attention(cfg, causal=False), _ffn(cfg), f"encoder{i}")
                for i in range(cfg.num_layers)
            ]
        )
        self.decoder = nn.ModuleList()
        for i in range(cfg.num_decoder_layers):
            self.decoder.append(block(_self_attention(cfg, causal=True), None, f"decoder{i}.self"))
            self.decoder.append(block(cross_attention(), _ffn(cfg), f"decoder{i}"))
        self.encoder_norm = make_norm("rmsnorm", C, eps=cfg.eps)
        self.decoder_norm = make_norm("rmsnorm", C, eps=cfg.eps)
        self.encoder_bias = self.decoder_bias = self.rotary = None
        if cfg.position == "relative":
            buckets = dict(
                num_buckets=cfg.relative_attention_num_buckets,
                max_distance=cfg.relative_attention_max_distance,
            )
            self.encoder_bias = RelativePositionBias(h, bidirectional=True, **buckets)
            self.decoder_bias = RelativePositionBias(h, bidirectional=False, **buckets)
        else:
            self.rotary = RotaryEmbedding(cfg.head_dim, cfg.max_seq_len, cfg.rope_base)
        self.head = nn.Linear(C, cfg.vocab_size, bias=False)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        cfg = self.config
        c, d, inner, f = cfg.dim, cfg.head_dim, cfg.num_heads * cfg.head_dim, cfg.ffn_dim
        nn.init.normal_(self.embed.weight, std=1.0)
        nn.init.normal_(self.head.weight, std=c**-0.5)
        for module in self.modules():
            if isinstance(module, Attention) and module.proj.in_features == inner:
                if module.cross:
                    q, (k, v) = module.q.weight, module.kv.weight.chunk(2)
                else:
                    q, k, v = module.qkv.weight.chunk(3)
                nn.init.normal_(q, std=(c * d) ** -0.5)
                nn.init.normal_(k, std=c**-0.5)
                nn.init.normal_(v, std=c**-0.5)
                nn.init.normal_(module.proj.weight, std=inner**-0.5)
            elif isinstance(module, GatedGELU):
                nn.init.normal_(module.fc.weight, std=c**-0.5)
                nn.init.normal_(module.proj.weight, std=f**-0.5)
            elif isinstance(module, RelativePositionBias):
                nn.init.normal_(module.embedding.weight, std=c**-0.5)

    @property
    def vocab_size(self) -> int:
        return self.embed.num_embeddings

    @property
    def can_decode(self) -> bool:
        """The decoder decodes incrementally (one KV cache per self-attention layer)."""
        return all(block.can_decode for block in self.decoder)

    def make_cache(self, batch_size: int, capacity: int | None = None, device=None, dtype=None) -> Cache:
        """Decoding state of the decoder: a KVState per self-attention block, a CrossKVState per
        cross-attention block; capacity = the decoder tokens expected (the buffers grow)."""
        if not self.can_decode:
            raise ValueError(f"{type(self).__name__}'s self-attention mixer cannot decode incrementally")
        p = self.embed.weight
        device, dtype = device or p.device, dtype or p.dtype
        capacity = capacity or self.config.max_seq_len
        return Cache([block.init_state(batch_size, capacity, device, dtype) for block in self.decoder])

    def _context(
        self, positions: Tensor, key_positions: Tensor, bias: nn.Module | None, x: Tensor
    ) -> Context:
        """Context with the stack's positions: the relative bias [1, h, t, t_k] or rotary tables."""
        ctx = Context(positions=positions)
        if bias is not None:
            ctx.attn_bias = bias(positions, key_positions)
        else:
            ctx.rotary = self.rotary(positions, x.dtype, max_position=int(key_positions.shape[-1]))
        return ctx

    def _encode(self, input_ids: Tensor, attention_mask: Tensor | None) -> tuple[Tensor, Context]:
        check_token_ids(input_ids, self.vocab_size)
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} must equal input_ids shape "
                f"{tuple(input_ids.shape)}"
            )
        x = self.dropout(self.embed(input_ids))  # [b, s, c]
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        ctx = self._context(positions, positions, self.encoder_bias, x)
        ctx.padding_mask = attention_mask
        for block in self.encoder:
            x = block(x, ctx)
        return self.dropout(self.encoder_norm(x)), ctx

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """The encoder output (the memory) [b, s, c] for source ids [b, s]."""
        return self._encode(input_ids, attention_mask)[0]

    def decode(
        self,
        decoder_input_ids: Tensor,
        memory: Tensor | None = None,
        memory_mask: Tensor | None = None,
        cache: Cache | None = None,
    ) -> ModelOutput:
        """Logits [b, t, v] of the decoder over decoder_input_ids [b, t] (already shifted) given
        the memory [b, s, c] and its padding mask [b, s]. With a cache the tokens continue the
        ones it has consumed; a cache that has seen a memory reuses its keys and values (memory
        may then be None)."""
        check_token_ids(decoder_input_ids, self.vocab_size)
        if memory is None and not _holds_memory(cache):
            raise ValueError("decode needs the encoder output (memory) or a cache that has consumed one")
        fed = cache.length if cache is not None else 0
        t = decoder_input_ids.shape[1]
        device = decoder_input_ids.device
        y = self.dropout(self.embed(decoder_input_ids))  # [b, t, c]
        positions = torch.arange(fed, fed + t, device=device)
        ctx = self._context(positions, torch.arange(fed + t, device=device), self.decoder_bias, y)
        ctx.memory, ctx.memory_mask = memory, memory_mask
        for i, block in enumerate(self.decoder):
            y = block(y, ctx, cache.layers[i] if cache is not None else None)
        logits = self.head(self.dropout(self.decoder_norm(y)))  # [b, t, v]
        return ModelOutput(logits=logits, aux_losses=ctx.aux, metrics=ctx.metrics, cache=cache)

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        decoder_input_ids: Tensor | None = None,
        labels: Tensor | None = None,
        targets: Tensor | None = None,
        cache: Cache | None = None,
        memory: Tensor | None = None,
    ) -> ModelOutput:
        """Hugging Face's argument order. labels (targets is an alias) [b, t]: the target ids,
        -100 ignored; without decoder_input_ids the decoder reads them shifted right with the
        start token (-100 -> pad). Without either, the decoder runs one step from the start
        token (logits [b, 1, v]). loss = mean cross-entropy over labels != -100.

        The source is encoded unless `memory` (an encoder output [b, s, c]) is given or the
        cache already holds one's keys and values."""
        labels = targets if labels is None else labels
        if decoder_input_ids is None:
            if labels is not None:
                decoder_input_ids = shift_right(labels)
            else:
                if input_ids is None:
                    raise ValueError("give input_ids (the source) and decoder_input_ids or labels")
                decoder_input_ids = input_ids.new_full((input_ids.shape[0], 1), DECODER_START_ID)
        aux, metrics = {}, {}
        if _holds_memory(cache):
            memory = None
        elif memory is None:
            if input_ids is None:
                raise ValueError("input_ids (the source) are needed until a cache holds its encoder output")
            memory, enc_ctx = self._encode(input_ids, attention_mask)
            aux.update(enc_ctx.aux)
            metrics.update(enc_ctx.metrics)
        out = self.decode(decoder_input_ids, memory, attention_mask, cache)
        out.aux_losses = {**aux, **out.aux_losses}
        out.metrics = {**metrics, **out.metrics}
        if labels is not None:
            if labels.shape != decoder_input_ids.shape:
                raise ValueError(
                    f"labels shape {tuple(labels.shape)} must equal decoder_input_ids shape "
                    f"{tuple(decoder_input_ids.shape)}"
                )
            check_token_ids(labels.masked_fill(labels == -100, 0), self.vocab_size)
            out.loss = lm_loss(out.logits, labels)
        return out


def _holds_memory(cache: Cache | None) -> bool:
    """Whether the cache's cross-attention states hold a source's keys and values."""
    if cache is None:
        return False
    return any(isinstance(s, CrossKVState) and s.k is not None for s in cache.layer_states())


__all__ = [
    "DECODER_START_ID",
    "EOS_ID",
    "PAD_ID",
    "PRESETS",
    "UNK_ID",
    "T5Config",
    "T5Model",
    "shift_right",
]
