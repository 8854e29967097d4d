"""Decoding and scoring for the grid tasks: MaskGIT iterative decoding, raster decoding (1D LMs
with their KV cache, causal 2D models), and the chunked-reveal NLL that makes a masked model's
bits per cell comparable with a raster LM's.

Shapes: token grids [b, gy, gx] (ids of seqlab.tasks.grid_codec), logits [b, gy, gx, v];
raster sequences [b, t]. `allowed` is a LongTensor of the token ids a decoder may write.

MaskGIT (Chang et al. 2022): start with every unknown cell MASK; at step s = 1..S predict every
cell, draw a token for each masked one, keep the n - floor(n cos(pi/2 s/S)) most confident
masked cells (at least one per step) and leave the rest masked; cells given by a prompt are
never masked, never changed. After S steps every cell is decided. When sampling (temperature
> 0) the confidence is log p + 4.5 * temperature * (1 - s/S) * Gumbel noise, MaskGIT's
annealed "choice temperature": without it the most confident cells are nearly always the
background, and samples come out almost empty.

Chunked-reveal NLL (`chunked_nll`): a fixed random order splits the cells of a grid into S
chunks; chunk k is predicted from the cells of chunks < k (the rest MASK):

    q(x) = prod_k prod_{i in chunk k} p(x_i | x_{chunks < k})

Each factor is a normalized distribution over its chunk given what came before, so q is a
valid distribution over grids and -log2 q(x) is a code length: comparable with a raster LM's
exact NLL (lower is better for both). S = the number of cells would be a random-order
autoregressive NLL; fewer chunks cost fewer forwards and give an upper bound on that.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from seqlab.models.generation import sample_next
from seqlab.tasks.grid_codec import BOS, MASK, PAD

CHOICE_TEMPERATURE = 4.5  # MaskGIT's default


def grid_logits(model, grid: Tensor, condition: Tensor | None = None, padding_mask: Tensor | None = None):
    """(logits [b, gy, gx, v], ModelOutput) of a 2D grid model."""
    out = model(grid, condition=condition, padding_mask=padding_mask)
    return out.logits, out


def _pick(logits: Tensor, temperature: float, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """(choice index [n], its probability [n]) from logits [n, a]: argmax at temperature 0."""
    probs = logits.float().softmax(-1)
    if temperature == 0:
        conf, choice = probs.max(-1)
        return choice, conf
    choice = sample_next(logits, temperature, generator=generator)
    return choice, probs.gather(-1, choice[:, None])[:, 0]


@torch.no_grad()
def maskgit_decode(
    model,
    tokens: Tensor,
    known: Tensor,
    allowed: Tensor,
    *,
    steps: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    condition: Tensor | None = None,
    padding_mask: Tensor | None = None,
) -> Tensor:
    """Fill every cell that is real (padding_mask, default all) and not `known` by MaskGIT
    decoding (module docstring); known cells keep their tokens. Returns [b, gy, gx]."""
    real = torch.ones_like(known) if padding_mask is None else padding_mask
    unknown = real & ~known
    x = torch.where(unknown, torch.full_like(tokens, MASK), tokens)
    x = torch.where(real, x, torch.full_like(tokens, PAD))
    total = unknown.flatten(1).sum(1)  # [b]
    b = x.shape[0]
    allowed = allowed.to(x.device)
    for step in range(1, steps + 1):
        masked = (x == MASK) & unknown
        left = masked.flatten(1).sum(1)
        if not bool(left.any()):
            break
        logits, _ = grid_logits(model, x, condition, padding_mask)
        flat = logits[..., allowed].flatten(0, 2)  # [b * gy * gx, a]
        choice, conf = _pick(flat, temperature, generator)
        choice = allowed[choice].view_as(x)
        conf = conf.view(b, -1).clamp(min=1e-30).log()
        if temperature > 0:
            u = torch.rand(conf.shape, generator=generator, device=conf.device).clamp(1e-20, 1 - 1e-7)
            conf = conf + CHOICE_TEMPERATURE * temperature * (1 - step / steps) * -torch.log(-torch.log(u))
        conf = conf.masked_fill(~masked.flatten(1), -math.inf)
        stay = torch.floor(total * math.cos(math.pi / 2 * step / steps)).long()
        stay = torch.minimum(stay, (left - 1).clamp(min=0)) if step < steps else torch.zeros_like(stay)
        reveal = left - stay  # [b]
        order = conf.argsort(dim=1, descending=True)
        rank = torch.empty_like(order).scatter_(
            1, order, torch.arange(order.shape[1], device=x.device).expand_as(order)
        )
        chosen = (rank < reveal[:, None]) & masked.flatten(1)
        x = torch.where(chosen.view_as(x), choice, x)
    return x


def chunk_order(real: Tensor, num_chunks: int, generator: torch.Generator) -> Tensor:
    """A random reveal order of each grid's real cells in `num_chunks` near-equal chunks:
    chunk index [b, gy, gx] (0 .. num_chunks - 1; -1 outside the grid)."""
    b = real.shape[0]
    flat = real.flatten(1)
    noise = torch.rand(flat.shape, generator=generator).masked_fill(~flat, 2.0)  # pads sort last
    rank = torch.empty_like(flat, dtype=torch.long)
    rank.scatter_(1, noise.argsort(1), torch.arange(flat.shape[1]).expand(b, -1))
    n = flat.sum(1, keepdim=True).clamp(min=1)
    chunk = (rank * num_chunks) // n  # ranks 0 .. n-1 -> chunks 0 .. S-1
    return chunk.masked_fill(~flat, -1).view_as(real)


def chunked_nll(
    model,
    tokens: Tensor,
    real: Tensor,
    chunk: Tensor,
    num_chunks: int,
    cell_lo: int,
    cell_hi: int,
) -> tuple[Tensor, Tensor, Tensor, list]:
    """(summed NLL in nats, cells, cells whose argmax is right, model outputs) of the
    chunked-reveal factorization (module docstring); predictions over the cell ids only."""
    nll = tokens.new_zeros((), dtype=torch.float32)
    right = tokens.new_zeros(())
    outputs = []
    for k in range(num_chunks):
        visible = real & (chunk < k) & (chunk >= 0)
        x = torch.where(visible, tokens, torch.full_like(tokens, MASK))
        x = torch.where(real, x, torch.full_like(tokens, PAD))
        logits, out = grid_logits(model, x, None, real)
        outputs.append(out)
        here = chunk == k
        logp = logits[here][:, cell_lo:cell_hi].float().log_softmax(-1)  # [n, values]
        target = tokens[here] - cell_lo
        nll = nll + F.nll_loss(logp, target, reduction="sum")
        right = right + (logp.argmax(-1) == target).sum()
    return nll, real.sum(), right, outputs


@torch.no_grad()
def decode_1d(
    model,
    prefix: Tensor,
    steps: int,
    allowed: Tensor,
    *,
    forced: Tensor | None = None,
    prefix_mask: Tensor | None = None,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    stop_token: int | None = None,
) -> Tensor:
    """Extend `prefix` [b, t0] (left-padded with prefix_mask when rows differ) by `steps`
    tokens, one at a time: a token of `allowed` chosen from the LM's logits, or forced[:, i]
    where that is >= 0 (given structure or prompted cells). Uses the model's KV cache when it
    can decode incrementally, else recomputes the prefix. Stops early once every row has
    written `stop_token`. Returns the new tokens [b, <= steps]."""
    was_training = model.training
    model.eval()
    b = prefix.shape[0]
    device = prefix.device
    allowed = allowed.to(device)
    ones = torch.ones(b, 1, dtype=torch.long, device=device)
    mask = prefix_mask
    new: list[Tensor] = []
    done = torch.zeros(b, dtype=torch.bool, device=device)
    cached = getattr(model, "can_decode", False)
    try:
        if cached:
            cache = model.make_cache(b, prefix.shape[1] + steps)
            logits = model(prefix, attention_mask=prefix_mask, cache=cache).logits[:, -1]
        for i in range(steps):
            if not cached:
                ids = torch.cat([prefix, *new], 1) if new else prefix
                logits = model(ids, attention_mask=mask).logits[:, -1]
            choice, _ = _pick(logits[:, allowed], temperature, generator)
            nxt = allowed[choice]
            if forced is not None:
                nxt = torch.where(forced[:, i] >= 0, forced[:, i], nxt)
            new.append(nxt[:, None])
            if stop_token is not None:
                done = done | (nxt == stop_token)
                if bool(done.all()):
                    break
            if mask is not None:
                mask = torch.cat([mask, ones], 1)
            if cached and i + 1 < steps:
                step_mask = None if prefix_mask is None else ones
                logits = model(nxt[:, None], attention_mask=step_mask, cache=cache).logits[:, -1]
    finally:
        model.train(was_training)
    return torch.cat(new, 1) if new else prefix.new_zeros(b, 0)


@torch.no_grad()
def decode_2d_raster(
    model,
    shape: tuple[int, int],
    batch_size: int,
    allowed: Tensor,
    *,
    forced: Tensor | None = None,
    condition: Tensor | None = None,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    device=None,
) -> Tensor:
    """A causal 2D model writes a [b, gy, gx] token grid cell by cell in raster order, reading
    the grid shifted by one cell (BOS first); forced[b, gy, gx] >= 0 fixes a cell. Every step
    recomputes the whole grid (the tasks do not assume a 2D decoding cache). Returns the grid."""
    gy, gx = shape
    device = device or (condition.device if condition is not None else None)
    grid = torch.full((batch_size, gy, gx), PAD, dtype=torch.long, device=device)
    allowed = allowed.to(grid.device)
    for i in range(gy * gx):
        flat = grid.flatten(1)
        shifted = torch.cat([torch.full_like(flat[:, :1], BOS), flat[:, :-1]], 1).view_as(grid)
        logits, _ = grid_logits(model, shifted, condition, None)
        y, x = divmod(i, gx)
        choice, _ = _pick(logits[:, y, x][:, allowed], temperature, generator)
        nxt = allowed[choice]
        if forced is not None:
            nxt = torch.where(forced[:, y, x] >= 0, forced[:, y, x], nxt)
        grid[:, y, x] = nxt
    return grid


__all__ = ["chunk_order", "chunked_nll", "decode_1d", "decode_2d_raster", "grid_logits", "maskgit_decode"]
