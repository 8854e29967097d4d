"""Key/value cache for autoregressive decoding with softmax attention.

One preallocated buffer for all layers: k, v [num_layers, b, h, capacity, d]. Each attention
layer writes its new keys/values at positions [length, length + t) and reads [0, length + t);
the model advances `length` once per forward, after all layers. The buffer doubles when full,
so generation past the preallocated capacity keeps working (amortized O(1) per token).
"""

import torch


class KVCache:
    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        num_heads: int,
        head_dim: int,
        capacity: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        shape = (num_layers, batch_size, num_heads, max(capacity, 1), head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    def _grow(self, needed: int) -> None:
        new_cap = max(needed, 2 * self.capacity)
        pad = list(self.k.shape)
        pad[3] = new_cap - self.capacity
        self.k = torch.cat([self.k, self.k.new_zeros(pad)], dim=3)
        self.v = torch.cat([self.v, self.v.new_zeros(pad)], dim=3)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v [b, h, t, d] for `layer`; return all keys/values so far [b, h, length + t, d]."""
        t = k.shape[2]
        end = self.length + t
        if end > self.capacity:
            self._grow(end)
        self.k[layer, :, :, self.length : end] = k.to(self.k.dtype)
        self.v[layer, :, :, self.length : end] = v.to(self.v.dtype)
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, t: int) -> None:
        self.length += t
