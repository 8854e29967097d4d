"""The one residual block every seqlab model is built from, and what its sublayers may read.

    Block(dim, mixer, ffn, norm):   x = x + mixer(norm1(x), ctx, state)
                                    x = x + ffn(norm2(x), ctx)

(pre-norm residual around each sublayer, as mamba's Block(mixer_cls, mlp_cls)). Either
sublayer may be None: a block with only a feed-forward (`mixer=None`) or only a mixer.

Two protocols, so that any mixer composes with any feed-forward:

- a mixer maps x [b, t, c] -> [b, t, c] with `forward(x, ctx, state=None)`. `state` is its own
  per-layer decoding state (a KV cache for attention, running sums for LEAP, past inputs for
  token mixing), made by `init_state(batch_size, capacity, device, dtype)` and updated in place
  by each call; a mixer that cannot decode has no `init_state`.
- a feed-forward maps x [b, t, c] -> [b, t, c] with `forward(x, ctx)`; auxiliary losses (added
  to the training loss) and metrics (only logged) go through `ctx.add_aux` / `ctx.add_metric`,
  under the block's name, and the model returns `ctx.aux` / `ctx.metrics` in its ModelOutput.
  Nothing is left on a module for someone to collect later.

`Context` carries what a sublayer may read besides x, computed once per model forward:
positions, the rotary tables, a padding mask, an additive attention bias or boolean mask,
the encoder output for cross-attention, LFM's adapt input.
"""

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from seqlab.layers.norm import make_norm


@dataclass
class Context:
    """Per-forward inputs shared by every block of a model (shapes for x [b, t, c]).

    positions: [b, t] or [t] long, absolute position of each token (decoding: offset by the
        tokens already seen). rotary: (cos, sin) for those positions, each [b or 1, 1, t, d],
        or None. padding_mask: [b, t], 1/True = real token, 0 = pad. Grid models (x [b, gy, gx,
        c]): rotary [1, 1, gy*gx, d] over the cells in raster order (seqlab.layers.rotary2d),
        padding_mask [b, gy, gx]. attn_bias: additive
        [b or 1, h or 1, t, t_k] (T5 relative bias). attn_mask: boolean [b or 1, h or 1, t, t_k],
        True = may attend (2D neighbourhoods). memory / memory_mask: encoder output [b, s, c]
        and its padding mask [b, s] for cross-attention. adapt: LFM's adapt input ([b, a] or
        [b, t, a]).
    """

    positions: Tensor | None = None
    rotary: tuple[Tensor, Tensor] | None = None
    padding_mask: Tensor | None = None
    attn_bias: Tensor | None = None
    attn_mask: Tensor | None = None
    memory: Tensor | None = None
    memory_mask: Tensor | None = None
    adapt: Tensor | None = None
    aux: dict[str, Tensor] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    # Explainability maps: a list when the caller asked for them; a mixer that can explain
    # itself appends one dict per layer (e.g. LEAP's {"attention": [b, h, t, t], "gate": ...}).
    maps: list | None = None
    scope: str = ""  # the running block's name: the prefix of the aux/metric names it adds

    def _key(self, name: str) -> str:
        return f"{self.scope}/{name}" if self.scope else name

    def add_aux(self, name: str, value: Tensor) -> None:
        """An auxiliary loss: the trainer adds it to the primary loss."""
        self.aux[self._key(name)] = value

    def add_metric(self, name: str, value: Any) -> None:
        """A metric: logged, never backpropagated."""
        self.metrics[self._key(name)] = value


class Block(nn.Module):
    """Pre-norm residual block around a mixer and a feed-forward (either may be None).

    name: the prefix of the auxiliary losses/metrics its sublayers report (e.g. "moe0").
    """

    def __init__(
        self,
        dim: int,
        mixer: nn.Module | None,
        ffn: nn.Module | None,
        norm: str = "layernorm",
        *,
        bias: bool = True,
        eps: float = 1e-5,
        name: str = "",
    ):
        super().__init__()
        if mixer is None and ffn is None:
            raise ValueError("a Block needs a mixer, a feed-forward, or both")
        self.name = name
        self.norm1 = make_norm(norm, dim, bias, eps) if mixer is not None else None
        self.mixer = mixer
        self.norm2 = make_norm(norm, dim, bias, eps) if ffn is not None else None
        self.ffn = ffn

    def init_state(self, batch_size: int, capacity: int, device=None, dtype=None):
        """The mixer's decoding state, or None when this block keeps none (no mixer, or a
        mixer whose output at t depends only on x_t)."""
        if self.mixer is None or not hasattr(self.mixer, "init_state"):
            return None
        return self.mixer.init_state(batch_size, capacity, device, dtype)

    @property
    def can_decode(self) -> bool:
        return self.mixer is None or hasattr(self.mixer, "init_state")

    def forward(self, x: Tensor, ctx: Context, state=None) -> Tensor:
        ctx.scope = self.name
        if self.mixer is not None:
            x = x + self.mixer(self.norm1(x), ctx, state)
        if self.ffn is not None:
            x = x + self.ffn(self.norm2(x), ctx)
        return x


def blocks_init_state(blocks, batch_size: int, capacity: int, device=None, dtype=None) -> list:
    """One decoding state per block (None where a block keeps none)."""
    return [block.init_state(batch_size, capacity, device, dtype) for block in blocks]


def is_causal_stack(blocks) -> bool:
    return all(getattr(b.mixer, "causal", True) for b in blocks if b.mixer is not None)


__all__ = ["Block", "Context", "blocks_init_state", "is_causal_stack"]
