"""Autoregressive generation for any seqlab token model: greedy, temperature, top-k, top-p.

Models whose `can_decode` is true decode incrementally through `make_cache(batch_size,
capacity)` (one per-layer state per block: KV caches for attention, recurrent sums for
LEAP, past inputs for token mixing, mixed freely in a `stack`); others recompute the prefix.
"""

import torch

from seqlab.errors import ConfigError


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick the next token from logits [b, v]; temperature 0 is greedy. Returns [b]."""
    if temperature < 0:
        raise ConfigError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ConfigError(f"top_p must lie in (0, 1], got {top_p}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token when the mass before it already reaches top_p (keeps at least one).
        drop = cum - sorted_logits.softmax(-1) >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Extend input_ids [b, t] by max_new_tokens; returns [b, t + max_new_tokens].

    Without a cache the prefix is cropped to the model's max_seq_len, as in training. A model
    whose positions end somewhere (learned absolute positions) says so with a `max_positions`
    attribute; cached decoding runs up to that length, then continues by recomputing the
    cropped prefix, exactly as uncached decoding would.
    """
    was_training = model.training
    model.eval()
    ids = input_ids
    limit = getattr(model, "max_positions", None)
    done = 0
    try:
        if use_cache and getattr(model, "can_decode", False) and (limit is None or ids.shape[1] <= limit):
            cache = model.make_cache(ids.shape[0], ids.shape[1] + max_new_tokens)
            logits = model(ids, cache=cache).logits[:, -1]
            while done < max_new_tokens:
                nxt = sample_next(logits, temperature, top_k, top_p, generator)
                ids = torch.cat([ids, nxt[:, None]], dim=1)
                done += 1
                if done == max_new_tokens or (limit is not None and ids.shape[1] > limit):
                    break
                logits = model(nxt[:, None], cache=cache).logits[:, -1]
        max_len = getattr(getattr(model, "config", None), "max_seq_len", None)
        for _ in range(max_new_tokens - done):
            context = ids if max_len is None else ids[:, -max_len:]
            logits = model(context).logits[:, -1]
            nxt = sample_next(logits, temperature, top_k, top_p, generator)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
    finally:
        model.train(was_training)
    return ids
