"""T5's relative position bias (Raffel et al. 2020, "Exploring the Limits of Transfer Learning").

Every (query, key) pair gets a learned scalar per head, looked up by the bucket of the key's
offset from the query, r = key_position - query_position, and added to the attention logits:

    bias[h, i, j] = E[bucket(k_j - q_i), h]

Buckets (num_buckets B, max_distance M): bidirectional (the encoder) gives half the buckets to
r > 0 and half to r <= 0, then works on |r|; causal (the decoder) keeps only r <= 0 and works on
-r (a key in the future gets bucket 0, it is masked anyway). With n the remaining bucket
count (B/2 bidirectional, B causal) and n/2 = e exact buckets, a distance a >= 0 goes to

    a                                                      if a < e
    min(n - 1, e + floor(log(a / e) / log(M / e) * (n - e)))   otherwise

so near offsets are told apart one by one and far ones share logarithmically wider buckets;
every offset beyond M shares the last bucket. This is bit for bit the formula of Mesh
TensorFlow and Hugging Face's T5Attention._relative_position_bucket (the float steps are taken
in the same order, in fp32).

The module takes position tensors, not lengths: a decoding step passes its query position
(the tokens already fed) and every key position so far, so cached decoding gets the bias of
the full forward. Shapes: query_positions [t_q] or [b, t_q], key_positions [t_k] or [b, t_k]
-> bias [1 or b, h, t_q, t_k]. T5 computes it in the first layer of a stack and shares it with
the other layers of that stack: the model calls this module once per forward.
"""

import math

import torch
from torch import Tensor, nn


def relative_position_bucket(
    relative_position: Tensor, *, bidirectional: bool, num_buckets: int = 32, max_distance: int = 128
) -> Tensor:
    """Bucket index in [0, num_buckets) of each offset key - query (a long tensor, any shape)."""
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    # clamp(min=1) only avoids log(0) in entries that take the exact branch anyway.
    log_ratio = torch.log(distance.clamp(min=1).float() / max_exact) / math.log(max_distance / max_exact)
    large = (max_exact + (log_ratio * (num_buckets - max_exact)).long()).clamp(max=num_buckets - 1)
    return buckets + torch.where(is_small, distance, large)


class RelativePositionBias(nn.Module):
    """A learned bias per head and relative-position bucket: embedding [num_buckets, num_heads]."""

    def __init__(
        self, num_heads: int, *, bidirectional: bool, num_buckets: int = 32, max_distance: int = 128
    ):
        super().__init__()
        least = 4 if bidirectional else 2
        if isinstance(num_buckets, bool) or not isinstance(num_buckets, int) or num_buckets < least:
            raise ValueError(f"relative bias num_buckets must be an int >= {least}, got {num_buckets!r}")
        exact = (num_buckets // 2 if bidirectional else num_buckets) // 2
        if max_distance <= exact:
            raise ValueError(
                f"relative bias max_distance must exceed the {exact} exact buckets, got {max_distance}"
            )
        self.num_heads = num_heads
        self.bidirectional = bidirectional
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.embedding = nn.Embedding(num_buckets, num_heads)

    def extra_repr(self) -> str:
        kind = "bidirectional" if self.bidirectional else "causal"
        return f"{kind}, heads={self.num_heads}, buckets={self.num_buckets}, max_distance={self.max_distance}"

    def forward(self, query_positions: Tensor, key_positions: Tensor) -> Tensor:
        """bias [1 or b, h, t_q, t_k] for queries at query_positions and keys at key_positions."""
        relative = key_positions.unsqueeze(-2) - query_positions.unsqueeze(-1)  # [b?, t_q, t_k]
        buckets = relative_position_bucket(
            relative,
            bidirectional=self.bidirectional,
            num_buckets=self.num_buckets,
            max_distance=self.max_distance,
        )
        bias = self.embedding(buckets)  # [b?, t_q, t_k, h]
        if bias.ndim == 3:
            bias = bias.unsqueeze(0)
        return bias.permute(0, 3, 1, 2)  # [1 or b, h, t_q, t_k]


__all__ = ["RelativePositionBias", "relative_position_bucket"]
