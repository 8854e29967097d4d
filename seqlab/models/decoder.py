"""The decoder-only language-model skeleton every token LM in seqlab shares.

    token embedding [+ learned positions] -> dropout -> blocks -> norm -> head (tied)

`blocks` is any list of seqlab.layers.block.Block (attention, LEAP, Fastformer, hybrid,
mixed per layer in `stack`); the skeleton builds the Context once per forward (positions,
rotary tables, padding mask, and the adapt input when a `featurizer` is given), runs the
blocks with their per-layer decoding states, and returns one ModelOutput with the
feed-forwards' auxiliary losses and metrics. A model file builds its blocks and its
initialization and hands them to this class; it holds no architecture of its own.

Positions count real tokens only: with attention_mask (1 = token, 0 = pad) a left-padded
sequence gets the same positions as the unpadded one, and decoding continues from the real
tokens each sample has seen. position: "rotary" (RoPE tables in the context, applied by the
mixers that use them), "learned" (an absolute table added to the embedding; bounded by
max_seq_len), "none" (a mixer that brings its own, e.g. LEAP's decay).

Shapes: input_ids [b, t] -> logits [b, t, v].
"""

import math

import torch
from torch import Tensor, nn

from seqlab.layers.block import Block, Context, blocks_init_state, is_causal_stack
from seqlab.layers.cache import Cache
from seqlab.layers.embedding import check_token_ids
from seqlab.layers.norm import make_norm
from seqlab.layers.rotary import RotaryEmbedding
from seqlab.models.output import ModelOutput, lm_loss

POSITIONS = ("rotary", "learned", "none")


class DecoderLM(nn.Module):
    def __init__(
        self,
        config,
        blocks: list[Block],
        *,
        vocab_size: int,
        dim: int,
        max_seq_len: int,
        position: str = "rotary",
        rotary_dim: int | None = None,
        rope_base: float = 10000.0,
        dropout: float = 0.0,
        norm: str = "layernorm",
        norm_bias: bool = True,
        tie_embeddings: bool = True,
        featurizer: nn.Module | None = None,
    ):
        super().__init__()
        if position not in POSITIONS:
            raise ValueError(f"unknown position {position!r}; choose one of {POSITIONS}")
        self.config = config
        self.max_seq_len = max_seq_len
        self.embed = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Embedding(max_seq_len, dim) if position == "learned" else None
        self.rotary = RotaryEmbedding(rotary_dim, max_seq_len, rope_base) if position == "rotary" else None
        self.dropout = nn.Dropout(dropout)
        # Puts LFM's adapt input in the context (for token mixing and adaptive feed-forwards):
        # forward(x, padding_mask, cache) -> [b, t, a], its running state in cache.extra.
        self.featurizer = featurizer
        self.blocks = nn.ModuleList(blocks)
        self.norm = make_norm(norm, dim, norm_bias)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        if tie_embeddings:
            self.head.weight = self.embed.weight

    @property
    def vocab_size(self) -> int:
        return self.embed.num_embeddings

    @property
    def causal(self) -> bool:
        return is_causal_stack(self.blocks)

    @property
    def can_decode(self) -> bool:
        return self.causal and all(block.can_decode for block in self.blocks)

    @property
    def supports_focus_maps(self) -> bool:
        """Whether forward(return_maps=True) gives one explainability map per block (every
        mixer appends its own to ctx.maps, as LEAP's does): what `seqlab explain` needs."""
        return all(getattr(block.mixer, "supports_focus_maps", False) for block in self.blocks)

    @property
    def max_positions(self) -> int | None:
        """Longest sequence the model can read: max_seq_len with learned positions, the least
        `max_positions` of its mixers (LFM's token mixing has a fixed length), else None."""
        limits = [self.max_seq_len] if self.pos_embed is not None else []
        limits += [getattr(b.mixer, "max_positions", None) for b in self.blocks]
        limits = [n for n in limits if n is not None]
        return min(limits) if limits else None

    def set_base(self, base: float) -> None:
        """Change the RoPE base of every rotary table of the model (saved with its state)."""
        if self.rotary is None:
            raise ValueError("this model has no rotary positions: there is no RoPE base to set")
        self.rotary.set_base(base)

    def make_cache(self, batch_size: int, capacity: int | None = None, device=None, dtype=None) -> Cache:
        """Decoding state: one per-layer state per block; capacity = expected total tokens."""
        if not self.can_decode:
            raise ValueError(f"{type(self).__name__} has a layer that cannot decode incrementally")
        p = self.embed.weight
        device, dtype = device or p.device, dtype or p.dtype
        layers = blocks_init_state(self.blocks, batch_size, capacity or self.max_seq_len, device, dtype)
        return Cache(layers, seen=torch.zeros(batch_size, dtype=torch.long, device=device))

    def _positions(self, input_ids: Tensor, attention_mask: Tensor | None, cache: Cache | None) -> Tensor:
        b, t = input_ids.shape
        if attention_mask is None and cache is None:
            return torch.arange(t, device=input_ids.device)  # [t]
        mask = (
            torch.ones(b, t, dtype=torch.long, device=input_ids.device)
            if attention_mask is None
            else attention_mask.long()
        )
        start = cache.seen[:, None] if cache is not None else 0
        pos = (start + mask.cumsum(1) - 1).clamp(min=0)  # [b, t]: pads take their neighbour's
        if cache is not None:
            cache.seen = cache.seen + mask.sum(1)
        return pos

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        targets: Tensor | None = None,
        cache: Cache | None = None,
        return_maps: bool = False,
    ) -> ModelOutput:
        """Hugging Face's (and the LEAP seed's) argument order: input_ids, attention_mask, labels.
        targets: seqlab's convention, already shifted ([b, t], -100 ignored). labels: the
        Hugging Face convention, aligned with input_ids and shifted here (pads and -100
        ignored; the caller's tensor is never modified)."""
        check_token_ids(input_ids, self.vocab_size)
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} must equal input_ids shape "
                f"{tuple(input_ids.shape)}"
            )
        fed = cache.length if cache is not None else 0
        end = fed + input_ids.shape[1]  # bound (exclusive) of every position in this call
        positions = self._positions(input_ids, attention_mask, cache)
        x = self.embed(input_ids)  # [b, t, c]
        if self.pos_embed is not None:
            # Read the positions (a host sync) only when their bound could pass the table.
            if end > self.max_seq_len and int(positions.max()) >= self.max_seq_len:
                raise ValueError(
                    f"sequence reaches position {int(positions.max())} but max_seq_len is "
                    f"{self.max_seq_len} with learned positions; use rotary or no positions for "
                    f"unbounded context, or a larger max_seq_len"
                )
            x = x + self.pos_embed(positions)
        x = self.dropout(x)
        rotary = self.rotary(positions, x.dtype, max_position=end) if self.rotary is not None else None
        ctx = Context(
            positions=positions,
            rotary=rotary,
            padding_mask=attention_mask,
            maps=[] if return_maps else None,
        )
        if self.featurizer is not None:
            ctx.adapt = self.featurizer(x, attention_mask, cache)
        for i, block in enumerate(self.blocks):
            x = block(x, ctx, cache.layers[i] if cache is not None else None)
        logits = self.head(self.norm(x))  # [b, t, v]
        loss = None
        if targets is not None:
            loss = lm_loss(logits, targets)
        elif labels is not None:
            shifted = labels[:, 1:]
            if attention_mask is not None:
                shifted = shifted.masked_fill(attention_mask[:, 1:] == 0, -100)
            loss = lm_loss(logits[:, :-1], shifted)
        return ModelOutput(
            logits=logits, loss=loss, aux_losses=ctx.aux, metrics=ctx.metrics, cache=cache, maps=ctx.maps
        )


__all__ = ["POSITIONS", "DecoderLM"]


@torch.no_grad()
def init_gpt_weights(model: nn.Module, init_std: float, num_layers: int) -> None:
    """GPT-2's initialization (as nanoGPT): every Linear and Embedding weight ~ N(0, init_std),
    biases 0, then each block's residual output projections (mixer.proj, ffn.proj) ~ N(0,
    init_std / sqrt(2 num_layers)) so the residual stream's variance does not grow with depth.
    Modules are visited in `model.apply` order, so a seed gives the same weights every time."""

    def init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    model.apply(init)
    std = init_std / math.sqrt(2 * num_layers)
    for block in model.blocks:
        nn.init.normal_(block.mixer.proj.weight, mean=0.0, std=std)
        nn.init.normal_(block.ffn.proj.weight, mean=0.0, std=std)
