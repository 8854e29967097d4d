"""LEAP ops: focus-weighted window sums and pooling, focus weights and gates, decay positions,
the recurrent step, the map.

LEAP (Linear Explainable Attention in Parallel, seed 001, mtanghu/LEAP) replaces softmax
attention by per-token focus weights w_t >= 0 and the
focus-weighted averages of keys and values over a window of the last W tokens:

    S_t(Z)  = sum_{j = max(0, t-W+1)}^{t} gamma^(t-j) w_j Z_j         Z in {K, V, 1}
    Kbar_t  = S_t(K) / (S_t(1) + eps)
    Vbar_t  = S_t(V) / (S_t(1) + eps)

gamma = 1 without positions in the sums; the "decay" positions of the spec give every head
its gamma_h in (0, 1] (`alibi_decay`), which fades old tokens out and keeps the recurrence
O(1). `leap_window_pool` is the same average of a single stream (the Fastformer pooling).

Shapes: b batch, t time, h heads, d head dim. Per-token tensors are [b, t, h, d]; per-token
scalars (weights w, normaliser z) are [b, t, h]; decay is [h]. The recurrent step works on
one token: [b, h, d] and [b, h].

The window sums themselves live in seqlab.ops.window_sum; `impl=` picks one of its
implementations: "reference" (a float64 loop over t, for tests), "shifted" (W shifted
copies, O(t W)), "blocked" (prefix and suffix sums restarted every W tokens, O(t); with
decay, chunked [C, C] decay matmuls, O(t C)), "fast" ("shifted" for W <= 8, else
"blocked"), "auto" (today "fast"; the name to keep if device-specific kernels are added).
All vectorised paths accumulate in fp32 (fp64 for fp64 inputs), whatever the input dtype,
subtract nothing, and never form gamma^t / gamma^j: the round-off of a window sum is relative
to its own terms and does not grow with t.

Departure from the seed: the seed computed cumsum(wZ)_t - cumsum(wZ)_{t-W} in the input
dtype; in bf16 at t = 8192 the difference of two prefix sums near 1e4 loses every bit of a
window sum near 1.

Bidirectional (encoder) form, `causal=False`: the window of token t is the symmetric range
j in [t - W//2, t + W//2] clipped to the sequence (W tokens for odd W, W + 1 for even W);
None, or W//2 >= t - 1, means every position. With decay the weight is gamma^|t-j|, the
symmetric extension of the causal gamma^(t-j).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from seqlab.ops.window_sum import IMPLS, window_sum

__all__ = [
    "LeapState",
    "alibi_decay",
    "leap_attention_map",
    "leap_gate_elu",
    "leap_logit_elu",
    "leap_logit_exp",
    "leap_pool_step",
    "leap_recurrent_reference",
    "leap_recurrent_step",
    "leap_state_init",
    "leap_state_prefill",
    "leap_weights_elu",
    "leap_window_pool",
    "leap_window_sums",
]


def leap_window_sums(
    w: Tensor,
    k: Tensor,
    v: Tensor,
    window: int | None,
    *,
    causal: bool = True,
    decay: Tensor | None = None,
    impl: str = "auto",
    eps: float = 1e-5,
) -> tuple[Tensor, Tensor, Tensor]:
    """Focus-weighted window averages of keys and values.

    w: [b, t, h] focus weights, >= 0, zero at pads (the caller zeroes them).
    k, v: [b, t, h, d]. window: W, or None for global (W >= t is global too).
    causal: the window is the last W tokens (t included); False: j in [t - W//2, t + W//2].
    decay: None, or gamma [h] in (0, 1]: token j counts gamma^|t-j| w_j (values are checked
    for CPU tensors only, to keep the op free of device syncs).
    Returns kbar [b, t, h, d] in k's dtype, vbar [b, t, h, d] in v's dtype and
    z = S(1) [b, t, h] in the accumulation dtype (fp32, or fp64 for fp64 inputs).
    """
    _check_inputs("leap_window_sums", w, {"k": k, "v": v}, window, decay, impl)
    (kbar, vbar), z = _focus_averages(w, [k, v], window, causal, decay, impl, eps)
    return kbar, vbar, z


def leap_window_pool(
    w: Tensor,
    x: Tensor,
    window: int | None,
    *,
    causal: bool = True,
    decay: Tensor | None = None,
    impl: str = "auto",
    eps: float = 1e-5,
) -> Tensor:
    """Focus-weighted window average of one stream: xbar = S(x) / (S(1) + eps), [b, t, h, d].

    The Fastformer pooling (Wu et al. 2021, causal and windowed): w [b, t, h] are its pooling weights alpha,
    x [b, t, h, d] the pooled stream. Same window, decay and impl semantics as
    `leap_window_sums`, which computes the same average for two streams at once.
    """
    _check_inputs("leap_window_pool", w, {"x": x}, window, decay, impl)
    (xbar,), _ = _focus_averages(w, [x], window, causal, decay, impl, eps)
    return xbar


def _focus_averages(
    w: Tensor,
    streams: list[Tensor],
    window: int | None,
    causal: bool,
    decay: Tensor | None,
    impl: str,
    eps: float,
) -> tuple[list[Tensor], Tensor]:
    """S(Z) / (S(1) + eps) for every Z in streams, and S(1), with one window sum for all."""
    acc = _accumulation_dtype(w, *streams)
    wa = w.to(torch.float64 if impl == "reference" else acc).unsqueeze(-1)
    # One pass for all sums: [w Z_1 | w Z_2 | ... | w] along the last dim.
    x = torch.cat([wa * stream.to(wa.dtype) for stream in streams] + [wa], dim=-1)  # [b, t, h, n d + 1]
    s = window_sum(x, window, causal=causal, decay=decay, impl=impl)
    *sums, z = s.split([stream.shape[-1] for stream in streams] + [1], dim=-1)
    denom = z + eps
    return [(s_z / denom).to(stream.dtype) for s_z, stream in zip(sums, streams)], z.squeeze(-1).to(acc)


def alibi_decay(num_heads: int) -> Tensor:
    """Fixed per-head decay gamma_h = exp(-m_h), m_h = 2^(-8 h / H), h = 1..H: [H], fp32.

    ALiBi (Press et al. 2022) adds -m_h (t - j) to a softmax logit, which multiplies the
    unnormalised weight exp(logit) by gamma_h^(t-j): exactly the decay of the focus weights
    here (for the exp focus it is ALiBi itself). Head 1 fades fastest (gamma = exp(-2^(-8/H))),
    head H slowest (exp(-1/256), about 256 tokens). Departure: ALiBi interleaves the slopes of
    the next power of two when H is not one; the geometric formula is used for every H.
    """
    if num_heads < 1:
        raise ValueError(f"num_heads must be a positive int; got {num_heads}")
    h = torch.arange(1, num_heads + 1, dtype=torch.float64)
    return torch.exp(-(2.0 ** (-8.0 * h / num_heads))).float()


def _accumulation_dtype(*tensors: Tensor) -> torch.dtype:
    return torch.float64 if any(x.dtype == torch.float64 for x in tensors) else torch.float32


def _check_inputs(
    op: str, w: Tensor, streams: dict[str, Tensor], window: int | None, decay: Tensor | None, impl: str
) -> None:
    names = ", ".join(streams)
    shapes = ", ".join(f"{name} {tuple(z.shape)}" for name, z in streams.items())
    z = next(iter(streams.values()))
    if z.dim() != 4 or any(s.shape != z.shape for s in streams.values()) or w.shape != z.shape[:-1]:
        raise ValueError(
            f"{op} expects w [b, t, h] and {names} [b, t, h, d]; got w {tuple(w.shape)}, {shapes}"
        )
    if window is not None and window < 1:
        raise ValueError(f"window must be None (global) or a positive int; got {window}")
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; choose one of {', '.join(IMPLS)}")
    _check_decay(decay, w.shape[-1])


def _check_decay(decay: Tensor | None, num_heads: int) -> None:
    if decay is None:
        return
    if decay.shape != (num_heads,):
        raise ValueError(f"decay must be one gamma per head, shape ({num_heads},); got {tuple(decay.shape)}")
    if decay.device.type == "cpu" and not bool(((decay > 0) & (decay <= 1)).all()):
        raise ValueError(f"decay values must lie in (0, 1] (e.g. alibi_decay(num_heads)); got {decay}")


def norm_headdim(x: Tensor, eps: float = 1e-5, correction: int = 0) -> Tensor:
    """(x - mean) / (std + eps) over the head dim, no parameters.

    correction 0 (default, the Fastformer pooling's): the population std; then
    |Norm(a)|^2 <= d, so |Norm(a) . Norm(b)| <= d by Cauchy-Schwarz, and d = 1 gives 0 instead
    of NaN. correction 1: the unbiased std (torch.std's default), what the original LEAP's
    rescaled variant used; |Norm(a)|^2 <= d - 1 < d still, but d = 1 is NaN (callers refuse it).
    """
    mean = x.mean(-1, keepdim=True)
    std = x.std(-1, correction=correction, keepdim=True)
    return (x - mean) / (std + eps)


def dot_headdim(a: Tensor, b: Tensor) -> Tensor:
    """a . b over the head dim in fp32 (fp64 for fp64 inputs): [b, t, h, d] -> [b, t, h]."""
    acc = _accumulation_dtype(a, b)
    # torch.linalg.vecdot: about 3x faster than an einsum string here (forward + backward).
    return torch.linalg.vecdot(a.to(acc), b.to(acc))


def leap_logit_elu(f: Tensor, k: Tensor) -> Tensor:
    """l = (F . K) / sqrt(d): [b, t, h, d] x2 -> [b, t, h], fp32. Dropout on l goes here."""
    return dot_headdim(f, k) / math.sqrt(k.shape[-1])


def leap_weights_elu(f: Tensor, k: Tensor) -> Tensor:
    """Default focus weights w = elu((F . K) / sqrt(d)) + 1 > 0: [b, t, h], fp32."""
    return F.elu(leap_logit_elu(f, k)) + 1


def leap_logit_exp(f: Tensor, k: Tensor, rescale: float) -> Tensor:
    """l = Norm(F) . Norm(K) * rescale / d, |l| <= rescale: [b, t, h], fp32 (Norm with the
    population std). Fastformer's pooling logit; LEAP's rescaled focus normalizes Q, F, K, V
    with the unbiased std in the layer (seqlab.layers.leap) and takes plain dot products."""
    return dot_headdim(norm_headdim(f), norm_headdim(k)) * (rescale / k.shape[-1])


def leap_gate_elu(q: Tensor, kbar: Tensor) -> Tensor:
    """Query gate a = sigmoid((Q . Kbar) / sqrt(d)): [b, t, h] in q's dtype."""
    return torch.sigmoid(dot_headdim(q, kbar) / math.sqrt(q.shape[-1])).to(q.dtype)


@dataclass
class LeapState:
    """Decoding state of one LEAP layer; `leap_recurrent_step` advances it.

    sum_k, sum_v [b, h, d] and z [b, h]: the window sums S(K), S(V), S(1) of the last token.
    Windowed layers (window not None) also keep the last W entries, oldest first:
    last_w [b, W, h], last_k and last_v [b, W, h, d] (zeros before the first W tokens).
    decay: gamma [h] of the decay positions, or None. length: tokens seen so far.
    A single-stream state (num_streams=1, advanced by `leap_pool_step`) keeps S(x) in sum_k
    and last_k, and has sum_v = last_v = None.

    It follows the per-layer decoding-state protocol of seqlab.layers.cache: `length`,
    `map_batch(fn)`, `reset()`.
    """

    sum_k: Tensor
    sum_v: Tensor | None
    z: Tensor
    window: int | None = None
    last_w: Tensor | None = None
    last_k: Tensor | None = None
    last_v: Tensor | None = None
    length: int = 0
    decay: Tensor | None = None

    # The batch-first tensors (decay and length are per layer, not per sample).
    BATCH_FIELDS = ("sum_k", "sum_v", "z", "last_w", "last_k", "last_v")

    def map_batch(self, fn) -> None:
        """Apply fn to every batch-first tensor (reorder, select or repeat samples, e.g. beams)."""
        for name in self.BATCH_FIELDS:
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, fn(value))

    def reset(self) -> None:
        """Back to an empty context: zero sums and buffers of the same shapes, length 0.

        New zero tensors rather than zeroing in place: an autograd graph of earlier steps may
        still hold the old ones.
        """
        self.map_batch(torch.zeros_like)
        self.length = 0


def leap_state_init(
    batch_size: int,
    num_heads: int,
    head_dim: int,
    window: int | None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    *,
    decay: Tensor | None = None,
    num_streams: int = 2,
) -> LeapState:
    """An empty state: zero sums, and for window W all-zero buffers of W entries.

    decay: gamma [h] in (0, 1], or None. num_streams: 2 (keys and values, for
    `leap_recurrent_step`) or 1 (one pooled stream, for `leap_pool_step`).
    """
    if window is not None and window < 1:
        raise ValueError(f"window must be None (global) or a positive int; got {window}")
    if num_streams not in (1, 2):
        raise ValueError(f"num_streams must be 2 (keys and values) or 1 (pooling); got {num_streams}")
    _check_decay(decay, num_heads)
    b, h, d = batch_size, num_heads, head_dim
    two = num_streams == 2
    state = LeapState(
        sum_k=torch.zeros(b, h, d, device=device, dtype=dtype),
        sum_v=torch.zeros(b, h, d, device=device, dtype=dtype) if two else None,
        z=torch.zeros(b, h, device=device, dtype=dtype),
        window=window,
        decay=None if decay is None else decay.to(device=device, dtype=dtype),
    )
    if window is not None:
        state.last_w = torch.zeros(b, window, h, device=device, dtype=dtype)
        state.last_k = torch.zeros(b, window, h, d, device=device, dtype=dtype)
        state.last_v = torch.zeros(b, window, h, d, device=device, dtype=dtype) if two else None
    return state


def leap_recurrent_step(
    state: LeapState, w_t: Tensor, k_t: Tensor, v_t: Tensor, eps: float = 1e-5
) -> tuple[Tensor, Tensor]:
    """Feed one token, w_t [b, h], k_t and v_t [b, h, d]; returns (kbar_t, vbar_t) [b, h, d].

    Advances `state` by replacing its fields with new tensors; no tensor is written in place,
    so autograd can run through a sequence of steps and no earlier output is aliased.
    Global: the sums fade by gamma (with decay) and grow by w_t K_t, w_t V_t and w_t, O(1)
    per token. Windowed: the token enters the buffer of the last W entries, the oldest leaves,
    and the sums are recomputed from the W entries, weighted by gamma^age with decay: O(W)
    per token, constant in the context length, and exact, where subtracting the leaving entry
    from running sums would let their round-off drift over a long decode (a huge weight
    leaves its round-off behind forever).
    """
    if state.sum_v is None:
        raise ValueError("leap_recurrent_step needs a two-stream state; this one is for leap_pool_step")
    _advance(state, w_t, k_t, v_t)
    denom = state.z.unsqueeze(-1) + eps
    return (state.sum_k / denom).to(k_t.dtype), (state.sum_v / denom).to(v_t.dtype)


def leap_pool_step(state: LeapState, w_t: Tensor, x_t: Tensor, eps: float = 1e-5) -> Tensor:
    """Feed one token to a single-stream state, w_t [b, h], x_t [b, h, d]; returns xbar_t.

    The recurrent form of `leap_window_pool`; see `leap_recurrent_step` for the cost.
    """
    if state.sum_v is not None:
        raise ValueError("leap_pool_step needs a single-stream state: leap_state_init(..., num_streams=1)")
    _advance(state, w_t, x_t, None)
    return (state.sum_k / (state.z.unsqueeze(-1) + eps)).to(x_t.dtype)


def _advance(state: LeapState, w_t: Tensor, k_t: Tensor, v_t: Tensor | None) -> None:
    """Add one token to the sums of `state` (v_t None for a single-stream state).

    Autocast is off, as in `window_sum`: the sums stay in the state's dtype.
    """
    if torch.is_autocast_enabled(w_t.device.type):
        with torch.autocast(w_t.device.type, enabled=False):
            _advance_sums(state, w_t, k_t, v_t)
    else:  # the common decode path: skip entering a context per token and layer
        _advance_sums(state, w_t, k_t, v_t)
    state.length += 1


def _advance_sums(state: LeapState, w_t: Tensor, k_t: Tensor, v_t: Tensor | None) -> None:
    dt = state.z.dtype
    w, k = w_t.to(dt), k_t.to(dt)
    v = None if v_t is None else v_t.to(dt)
    if state.window is None:
        if state.decay is not None:  # every older token fades by gamma per step
            state.z = state.decay * state.z
            state.sum_k = state.decay[:, None] * state.sum_k
            state.sum_v = None if v is None else state.decay[:, None] * state.sum_v
        state.z = state.z + w
        state.sum_k = state.sum_k + w.unsqueeze(-1) * k
        state.sum_v = None if v is None else state.sum_v + w.unsqueeze(-1) * v
    else:
        state.last_w = torch.cat([state.last_w[:, 1:], w.unsqueeze(1)], dim=1)
        state.last_k = torch.cat([state.last_k[:, 1:], k.unsqueeze(1)], dim=1)
        weights = state.last_w  # [b, W, h], oldest first
        if state.decay is not None:
            age = torch.arange(state.window - 1, -1, -1, device=w.device, dtype=dt)  # [W]
            weights = weights * state.decay ** age[:, None]
        state.z = weights.sum(1)
        state.sum_k = _weighted_sum(weights, state.last_k)
        if v is not None:
            state.last_v = torch.cat([state.last_v[:, 1:], v.unsqueeze(1)], dim=1)
            state.sum_v = _weighted_sum(weights, state.last_v)


def leap_state_prefill(state: LeapState, w: Tensor, k: Tensor, v: Tensor | None = None) -> None:
    """Feed a chunk of tokens w [b, t, h], k and v [b, t, h, d] into `state` at once.

    The same state as t calls of `leap_recurrent_step` (or `leap_pool_step` with v None), in
    O(t) vectorized work: a prompt is read in parallel, then decoding continues one token at a
    time. Global: S <- gamma^t S + sum_j gamma^(t-1-j) w_j Z_j. Windowed: the last W entries
    of the old buffer and the chunk, sums recomputed from them.
    """
    if (v is None) != (state.sum_v is None):
        raise ValueError("leap_state_prefill: give v exactly when the state has two streams")
    t = w.shape[1]
    with torch.autocast(w.device.type, enabled=False):
        dt = state.z.dtype
        w, k = w.to(dt), k.to(dt)
        v = None if v is None else v.to(dt)
        if state.window is None:
            weights = w
            if state.decay is not None:
                age = torch.arange(t - 1, -1, -1, device=w.device, dtype=dt)  # [t]
                weights = w * state.decay ** age[:, None]
                fade = state.decay**t
                state.z, state.sum_k = fade * state.z, fade[:, None] * state.sum_k
                state.sum_v = None if v is None else fade[:, None] * state.sum_v
            state.z = state.z + weights.sum(1)
            state.sum_k = state.sum_k + _weighted_sum(weights, k)
            if v is not None:
                state.sum_v = state.sum_v + _weighted_sum(weights, v)
        else:
            n = state.window
            state.last_w = torch.cat([state.last_w, w], dim=1)[:, -n:]
            state.last_k = torch.cat([state.last_k, k], dim=1)[:, -n:]
            weights = state.last_w
            if state.decay is not None:
                age = torch.arange(n - 1, -1, -1, device=w.device, dtype=dt)
                weights = weights * state.decay ** age[:, None]
            state.z = weights.sum(1)
            state.sum_k = _weighted_sum(weights, state.last_k)
            if v is not None:
                state.last_v = torch.cat([state.last_v, v], dim=1)[:, -n:]
                state.sum_v = _weighted_sum(weights, state.last_v)
    state.length += t


def _weighted_sum(weights: Tensor, x: Tensor) -> Tensor:
    """sum_n weights[b, n, h] x[b, n, h, d] -> [b, h, d] (the decode hot path: no einsum parsing)."""
    return (weights.unsqueeze(-1) * x).sum(1)


def leap_recurrent_reference(
    w: Tensor, k: Tensor, v: Tensor, window: int | None, eps: float = 1e-5, *, decay: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Causal window sums by stepping `leap_recurrent_step` over t.

    Same contract as `leap_window_sums(w, k, v, window, decay=decay)`: (kbar, vbar, z).
    """
    b, t, h, d = k.shape
    state = leap_state_init(b, h, d, window, k.device, _accumulation_dtype(w, k, v), decay=decay)
    kbar, vbar, z = [], [], []
    for i in range(t):
        kbar_i, vbar_i = leap_recurrent_step(state, w[:, i], k[:, i], v[:, i], eps)
        kbar.append(kbar_i)
        vbar.append(vbar_i)
        z.append(state.z)
    return torch.stack(kbar, 1), torch.stack(vbar, 1), torch.stack(z, 1)


def leap_attention_map(
    w: Tensor,
    window: int | None,
    *,
    causal: bool = True,
    decay: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """The implicit attention map A [b, h, t, t]: A[t, j] = gamma^|t-j| w_j / (S_t(1) + eps)
    for j in the window of t (gamma = 1 without decay), else 0.

    Row t is the distribution over tokens that Kbar_t and Vbar_t average (A @ V = Vbar); the
    gate a_t scales it. O(t^2) memory: for visualisation, not for training.
    """
    t = w.shape[1]
    pos = torch.arange(t, device=w.device)
    offset = pos[:, None] - pos[None, :]  # [t, t]: query position minus key position
    if causal:
        in_window = offset >= 0
        if window is not None:
            in_window &= offset < window
    elif window is None:
        in_window = torch.ones(t, t, dtype=torch.bool, device=w.device)
    else:
        in_window = offset.abs() <= window // 2
    acc = _accumulation_dtype(w)
    weights = rearrange(w.to(acc), "b j h -> b h 1 j") * in_window
    if decay is not None:
        _check_decay(decay, w.shape[-1])
        weights = weights * decay.to(acc)[:, None, None] ** offset.abs()  # gamma^|t-j| [h, t, t]
    return weights / (weights.sum(-1, keepdim=True) + eps)
