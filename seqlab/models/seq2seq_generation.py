"""Decoding for encoder-decoder models (t5, kat5): greedy and beam search.

The model protocol (seqlab.models.t5.T5Model): `encode(input_ids, attention_mask) -> memory
[b, s, c]`, `decode(decoder_input_ids, memory, memory_mask, cache) -> ModelOutput` and
`make_cache(batch_size, capacity)`. The encoder runs once per source; the decoder runs one
token per step over a self-attention KV cache; each cross-attention layer projects the
memory's keys and values on the first step and keeps them (its CrossKVState), so they are
computed once per source: beam search runs that first step on the b sources and only then
repeats the states for the beams, and reordering beams never touches them (a beam never leaves
its source).

Greedy: y_t = argmax p(y_t | y_<t, x); a row that produced eos is finished and gets pad from
then on; decoding stops when every row is finished or after max_new_tokens.

Beam search (num_beams = k), the algorithm of Hugging Face's generate (its defaults,
early_stopping=False), so that the two agree token for token:

    running beams start as [start] with score 0 (only the first of the k counts at step 1)
    each step: candidates = running score + log p(token), over k beams x v tokens; take the 2k best
      - a candidate among the k best that ends in eos is a finished hypothesis with score
        sum log p / length ** length_penalty (length counts the eos); each source keeps its k
        best finished hypotheses
      - the k best candidates that do not end in eos are the next running beams
      - at step max_new_tokens every one of the k best candidates is finished
    a source is done once it holds k finished hypotheses and its best running beam, normalized
    by its current length, cannot beat the worst of them (a heuristic when length_penalty > 0;
    exact for length_penalty = 0, where scores only fall)
    result: each source's best finished hypothesis

Shapes: input_ids [b, s], attention_mask [b, s] (1 = token; padding on either side) ->
LongTensor [b, t_out] without the start token, t_out <= max_new_tokens, each row ending at
its eos and padded with pad after it.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from seqlab.errors import ConfigError
from seqlab.layers.cache import Cache, CrossKVState


def _check(input_ids: Tensor, attention_mask: Tensor | None, max_new_tokens: int, num_beams: int) -> None:
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, source length], got shape {tuple(input_ids.shape)}")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} must equal input_ids shape "
            f"{tuple(input_ids.shape)}"
        )
    for name, value in (("max_new_tokens", max_new_tokens), ("num_beams", num_beams)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be an int >= 1, got {value!r}")


def _reorder_self_attention(cache: Cache, rows: Tensor) -> None:
    """Reorder the decoder's self-attention states by rows [b * k]; cross-attention states are
    the same for every beam of a source, so they stay as they are."""
    for state in cache.layer_states():
        if not isinstance(state, CrossKVState):
            state.map_batch(lambda x: x.index_select(0, rows))


def _finish(tokens: Tensor, eos_token_id: int, pad_token_id: int) -> Tensor:
    """tokens [b, n] -> the same with pad after each row's first eos, cut to the longest row."""
    is_eos = tokens == eos_token_id
    after_eos = (is_eos.cumsum(1) - is_eos.long()) > 0  # strictly after the first eos
    tokens = tokens.masked_fill(after_eos, pad_token_id)
    lengths = (~after_eos).sum(1)
    return tokens[:, : int(lengths.max())]


@torch.no_grad()
def greedy_seq2seq(
    model, input_ids, attention_mask=None, *, max_new_tokens, eos_token_id=1, pad_token_id=0
) -> Tensor:
    b = input_ids.shape[0]
    memory = model.encode(input_ids, attention_mask)
    cache = model.make_cache(b, max_new_tokens)
    step_ids = input_ids.new_full((b, 1), pad_token_id)  # the decoder start token is pad
    finished = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
    out = []
    for step in range(max_new_tokens):
        logits = model.decode(step_ids, memory if step == 0 else None, attention_mask, cache).logits[:, -1]
        nxt = logits.argmax(-1).masked_fill(finished, pad_token_id)  # [b]
        out.append(nxt)
        finished |= nxt == eos_token_id
        if bool(finished.all()):
            break
        step_ids = nxt[:, None]
    return _finish(torch.stack(out, 1), eos_token_id, pad_token_id)


@torch.no_grad()
def beam_search_seq2seq(
    model,
    input_ids,
    attention_mask=None,
    *,
    max_new_tokens,
    num_beams,
    length_penalty=1.0,
    eos_token_id=1,
    pad_token_id=0,
) -> Tensor:
    b, k, n = input_ids.shape[0], num_beams, max_new_tokens
    device = input_ids.device
    memory = model.encode(input_ids, attention_mask)
    cache = model.make_cache(b, n)
    start = input_ids.new_full((b, 1), pad_token_id)
    # Step 1 on the b sources only (every beam starts as the same [start]); it projects the
    # cross-attention keys and values once per source, then the states are repeated per beam.
    log_probs = F.log_softmax(model.decode(start, memory, attention_mask, cache).logits[:, -1].float(), -1)
    cache.map_batch(lambda x: x.repeat_interleave(k, dim=0))
    v = log_probs.shape[-1]
    log_probs = log_probs[:, None].expand(b, k, v)  # [b, k, v]

    running_scores = torch.zeros(b, k, device=device)
    running_scores[:, 1:] = -1e9  # only the first beam counts at step 1
    running = input_ids.new_full((b, k, n), pad_token_id)  # tokens of the running beams
    pool = input_ids.new_full((b, k, n), pad_token_id)  # finished hypotheses, best first
    pool_scores = torch.full((b, k), -1e9, device=device)
    pool_finished = torch.zeros(b, k, dtype=torch.bool, device=device)
    open_ = torch.ones(b, dtype=torch.bool, device=device)  # may still improve its pool
    in_top_k = torch.arange(2 * k, device=device) < k
    source_rows = torch.arange(b, device=device)[:, None] * k  # [b, 1] first row of each source

    for step in range(n):
        if step > 0:
            logits = model.decode(running[:, :, step - 1].reshape(b * k, 1), cache=cache).logits[:, -1]
            log_probs = F.log_softmax(logits.float(), -1).view(b, k, v)
        scores = (running_scores[:, :, None] + log_probs).reshape(b, k * v)
        top_scores, top = scores.topk(2 * k, dim=-1)  # [b, 2k], best first
        beam, token = top // v, top % v
        candidates = running.gather(1, beam[:, :, None].expand(b, 2 * k, n)).clone()
        candidates[:, :, step] = token
        last = step == n - 1
        ends = torch.ones_like(token, dtype=torch.bool) if last else token == eos_token_id

        # Finished hypotheses: ends in eos (or the length limit), ranked among the k best.
        new_finished = ends & in_top_k & open_[:, None]
        normalized = top_scores / float(step + 1) ** length_penalty
        normalized = normalized + (~new_finished).float() * -1e9
        merged_scores = torch.cat([pool_scores, normalized], 1)
        keep = merged_scores.topk(k, dim=-1).indices  # [b, k]
        pool = torch.cat([pool, candidates], 1).gather(1, keep[:, :, None].expand(b, k, n))
        pool_scores = merged_scores.gather(1, keep)
        pool_finished = torch.cat([pool_finished, new_finished], 1).gather(1, keep)

        # The next running beams: the k best candidates that do not end here.
        alive_scores = top_scores + ends.float() * -1e9
        pick = alive_scores.topk(k, dim=-1).indices  # [b, k]
        running = candidates.gather(1, pick[:, :, None].expand(b, k, n))
        running_scores = alive_scores.gather(1, pick)
        if last:
            break
        _reorder_self_attention(cache, (source_rows + beam.gather(1, pick)).reshape(-1))

        best_possible = running_scores[:, :1] / float(step + 1) ** length_penalty  # [b, 1]
        worst = torch.where(pool_finished, pool_scores.min(1, keepdim=True).values, -1e9)
        open_ &= (best_possible > worst).any(-1)
        if not bool(open_.any()):
            break
    return _finish(pool[:, 0], eos_token_id, pad_token_id)


def generate_seq2seq(
    model,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    max_new_tokens: int,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    eos_token_id: int = 1,
    pad_token_id: int = 0,
) -> Tensor:
    """Decode input_ids [b, s] (attention_mask [b, s], 1 = token) to [b, t_out] target ids:
    greedy when num_beams == 1, beam search otherwise (see the module docstring). The decoder
    starts from pad (T5's decoder start token); the start token is not returned."""
    _check(input_ids, attention_mask, max_new_tokens, num_beams)
    was_training = model.training
    model.eval()
    try:
        if num_beams == 1:
            return greedy_seq2seq(
                model,
                input_ids,
                attention_mask,
                max_new_tokens=max_new_tokens,
                eos_token_id=eos_token_id,
                pad_token_id=pad_token_id,
            )
        return beam_search_seq2seq(
            model,
            input_ids,
            attention_mask,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            length_penalty=length_penalty,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
        )
    finally:
        model.train(was_training)


__all__ = ["beam_search_seq2seq", "generate_seq2seq", "greedy_seq2seq"]
