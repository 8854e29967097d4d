"""Decoding state: one protocol for every mixer, and the per-model list of them.

Each mixer that can decode makes its own per-layer state with `init_state(batch_size,
capacity, device, dtype)` and updates it in place on every forward it is given it. Every
per-layer state has

    length           tokens it has consumed (pads included)
    map_batch(fn)    apply fn to each per-sample tensor (beam reorder, select, repeat)
    reset()          back to an empty context, keeping the buffers

`KVState` is softmax attention's: keys, values (and which keys are pads) in preallocated
buffers [b, h, capacity, d] that double when full (amortized O(1) per token). LEAP's,
Fastformer's and token mixing's live beside their ops and layers.

`Cache` is a model's decoding state: one per-layer state per block (None for a block that
keeps none), plus `seen` [b], the real (unpadded) tokens per sample so far, from which
models with left-padded prompts compute positions. Nothing has to be advanced by hand:
each layer counts its own tokens and `Cache.length` reads them.
"""

from dataclasses import dataclass, field
from typing import Any

import torch


class KVState:
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
        self.length = 0

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
        return every key, value and key mask so far: [b, h, length, d] x 2, [b, length]."""
        t = k.shape[2]
        end = self.length + t
        if end > self.capacity:
            self._grow(end)
        self.k[:, :, self.length : end] = k.to(self.k.dtype)
        self.v[:, :, self.length : end] = v.to(self.v.dtype)
        if key_mask is not None:
            self.key_mask[:, self.length : end] = key_mask.bool()
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end], self.key_mask[:, :end]

    def map_batch(self, fn) -> None:
        self.k, self.v, self.key_mask = fn(self.k), fn(self.v), fn(self.key_mask)

    def reset(self) -> None:
        self.key_mask.fill_(True)
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
        """Every per-layer state, in layer order (a layer may keep a tuple of them)."""
        for state in self.layers:
            if state is None:
                continue
            yield from state if isinstance(state, tuple) else (state,)

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


class KVCache:
    """LEGACY (pre-refactor global cache), kept only until models/gpt.py moves to KVState; delete then."""

    def __init__(self, num_layers, batch_size, num_heads, head_dim, capacity, device="cpu", dtype=torch.float32):
        self.states = [KVState(batch_size, num_heads, head_dim, capacity, device, dtype) for _ in range(num_layers)]
        self.length = 0

    def update(self, layer, k, v):
        state = self.states[layer]
        state.length = self.length
        return state.update(k, v)[:2]

    def advance(self, t):
        self.length += t


__all__ = ["Cache", "KVState"]
