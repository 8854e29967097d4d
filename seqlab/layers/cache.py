"""Decoding state: one protocol for every mixer, and the per-model list of them.

Each mixer that can decode makes its own per-layer state with `init_state(batch_size,
capacity, device, dtype)` and updates it in place on every forward it is given it. Every
per-layer state has

    length           tokens it has consumed (pads included)
    map_batch(fn)    apply fn to each per-sample tensor (beam reorder, select, repeat)
    reset()          back to an empty context, keeping the buffers

`KVState` is softmax self-attention's: keys, values (and which keys are pads) in preallocated
buffers [b, h, capacity, d] that double when full (amortized O(1) per token); a sliding
window forgets the keys it will never read again. `CrossKVState` is cross-attention's: the
memory's keys and values, projected once per source. LEAP's, Fastformer's and token mixing's
states live beside their ops and layers.

`Cache` is a model's decoding state: one per-layer state per block (None for a block that
keeps none), plus `seen` [b], the real (unpadded) tokens per sample so far, from which
models with left-padded prompts compute positions. Nothing has to be advanced by hand:
each layer counts its own tokens and `Cache.length` reads them.
"""

from dataclasses import dataclass, field
from typing import Any

import torch


class KVState:
    """Softmax self-attention's decoding state: the keys and values seen so far.

    k, v [b, h, capacity, d] hold the `stored` most recent keys in slots [0, stored); older
    ones may have been forgotten (a sliding window never reads them again), so
    `length = start + stored` counts every token consumed. key_mask [b, capacity] says which
    stored keys are real tokens; it is reported only once some call gave a padding mask, so
    unpadded decoding keeps its mask-free fast path.
    """

    def __init__(
        self,
        batch_size: int,
        num_heads: int,
        head_dim: int,
        capacity: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        shape = (batch_size, num_heads, max(capacity, 1), head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype or torch.float32)
        self.v = torch.zeros_like(self.k)
        self.key_mask = torch.ones(batch_size, max(capacity, 1), dtype=torch.bool, device=device)
        self.padded = False  # some call gave a padding mask: report key_mask from now on
        self.start = 0  # tokens forgotten before slot 0
        self.stored = 0

    @property
    def length(self) -> int:
        return self.start + self.stored

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    def _grow(self, needed: int) -> None:
        extra = max(needed, 2 * self.capacity) - self.capacity
        self.k = torch.cat([self.k, self.k.new_zeros(*self.k.shape[:2], extra, self.k.shape[3])], dim=2)
        self.v = torch.cat([self.v, self.v.new_zeros(*self.v.shape[:2], extra, self.v.shape[3])], dim=2)
        self.key_mask = torch.cat([self.key_mask, self.key_mask.new_ones(self.key_mask.shape[0], extra)], 1)

    def update(self, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None = None):
        """Append k, v [b, h, t, d] (and their padding mask [b, t], True = real token);
        return the stored keys, values and key mask: [b, h, stored, d] x 2 and [b, stored]
        (None while no call gave a padding mask). The returned tensors are views of the
        buffers: read them before the next update or forget."""
        end = self.stored + k.shape[2]
        if end > self.capacity:
            self._grow(end)
        self.k[:, :, self.stored : end] = k  # slice assignment casts to the buffer's dtype
        self.v[:, :, self.stored : end] = v
        if key_mask is not None:
            self.key_mask[:, self.stored : end] = key_mask.bool()
            self.padded = True
        self.stored = end
        return self.k[:, :, :end], self.v[:, :, :end], self.key_mask[:, :end] if self.padded else None

    def forget(self, keep: int) -> None:
        """Keep only the last `keep` stored keys (a sliding window never reads older ones).
        Moves them to the front only once as many again have piled up, so the copy costs
        O(1) per token, amortized, and the buffer stays within about 2 * keep slots."""
        drop = self.stored - keep
        if drop <= 0 or drop < max(keep, 1):
            return
        self.k[:, :, :keep] = self.k[:, :, drop : self.stored].clone()
        self.v[:, :, :keep] = self.v[:, :, drop : self.stored].clone()
        self.key_mask[:, :keep] = self.key_mask[:, drop : self.stored].clone()
        self.key_mask[:, keep:].fill_(True)
        self.start += drop
        self.stored = keep

    def map_batch(self, fn) -> None:
        self.k, self.v, self.key_mask = fn(self.k), fn(self.v), fn(self.key_mask)

    def reset(self) -> None:
        self.key_mask.fill_(True)
        self.padded = False
        self.start = self.stored = 0


class CrossKVState:
    """Cross-attention's decoding state: the keys and values of the memory (the encoder
    output), projected on the first call and reused by every decoding step after it.

    k, v [b, h, s, d] and key_mask [b, s] (None = no padding) are None until that first
    call; `length` counts the decoder tokens consumed.
    """

    def __init__(self):
        self.k = self.v = self.key_mask = None
        self.length = 0

    def map_batch(self, fn) -> None:
        self.k, self.v, self.key_mask = (t if t is None else fn(t) for t in (self.k, self.v, self.key_mask))

    def reset(self) -> None:
        """Forget the memory too: the next call projects a new source."""
        self.k = self.v = self.key_mask = None
        self.length = 0


@dataclass
class Cache:
    """A model's decoding state: one per-layer state per block (None where a block keeps none)."""

    layers: list
    seen: torch.Tensor | None = None  # [b] real tokens fed so far, per sample
    extra: dict[str, Any] = field(default_factory=dict)  # model-level state (e.g. encoder output)

    @property
    def length(self) -> int:
        """Tokens fed so far (pads included)."""
        for state in self.layer_states():
            return state.length
        return int(self.extra.get("length", 0))

    def layer_states(self):
        """Every per-layer state, in layer order (blocks that keep none are skipped)."""
        return (state for state in self.layers if state is not None)

    def map_batch(self, fn) -> None:
        for state in self.layer_states():
            state.map_batch(fn)
        if self.seen is not None:
            self.seen = fn(self.seen)
        for key, value in self.extra.items():
            if isinstance(value, torch.Tensor):
                self.extra[key] = fn(value)

    def reset(self) -> None:
        for state in self.layer_states():
            state.reset()
        if self.seen is not None:
            self.seen.zero_()
        self.extra.clear()


__all__ = ["Cache", "CrossKVState", "KVState"]
