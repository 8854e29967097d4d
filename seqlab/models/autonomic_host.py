"""`autonomic_host`: the Autonomic-Layer seed's encoder-decoder ("YourModel", the Whisper-like
"Echo"), built on seqlab's T5 with hybrid local + global self-attention and RoPE.

    memory = encoder(input_features)          token ids [b, s] -> embedding, or float frames
                                              [b, s, n_feat] -> conv stem
    logits = decoder(dec_input_ids, memory)   dec_input_ids = labels shifted right (start = pad)
    forward(input_features, labels=None, dec_input_ids=None) -> {"loss", "logits"}

The network is seqlab.models.t5.T5Model (T5 v1.1: RMSNorm pre-norm blocks, gated-GELU
feed-forwards, untied head, cross-attention in every decoder layer) with two changes the seed's
model has: every self-attention layer of both stacks is seqlab.layers.hybrid.HybridAttention
(a sliding-window branch and a full branch mixed by a learned gate; bidirectional in the
encoder, |i - j| <= window // 2 for its local branch, causal in the decoder), and positions are
rotary (one RoPE table shared by both stacks) instead of T5's relative bias, so the autonomic
controller has a RoPE base and a window to move: `--set train.autonomic=true` trains it with
the controller on the seq2seq task (grapheme-to-phoneme by default).

Frames: with num_features > 0 the encoder reads float frames [b, s, n_feat] through a small
conv stem, as the seed's audio encoder (Whisper's): Conv1d(n_feat -> dim, 3) + GELU +
Conv1d(dim -> dim, 3, stride 2) + GELU, so the memory has ceil(s / 2) positions and the frame
padding mask is taken at every second frame. No speech data set can be had offline today, so
this path is tested on synthetic frames only; the registry's tasks feed token ids.

The return value is seqlab's ModelOutput, which reads like the seed's dict (out["loss"],
out["logits"]) and like Hugging Face's output. The seed's argument names are this forward's
(input_features, labels, dec_input_ids); seqlab's tasks call it with attention_mask,
decoder_input_ids, targets and cache as they call t5, and decoding (encode / decode /
make_cache) is t5's, so generate_seq2seq, beam search and the KV caches work unchanged.

The seed's YourModel also took an `autonomic_layer` and adjusted it inside forward with
loss.item(); `AutonomicHost(cfg, autonomic_layer=layer)` does the same (one observation per
training forward with labels, through seqlab.models.autonomic_seed.AutonomicLayer, which fixes
the seed's double EWMA step). That costs a host sync per forward and observes micro-batches;
seqlab's trainer uses the `autonomic` callback instead, once per optimizer step.

Initialization: t5's for everything t5 builds; the hybrid layers get T5's variances with the
1/sqrt(d) of their logits taken into account (q, k, v, gate ~ N(0, dim^-0.5), output
~ N(0, dim^-0.5)).

Shapes: input_features [b, s] long or [b, s, n_feat] float, attention_mask [b, s],
labels / dec_input_ids [b, t] -> logits [b, t, vocab_size].
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqlab.config import check_fields
from seqlab.errors import ConfigError
from seqlab.layers.block import Context
from seqlab.layers.cache import Cache, CrossKVState
from seqlab.layers.hybrid import HybridAttention
from seqlab.models.output import ModelOutput
from seqlab.models.t5 import DECODER_START_ID, T5Config, T5Model


@dataclass
class AutonomicHostConfig:
    vocab_size: int = 384
    dim: int = 64
    num_heads: int = 4  # head dim = dim / num_heads (even: rotary)
    ffn_dim: int = 128
    num_layers: int = 2  # encoder layers
    num_decoder_layers: int | None = None  # None = num_layers
    window: int = 8  # local span of every hybrid self-attention layer
    rope_base: float = 10000.0
    dropout: float = 0.1
    eps: float = 1e-6
    max_seq_len: int = 512  # sizes caches and rotary tables (they grow on demand)
    num_features: int = 0  # 0: input_features are token ids; > 0: float frames of this width

    def __post_init__(self):
        if self.num_decoder_layers is None:
            self.num_decoder_layers = self.num_layers
        check_fields(
            self,
            positive_ints=(
                "vocab_size",
                "dim",
                "num_heads",
                "ffn_dim",
                "num_layers",
                "num_decoder_layers",
                "window",
                "max_seq_len",
            ),
            above={"eps": 0.0, "rope_base": 1.0},
            unit=("dropout",),
        )
        if self.dim % self.num_heads or (self.dim // self.num_heads) % 2:
            raise ConfigError(
                f"model.num_heads={self.num_heads} must divide model.dim={self.dim} into an even head dim "
                "(rotary positions)"
            )
        if (
            isinstance(self.num_features, bool)
            or not isinstance(self.num_features, int)
            or self.num_features < 0
        ):
            raise ConfigError(
                f"model.num_features must be an int >= 0 (0 = token ids), got {self.num_features!r}"
            )

    def t5_config(self) -> T5Config:
        return T5Config(
            vocab_size=self.vocab_size,
            dim=self.dim,
            head_dim=self.dim // self.num_heads,
            ffn_dim=self.ffn_dim,
            num_layers=self.num_layers,
            num_decoder_layers=self.num_decoder_layers,
            num_heads=self.num_heads,
            dropout=self.dropout,
            eps=self.eps,
            self_attention="hybrid",
            self_attention_options={"window": self.window},
            position="rotary",
            rope_base=self.rope_base,
            max_seq_len=self.max_seq_len,
        )


PRESETS = {
    # t5's sizes (small: 8 heads of 32, since t5 small's 6 do not divide 256).
    "tiny": dict(dim=32, ffn_dim=80, num_layers=2, num_heads=4, window=4),
    "baby": dict(dim=128, ffn_dim=320, num_layers=3, num_heads=4, window=8),
    "small": dict(dim=256, ffn_dim=640, num_layers=4, num_heads=8, window=8),
}


class ConvStem(nn.Module):
    """Frames [b, s, n_feat] -> [b, ceil(s / 2), dim] (Whisper's two convolutions)."""

    def __init__(self, num_features: int, dim: int):
        super().__init__()
        self.conv1 = nn.Conv1d(num_features, dim, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(dim, dim, kernel_size=3, stride=2, padding=1)

    def forward(self, frames: Tensor) -> Tensor:
        x = F.gelu(self.conv1(frames.transpose(1, 2)))
        return F.gelu(self.conv2(x)).transpose(1, 2)


class AutonomicHost(nn.Module):
    is_seq2seq = True
    causal = False  # the encoder sees its whole source; the decoder alone is causal

    def __init__(self, cfg: AutonomicHostConfig, autonomic_layer=None):
        super().__init__()
        self.config = cfg
        self.t5 = T5Model(cfg.t5_config())
        self.stem = ConvStem(cfg.num_features, cfg.dim) if cfg.num_features else None
        self._init_hybrid()
        # A plain object, not a submodule (it holds no weights and refers to this model).
        self.autonomic_layer = autonomic_layer.attach(self) if autonomic_layer is not None else None

    @torch.no_grad()
    def _init_hybrid(self) -> None:
        std = self.config.dim**-0.5
        for module in self.modules():
            if isinstance(module, HybridAttention):
                for linear in (module.qkv, module.gate, module.proj):
                    nn.init.normal_(linear.weight, std=std)
                nn.init.zeros_(module.gate.bias)

    @property
    def vocab_size(self) -> int:
        return self.t5.vocab_size

    @property
    def can_decode(self) -> bool:
        return self.t5.can_decode

    def make_cache(self, batch_size: int, capacity: int | None = None, device=None, dtype=None) -> Cache:
        return self.t5.make_cache(batch_size, capacity, device, dtype)

    def _frame_mask(self, mask: Tensor | None, length: int) -> Tensor | None:
        """A frame padding mask [b, s] at the stem's output rate [b, length]."""
        if mask is None or mask.shape[1] == length:
            return mask
        return mask[:, ::2][:, :length]

    def _encode_frames(self, frames: Tensor, attention_mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        if frames.ndim != 3 or frames.shape[-1] != self.config.num_features:
            raise ValueError(
                f"input_features must be frames [batch, time, {self.config.num_features}], got shape "
                f"{tuple(frames.shape)}"
            )
        t5 = self.t5
        x = t5.dropout(self.stem(frames))  # [b, s', c]
        mask = self._frame_mask(attention_mask, x.shape[1])
        positions = torch.arange(x.shape[1], device=x.device)
        ctx = Context(positions=positions, rotary=t5.rotary(positions, x.dtype, max_position=x.shape[1]))
        ctx.padding_mask = mask
        for block in t5.encoder:
            x = block(x, ctx)
        return t5.dropout(t5.encoder_norm(x)), mask

    def encode(self, input_features: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """The memory [b, s', c] of token ids [b, s] or frames [b, s, n_feat]."""
        if self.stem is None:
            return self.t5.encode(input_features, attention_mask)
        return self._encode_frames(input_features, attention_mask)[0]

    def decode(self, decoder_input_ids, memory=None, memory_mask=None, cache=None) -> ModelOutput:
        if memory is not None and memory_mask is not None:
            memory_mask = self._frame_mask(memory_mask, memory.shape[1])
        return self.t5.decode(decoder_input_ids, memory, memory_mask, cache)

    def forward(
        self,
        input_features: Tensor | None = None,
        labels: Tensor | None = None,
        dec_input_ids: Tensor | None = None,
        *,
        attention_mask: Tensor | None = None,
        decoder_input_ids: Tensor | None = None,
        targets: Tensor | None = None,
        cache: Cache | None = None,
    ) -> ModelOutput:
        """The seed's forward: labels [b, t] (-100 ignored; targets is seqlab's alias) give the
        loss and, without dec_input_ids (decoder_input_ids), the decoder input shifted right."""
        labels = targets if labels is None else labels
        dec = decoder_input_ids if dec_input_ids is None else dec_input_ids
        if self.stem is None:
            out = self.t5(
                input_features,
                attention_mask=attention_mask,
                decoder_input_ids=dec,
                labels=labels,
                cache=cache,
            )
        else:
            memory = mask = None
            holds_memory = cache is not None and any(
                isinstance(s, CrossKVState) and s.k is not None for s in cache.layer_states()
            )
            if not holds_memory:
                memory, mask = self._encode_frames(input_features, attention_mask)
            if dec is None and labels is None:
                dec = torch.full((input_features.shape[0], 1), DECODER_START_ID, device=input_features.device)
            out = self.t5(
                None, attention_mask=mask, decoder_input_ids=dec, labels=labels, cache=cache, memory=memory
            )
        if self.autonomic_layer is not None and self.training and out.loss is not None:
            loss = float(out.loss.detach())  # the seed's loss.item(): one host sync per forward
            self.autonomic_layer.adjust_base(loss)
            self.autonomic_layer.adjust_window(loss)
        return out


__all__ = ["PRESETS", "AutonomicHost", "AutonomicHostConfig", "ConvStem"]
