"""Neighbourhood attention over a 2D grid (the local 2D attention of HeptapodLM, done right).

Each query cell (i, j) attends to a k x k window of key cells (k = `window`, odd, radius
r = k // 2). The window is centred on the query where it fits and SHIFTS INWARD at the borders,
so that every query sees a full k x k window (neighbourhood attention, Hassani et al. 2023, the
semantics of NATTEN): along an axis of length n, query row i sees key rows

    start(i) .. start(i) + k - 1,      start(i) = clamp(i - r, 0, n - k)

On an axis shorter than the window (n < k) the window is clipped to the grid: every query sees
the whole axis. Then

    A = softmax(q k^T / sqrt(d), keys outside the window excluded) v

causal=True (the raster variant, for generation cell by cell): of its window, query (i, j) sees
only the cells at or before it in raster order (i' * gx + j' <= i * gx + j); the window itself
is the same. key_mask [b, gy, gx] (True = a real cell) excludes padding keys; a query left with
no key at all gets output 0 (and zero gradients), as in seqlab.ops.attention.

Shapes: q, k, v [b, h, gy, gx, d] -> [b, h, gy, gx, d] in q's dtype.

Implementations (`impl=`), all computing the same function:

- "eager": the reference. The dense [gy*gx, gy*gx] boolean neighbourhood mask, then
  seqlab.ops.attention's fp32 eager attention with that mask. O((gy*gx)^2 d).
- "dense": the same dense mask handed to torch's SDPA. O((gy*gx)^2 d).
- "gather": each query's k*k neighbour keys and values gathered by an index tensor built once
  per (gy, gx, k) and cached; scores [b, h, gy*gx, k*k]. O(gy*gx*k^2*d) work, but the gathered
  keys and values are k^2 copies of k and v, kept for the backward.
- "tiled" (the default): the grid cut into T x T query tiles; the union of their windows is a
  (T + k - 1)^2 key halo, so each tile is one small dense SDPA over its halo with a per-tile
  mask (built once per shape and cached), all tiles in one batched call (an axis no longer than
  T + k - 1 is a single tile: small grids are one dense masked SDPA). O(gy*gx*(T+k-1)^2*d)
  work (a constant factor over k^2) and O(gy*gx*((T+k-1)/T)^2*d) extra memory.

`local2d_attention_loop` restates the original's per-cell Python loop (slice the window,
softmax, weighted sum), for tests and the benchmark; `local2d_weights` returns the dense
attention probabilities [b, h, gy, gx, gy, gx] (explain maps).
"""

import functools
import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from seqlab.ops.attention import attention

IMPLS = ("tiled", "gather", "dense", "eager")
TILE = 8  # query tile side of impl="tiled" (fastest of 4, 8, 16 on CPU at k = 7, d = 64)


def check_window(window: int) -> None:
    if isinstance(window, bool) or not isinstance(window, int) or window < 1 or window % 2 == 0:
        raise ValueError(
            f"the local 2D window must be an odd int >= 1 (a side of 2r+1 cells), got {window!r}"
        )


def window_starts(size: int, window: int, device=None) -> tuple[Tensor, int]:
    """(start [size] long, span): along an axis of `size` cells, query i sees key cells
    start[i] .. start[i] + span - 1, span = min(window, size) (the window shifted inward)."""
    span = min(window, size)
    start = (torch.arange(size, device=device) - window // 2).clamp(0, size - span)
    return start, span


@functools.lru_cache(maxsize=64)
def _axis_mask(size: int, window: int, device: torch.device) -> Tensor:
    """[size, size] bool: key cell i' lies in the window of query cell i along one axis."""
    start, span = window_starts(size, window, device)
    keys = torch.arange(size, device=device)[None, :]
    return (keys >= start[:, None]) & (keys < start[:, None] + span)


def neighbourhood_mask(gy: int, gx: int, window: int, *, causal: bool = False, device=None) -> Tensor:
    """The dense [gy*gx, gy*gx] boolean mask (True = may attend), cells in raster order."""
    check_window(window)
    device = torch.device(device or "cpu")
    rows, cols = _axis_mask(gy, window, device), _axis_mask(gx, window, device)
    mask = rearrange(rows[:, None, :, None] & cols[None, :, None, :], "i j a c -> (i j) (a c)")
    if causal:
        mask = mask & torch.ones_like(mask).tril()
    return mask


def _check(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None) -> None:
    if q.dim() != 5 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(
            f"local 2D attention takes q, k, v of one shape [b, h, gy, gx, d], got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    if key_mask is not None and key_mask.shape != (q.shape[0], q.shape[2], q.shape[3]):
        raise ValueError(
            f"key_mask must be [b, gy, gx] = {(q.shape[0], q.shape[2], q.shape[3])}, "
            f"got {tuple(key_mask.shape)}"
        )


def local2d_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    window: int,
    causal: bool = False,
    key_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    impl: str = "tiled",
) -> Tensor:
    """Neighbourhood attention of q over k, v [b, h, gy, gx, d] (module docstring)."""
    if impl not in IMPLS:
        raise ValueError(f"unknown local 2D attention impl {impl!r}; choose one of {IMPLS}")
    check_window(window)
    _check(q, k, v, key_mask)
    if impl == "tiled":
        return _tiled(q, k, v, window, causal, key_mask, dropout_p)
    if impl == "gather":
        return _gather(q, k, v, window, causal, key_mask, dropout_p)
    b, h, gy, gx, d = q.shape
    mask = neighbourhood_mask(gy, gx, window, causal=causal, device=q.device)
    flat = [rearrange(t, "b h gy gx d -> b h (gy gx) d") for t in (q, k, v)]
    out = attention(
        *flat,
        mask=mask[None, None],
        key_mask=None if key_mask is None else key_mask.reshape(b, gy * gx),
        dropout_p=dropout_p,
        impl="sdpa" if impl == "dense" else "eager",
    )
    return rearrange(out, "b h (gy gx) d -> b h gy gx d", gy=gy)


@functools.lru_cache(maxsize=64)
def _gather_index(gy: int, gx: int, window: int, causal: bool, device: torch.device) -> tuple[Tensor, Tensor]:
    """(index [gy*gx, ky*kx] of each query's window cells in raster order, allowed [gy*gx, ky*kx])."""
    sy, ky = window_starts(gy, window, device)
    sx, kx = window_starts(gx, window, device)
    rows = sy[:, None] + torch.arange(ky, device=device)  # [gy, ky]
    cols = sx[:, None] + torch.arange(kx, device=device)  # [gx, kx]
    index = rearrange(rows[:, None, :, None] * gx + cols[None, :, None, :], "i j a c -> (i j) (a c)")
    if causal:
        allowed = index <= torch.arange(gy * gx, device=device)[:, None]
    else:
        allowed = torch.ones_like(index, dtype=torch.bool)
    return index, allowed


def _low_precision_cpu(q: Tensor) -> bool:
    return q.device.type == "cpu" and (
        q.dtype in (torch.bfloat16, torch.float16) or torch.is_autocast_enabled("cpu")
    )


def _gather(q, k, v, window, causal, key_mask, dropout_p):
    b, h, gy, gx, d = q.shape
    index, allowed = _gather_index(gy, gx, window, causal, q.device)
    q, k, v = (rearrange(t, "b h gy gx d -> b h (gy gx) d") for t in (q, k, v))
    dtype = q.dtype
    if _low_precision_cpu(q):
        # As seqlab.ops.attention: on CPU the softmax math runs in fp32 (outside autocast).
        with torch.autocast("cpu", enabled=False):
            out = _gather_math(q.float(), k.float(), v.float(), index, allowed, key_mask, dropout_p)
    else:
        out = _gather_math(q, k, v, index, allowed, key_mask, dropout_p)
    return rearrange(out.to(dtype), "b h (gy gx) d -> b h gy gx d", gy=gy)


def _gather_math(q, k, v, index, allowed, key_mask, dropout_p):
    """Gathered neighbourhood attention of q, k, v [b, h, n, d] with window index [n, k*k]."""
    b, d = q.shape[0], q.shape[-1]
    k_n, v_n = k[:, :, index], v[:, :, index]  # [b, h, n, k*k, d]
    scores = torch.einsum("bhnd,bhnkd->bhnk", q, k_n) / math.sqrt(d)
    allowed = allowed[None, None]  # [1, 1, n, k*k]
    visible = None
    if key_mask is not None:
        allowed = allowed & key_mask.reshape(b, 1, -1).bool()[:, :, index]  # [b, 1, n, k*k]
        visible = allowed.any(dim=-1, keepdim=True)
        allowed = allowed | ~visible
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
    if dropout_p > 0:
        probs = F.dropout(probs, dropout_p)
    out = torch.einsum("bhnk,bhnkd->bhnd", probs, v_n)
    return out if visible is None else out * visible


@functools.lru_cache(maxsize=64)
def _tile_plan(gy: int, gx: int, window: int, causal: bool, tile: int, device: torch.device):
    """What impl="tiled" needs for one shape, built once: the tile sides (ty, tx), the tile
    counts (ny, nx), the raster index of each tile's halo cells [ny * nx, sy * sx] and the
    per-tile mask [ny * nx, ty * tx, sy * sx] (query cell of the tile x key cell of its halo)."""
    plans = []
    for size in (gy, gx):
        start, span = window_starts(size, window, device)
        # An axis that one tile's halo would cover whole is one tile: no padded queries.
        t = size if size <= tile + span - 1 else tile
        count = -(-size // t)
        halo = min(t + span - 1, size)
        # Global index of each query (padded past the grid: those repeat the last cell and
        # their outputs are dropped) and of each halo key, per tile.
        query = (torch.arange(count, device=device)[:, None] * t + torch.arange(t, device=device)).clamp(
            max=size - 1
        )  # [count, t]
        first = start[query[:, 0]].clamp(max=size - halo)  # the halo covers every window of the tile
        keys = first[:, None] + torch.arange(halo, device=device)  # [count, halo]
        qs = start[query][:, :, None]  # [count, t, 1]
        inside = (keys[:, None, :] >= qs) & (keys[:, None, :] < qs + span)  # [count, t, halo]
        plans.append((t, count, query, keys, inside))
    (ty, ny, qy, ky, in_y), (tx, nx, qx, kx, in_x) = plans
    mask = in_y[:, None, :, None, :, None] & in_x[None, :, None, :, None, :]  # [ny, nx, ty, tx, sy, sx]
    if causal:
        q_raster = qy[:, None, :, None, None, None] * gx + qx[None, :, None, :, None, None]
        k_raster = ky[:, None, None, None, :, None] * gx + kx[None, :, None, None, None, :]
        mask = mask & (k_raster <= q_raster)
    mask = rearrange(mask, "ny nx ty tx sy sx -> (ny nx) (ty tx) (sy sx)")
    halo = rearrange(ky[:, None, :, None] * gx + kx[None, :, None, :], "ny nx sy sx -> (ny nx) (sy sx)")
    return (ty, tx), (ny, nx), halo, mask


def _tiled(q, k, v, window, causal, key_mask, dropout_p, tile: int = TILE):
    b, h, gy, gx, d = q.shape
    (ty, tx), (ny, nx), halo, mask = _tile_plan(gy, gx, window, causal, tile, q.device)
    # Layout [(b h), tiles, cells, d]: the per-tile mask [tiles, ...] broadcasts over b and h,
    # and the halo gather of the flat keys is a view away from it (no permute copy).
    q_tiles = rearrange(
        F.pad(q, (0, 0, 0, nx * tx - gx, 0, ny * ty - gy)),
        "b h (ny ty) (nx tx) d -> (b h) (ny nx) (ty tx) d",
        ty=ty,
        tx=tx,
    )
    # index_select of whole d-rows: a faster gather than advanced indexing, forward and backward.
    k_halo, v_halo = (
        t.reshape(b * h, gy * gx, d).index_select(1, halo.reshape(-1)).view(b * h, *halo.shape, d)
        for t in (k, v)
    )  # [(b h), tiles, sy*sx, d]
    allowed = mask[None]  # [1, tiles, ty*tx, sy*sx]
    if key_mask is not None:
        keys = key_mask.bool().reshape(b, gy * gx)[:, halo]  # [b, tiles, sy*sx]
        allowed = (allowed & keys[:, :, None, :]).repeat_interleave(h, dim=0)  # [(b h), tiles, ...]
        out = attention(q_tiles, k_halo, v_halo, mask=allowed, dropout_p=dropout_p, impl="sdpa")
    elif _low_precision_cpu(q):
        # As seqlab.ops.attention: torch's CPU SDPA is several times slower in bf16 than in fp32.
        with torch.autocast("cpu", enabled=False):
            out = F.scaled_dot_product_attention(
                q_tiles.float(), k_halo.float(), v_halo.float(), attn_mask=allowed, dropout_p=dropout_p
            ).to(q.dtype)
    else:
        # Every query sees at least itself: no empty rows to guard, SDPA directly.
        out = F.scaled_dot_product_attention(q_tiles, k_halo, v_halo, attn_mask=allowed, dropout_p=dropout_p)
    out = rearrange(out, "(b h) (ny nx) (ty tx) d -> b h (ny ty) (nx tx) d", b=b, ny=ny, ty=ty)
    return out[:, :, :gy, :gx]


def local2d_attention_loop(
    q: Tensor, k: Tensor, v: Tensor, *, window: int, causal: bool = False, key_mask: Tensor | None = None
) -> Tensor:
    """The original's algorithm restated: a Python loop over query cells, each slicing its
    window, a softmax and a weighted sum (fp32). Same function as local2d_attention; O(cells)
    Python steps, so for tests and the benchmark only."""
    check_window(window)
    _check(q, k, v, key_mask)
    b, h, gy, gx, d = q.shape
    (sy, ky), (sx, kx) = window_starts(gy, window), window_starts(gx, window)
    sy, sx = sy.tolist(), sx.tolist()
    qf, kf, vf = q.float(), k.float(), v.float()
    out = torch.zeros(b, h, gy, gx, d, dtype=torch.float32, device=q.device)
    for i in range(gy):
        for j in range(gx):
            y0, x0 = sy[i], sx[j]
            keys = kf[:, :, y0 : y0 + ky, x0 : x0 + kx].reshape(b, h, ky * kx, d)
            values = vf[:, :, y0 : y0 + ky, x0 : x0 + kx].reshape(b, h, ky * kx, d)
            scores = torch.einsum("bhd,bhkd->bhk", qf[:, :, i, j], keys) / math.sqrt(d)
            if causal or key_mask is not None:
                allowed = torch.ones(b, 1, ky, kx, dtype=torch.bool, device=q.device)
                if causal:
                    rows = torch.arange(y0, y0 + ky, device=q.device)[:, None]
                    cols = torch.arange(x0, x0 + kx, device=q.device)[None, :]
                    allowed = allowed & ((rows * gx + cols) <= i * gx + j)
                if key_mask is not None:
                    allowed = allowed & key_mask[:, None, y0 : y0 + ky, x0 : x0 + kx].bool()
                scores = scores.masked_fill(~allowed.reshape(b, 1, ky * kx), float("-inf"))
            probs = scores.softmax(dim=-1)
            if key_mask is not None:
                probs = torch.nan_to_num(probs)  # a query with no key at all gives 0
            out[:, :, i, j] = torch.einsum("bhk,bhkd->bhd", probs, values)
    return out.to(q.dtype)


def local2d_weights(
    q: Tensor, k: Tensor, *, window: int | None, causal: bool = False, key_mask: Tensor | None = None
) -> Tensor:
    """The attention probabilities [b, h, gy, gx, gy, gx] (query cell, key cell), fp32, zero
    outside each window; window=None: full 2D attention (raster-causal when causal)."""
    b, h, gy, gx, d = q.shape
    qf, kf = (rearrange(t.float(), "b h gy gx d -> b h (gy gx) d") for t in (q, k))
    scores = torch.einsum("bhid,bhjd->bhij", qf, kf) / math.sqrt(d)
    n = gy * gx
    if window is None:
        allowed = torch.ones(n, n, dtype=torch.bool, device=q.device)
        allowed = allowed.tril() if causal else allowed
    else:
        allowed = neighbourhood_mask(gy, gx, window, causal=causal, device=q.device)
    allowed = allowed[None, None]
    if key_mask is not None:
        allowed = allowed & key_mask.reshape(b, 1, 1, n).bool()
    probs = torch.nan_to_num(scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1))
    return probs.reshape(b, h, gy, gx, gy, gx)


__all__ = [
    "IMPLS",
    "check_window",
    "local2d_attention",
    "local2d_attention_loop",
    "local2d_weights",
    "neighbourhood_mask",
    "window_starts",
]
