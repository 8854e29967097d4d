"""LEAP ops: focus-weighted window sums, focus weights and gates, the recurrent step, the map.

LEAP (Linear Explainable Attention in Parallel, seed 001, mtanghu/LEAP; spec in
specs/leap.md) replaces softmax attention by per-token focus weights w_t >= 0 and the
focus-weighted averages of keys and values over a window of the last W tokens:

    S_t(Z)  = sum_{j = max(0, t-W+1)}^{t} w_j Z_j         Z in {K, V, 1}
    Kbar_t  = S_t(K) / (S_t(1) + eps)
    Vbar_t  = S_t(V) / (S_t(1) + eps)

Shapes: b batch, t time, h heads, d head dim. Per-token tensors are [b, t, h, d]; per-token
scalars (weights w, normaliser z) are [b, t, h]. The recurrent step works on one token:
[b, h, d] and [b, h].

Implementations of `leap_window_sums` (the `impl=` argument):

- "reference": the formula above as a Python loop over t in float64. Slow; for tests.
- "blocked": O(t) work for any window. The sequence is cut into blocks of W tokens; the window
  of token t is a prefix of its own block plus a suffix of the previous block, both computed
  by cumulative sums that restart at every block. Nothing is ever subtracted, so the
  round-off is that of a sum of the window's own W entries: it does not grow with t, and
  entries outside the window have exactly no effect.
- "shifted": the sum of the W shifted copies of the sequence. O(t W) work, fastest for W <= 8.
- "fast": "shifted" for W <= SHIFTED_MAX_WINDOW, "blocked" above. "auto" (the default) is
  "fast" today; it is the name to keep if device-specific kernels are added.

All vectorised paths accumulate in fp32 (fp64 for fp64 inputs), whatever the input dtype,
and are plain torch ops, so autograd differentiates them. A global window (None or >= t)
is a plain fp32 prefix sum: its round-off is relative to the (growing) sum itself.

Departure from the seed: the seed computed cumsum(wZ)_t - cumsum(wZ)_{t-W} in the input
dtype; in bf16 at t = 8192 the difference of two prefix sums near 1e4 loses every bit of a
window sum near 1 (spec "Numerics").

Bidirectional (encoder) form, `causal=False`: the window of token t is the symmetric range
j in [t - W//2, t + W//2] clipped to the sequence (W tokens for odd W, W + 1 for even W);
None, or W//2 >= t - 1, means every position.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import Tensor

__all__ = [
    "LeapState",
    "leap_attention_map",
    "leap_gate_elu",
    "leap_gate_exp",
    "leap_logit_elu",
    "leap_logit_exp",
    "leap_recurrent_reference",
    "leap_recurrent_step",
    "leap_state_init",
    "leap_weights_elu",
    "leap_weights_exp",
    "leap_window_sums",
]

IMPLS = ("auto", "fast", "blocked", "shifted", "reference")

# "fast" sums shifted copies up to this window and uses the blocked sums above it (CPU
# fwd+bwd, b=8 h=4 d=32, t=1024 and 4096: the shifted sum wins up to W = 8, then loses).
SHIFTED_MAX_WINDOW = 8


def leap_window_sums(
    w: Tensor,
    k: Tensor,
    v: Tensor,
    window: int | None,
    *,
    causal: bool = True,
    impl: str = "auto",
    eps: float = 1e-5,
) -> tuple[Tensor, Tensor, Tensor]:
    """Focus-weighted window averages of keys and values.

    w: [b, t, h] focus weights, >= 0, zero at pads (the caller zeroes them).
    k, v: [b, t, h, d]. window: W, or None for global (W >= t is global too).
    causal: the window is the last W tokens (t included); False: j in [t - W//2, t + W//2].
    Returns kbar [b, t, h, d] in k's dtype, vbar [b, t, h, d] in v's dtype and
    z = S(1) [b, t, h] in the accumulation dtype (fp32, or fp64 for fp64 inputs).
    """
    _check_inputs(w, k, v, window, impl)
    if impl == "reference":
        return _window_sums_reference(w, k, v, window, causal, eps)
    if impl in ("auto", "fast"):
        impl = "shifted" if window is not None and window <= SHIFTED_MAX_WINDOW else "blocked"
    acc = _accumulation_dtype(w, k, v)
    d = k.shape[-1]
    wa = w.to(acc).unsqueeze(-1)
    # One pass for the three sums: [w K | w V | w] along the last dim.
    x = torch.cat([wa * k.to(acc), wa * v.to(acc), wa], dim=-1)  # [b, t, h, 2d+1]
    s = _window_sum(x, window, causal, impl)
    s_k, s_v, z = s.split([d, d, 1], dim=-1)
    denom = z + eps
    return (s_k / denom).to(k.dtype), (s_v / denom).to(v.dtype), z.squeeze(-1)


def _window_sums_reference(
    w: Tensor, k: Tensor, v: Tensor, window: int | None, causal: bool, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """The spec as a loop over t, accumulating in float64."""
    t = k.shape[1]
    w64, k64, v64 = w.double(), k.double(), v.double()
    kbar, vbar, z = [], [], []
    for i in range(t):
        lo, hi = _window_bounds(i, t, window, causal)
        w_j = w64[:, lo:hi].unsqueeze(-1)  # [b, n, h, 1], n tokens in the window
        s_k = (w_j * k64[:, lo:hi]).sum(1)  # [b, h, d]
        s_v = (w_j * v64[:, lo:hi]).sum(1)
        s_1 = w_j.sum(1)  # [b, h, 1]
        kbar.append(s_k / (s_1 + eps))
        vbar.append(s_v / (s_1 + eps))
        z.append(s_1.squeeze(-1))
    acc = _accumulation_dtype(w, k, v)
    return (
        torch.stack(kbar, 1).to(k.dtype),
        torch.stack(vbar, 1).to(v.dtype),
        torch.stack(z, 1).to(acc),
    )


def _window_bounds(i: int, t: int, window: int | None, causal: bool) -> tuple[int, int]:
    """The window of token i as a slice [lo, hi) of a length-t sequence."""
    if causal:
        return (0 if window is None else max(0, i - window + 1)), i + 1
    if window is None:
        return 0, t
    radius = window // 2
    return max(0, i - radius), min(t, i + radius + 1)


def _window_sum(x: Tensor, window: int | None, causal: bool, impl: str) -> Tensor:
    """Window sums of x [b, t, ...] along t, in x's dtype."""
    t = x.shape[1]
    if causal:
        if window is None or window >= t:
            return x.cumsum(1)
        return _causal_window_sum(x, window, impl)
    if window is None or window // 2 >= t - 1:
        return x.sum(1, keepdim=True).expand_as(x)
    # The symmetric window [i - r, i + r] is the causal window of length 2r + 1 ending at
    # i + r: pad r zeros after the sequence and read the causal sums r tokens later.
    radius = window // 2
    x = _pad_time(x, 0, radius)
    return _causal_window_sum(x, 2 * radius + 1, impl)[:, radius:]


def _causal_window_sum(x: Tensor, window: int, impl: str) -> Tensor:
    if impl == "shifted":
        return _shifted_window_sum(x, window)
    return _blocked_window_sum(x, window)


def _shifted_window_sum(x: Tensor, window: int) -> Tensor:
    """sum_{i < W} x[t - i]: W - 1 additions of shifted copies (zero before the start)."""
    t = x.shape[1]
    xp = _pad_time(x, window - 1, 0)
    s = x
    for i in range(1, window):
        s = s + xp[:, window - 1 - i : window - 1 - i + t]
    return s


def _blocked_window_sum(x: Tensor, window: int) -> Tensor:
    """Causal window sums from prefix and suffix sums restarted every W tokens.

    Token i of block n sees tokens 0..i of its own block (a prefix sum within block n) and
    tokens i+1..W-1 of block n-1 (a suffix sum within block n-1). Both are plain sums of at
    most W entries of the window itself: nothing is subtracted, so the round-off is relative
    to the window's own entries, does not grow with t, and entries outside the window
    (however large) have no effect at all. A suffix sum taken as block total minus prefix
    would let a large entry just before the window leak its round-off into the window.
    """
    b, t, *rest = x.shape
    n = -(-t // window)
    xb = _pad_time(x, 0, n * window - t).reshape(b, n, window, *rest)  # [b, n, W, ...]
    prefix = xb.cumsum(2)  # entries 0..i of each block
    suffix = xb.flip(2).cumsum(2).flip(2)  # entries i..W-1 of each block
    # Entries i+1..W-1 of the previous block: suffix shifted by one slot and by one block,
    # zero for block 0 and for slot W - 1 (whose window is its whole own block).
    carried = F.pad(suffix[:, :-1, 1:], (0, 0) * len(rest) + (0, 1, 1, 0))
    return (prefix + carried).reshape(b, n * window, *rest)[:, :t]


def _pad_time(x: Tensor, before: int, after: int) -> Tensor:
    """Zero-pad dim 1 (time) of x [b, t, ...]."""
    if before == 0 and after == 0:
        return x
    return F.pad(x, (0, 0) * (x.dim() - 2) + (before, after))


def _accumulation_dtype(*tensors: Tensor) -> torch.dtype:
    return torch.float64 if any(x.dtype == torch.float64 for x in tensors) else torch.float32


def _check_inputs(w: Tensor, k: Tensor, v: Tensor, window: int | None, impl: str) -> None:
    if k.dim() != 4 or k.shape != v.shape or w.shape != k.shape[:-1]:
        raise ValueError(
            f"leap_window_sums expects w [b, t, h] and k, v [b, t, h, d]; got w "
            f"{tuple(w.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if window is not None and window < 1:
        raise ValueError(f"window must be None (global) or a positive int; got {window}")
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; choose one of {', '.join(IMPLS)}")


def _norm_headdim(x: Tensor, eps: float = 1e-5) -> Tensor:
    """(x - mean) / (std + eps) over the head dim, no parameters.

    The std is the population std (correction 0): then |Norm(a)|^2 <= d, so
    |Norm(a) . Norm(b)| <= d by Cauchy-Schwarz, and d = 1 gives 0 instead of NaN.
    """
    mean = x.mean(-1, keepdim=True)
    std = x.std(-1, correction=0, keepdim=True)
    return (x - mean) / (std + eps)


def _dot_headdim(a: Tensor, b: Tensor) -> Tensor:
    """a . b over the head dim in fp32 (fp64 for fp64 inputs): [b, t, h, d] -> [b, t, h]."""
    acc = _accumulation_dtype(a, b)
    return einsum(a.to(acc), b.to(acc), "... d, ... d -> ...")


def leap_logit_elu(f: Tensor, k: Tensor) -> Tensor:
    """l = (F . K) / sqrt(d): [b, t, h, d] x2 -> [b, t, h], fp32. Dropout on l goes here."""
    return _dot_headdim(f, k) / math.sqrt(k.shape[-1])


def leap_weights_elu(f: Tensor, k: Tensor) -> Tensor:
    """Default focus weights w = elu((F . K) / sqrt(d)) + 1 > 0: [b, t, h], fp32."""
    return F.elu(leap_logit_elu(f, k)) + 1


def leap_logit_exp(f: Tensor, k: Tensor, rescale: float) -> Tensor:
    """l = Norm(F) . Norm(K) * rescale / d, |l| <= rescale: [b, t, h], fp32."""
    return _dot_headdim(_norm_headdim(f), _norm_headdim(k)) * (rescale / k.shape[-1])


def leap_weights_exp(f: Tensor, k: Tensor, rescale: float) -> Tensor:
    """Rescaled-exp focus weights w = exp(Norm(F) . Norm(K) * rescale / d) <= e^rescale."""
    return torch.exp(leap_logit_exp(f, k, rescale))


def leap_gate_elu(q: Tensor, kbar: Tensor) -> Tensor:
    """Query gate a = sigmoid((Q . Kbar) / sqrt(d)): [b, t, h] in q's dtype."""
    return torch.sigmoid(_dot_headdim(q, kbar) / math.sqrt(q.shape[-1])).to(q.dtype)


def leap_gate_exp(q: Tensor, kbar: Tensor, rescale: float) -> Tensor:
    """Query gate of the exp focus a = sigmoid(Norm(Q) . Kbar * rescale / d), in q's dtype."""
    logit = _dot_headdim(_norm_headdim(q), kbar) * (rescale / q.shape[-1])
    return torch.sigmoid(logit).to(q.dtype)


@dataclass
class LeapState:
    """Decoding state of one LEAP layer; `leap_recurrent_step` advances it.

    sum_k, sum_v [b, h, d] and z [b, h]: the window sums S(K), S(V), S(1) of the last token.
    Windowed layers (window not None) also keep the last W entries, oldest first:
    last_w [b, W, h], last_k and last_v [b, W, h, d] (zeros before the first W tokens).
    count: tokens seen so far.
    """

    sum_k: Tensor
    sum_v: Tensor
    z: Tensor
    window: int | None = None
    last_w: Tensor | None = None
    last_k: Tensor | None = None
    last_v: Tensor | None = None
    count: int = 0


def leap_state_init(
    batch_size: int,
    num_heads: int,
    head_dim: int,
    window: int | None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> LeapState:
    """An empty state: zero sums, and for window W all-zero buffers of W entries."""
    if window is not None and window < 1:
        raise ValueError(f"window must be None (global) or a positive int; got {window}")
    b, h, d = batch_size, num_heads, head_dim
    state = LeapState(
        sum_k=torch.zeros(b, h, d, device=device, dtype=dtype),
        sum_v=torch.zeros(b, h, d, device=device, dtype=dtype),
        z=torch.zeros(b, h, device=device, dtype=dtype),
        window=window,
    )
    if window is not None:
        state.last_w = torch.zeros(b, window, h, device=device, dtype=dtype)
        state.last_k = torch.zeros(b, window, h, d, device=device, dtype=dtype)
        state.last_v = torch.zeros(b, window, h, d, device=device, dtype=dtype)
    return state


def leap_recurrent_step(
    state: LeapState, w_t: Tensor, k_t: Tensor, v_t: Tensor, eps: float = 1e-5
) -> tuple[Tensor, Tensor]:
    """Feed one token, w_t [b, h], k_t and v_t [b, h, d]; returns (kbar_t, vbar_t) [b, h, d].

    Advances `state` by replacing its fields with new tensors; no tensor is written in place,
    so autograd can run through a sequence of steps and no earlier output is aliased.
    Global: the sums grow by w_t K_t, w_t V_t and w_t, O(1) per token.
    Windowed: the token enters the buffer of the last W entries, the oldest leaves, and the
    sums are recomputed from the W entries: O(W) per token, constant in the context length,
    and exact, where subtracting the leaving entry from running sums would let their
    round-off drift over a long decode (a huge weight leaves its round-off behind forever).
    """
    dt = state.z.dtype
    w, k, v = w_t.to(dt), k_t.to(dt), v_t.to(dt)
    if state.window is None:
        state.sum_k = state.sum_k + w.unsqueeze(-1) * k
        state.sum_v = state.sum_v + w.unsqueeze(-1) * v
        state.z = state.z + w
    else:
        state.last_w = torch.cat([state.last_w[:, 1:], w.unsqueeze(1)], dim=1)
        state.last_k = torch.cat([state.last_k[:, 1:], k.unsqueeze(1)], dim=1)
        state.last_v = torch.cat([state.last_v[:, 1:], v.unsqueeze(1)], dim=1)
        state.sum_k = einsum(state.last_w, state.last_k, "b n h, b n h d -> b h d")
        state.sum_v = einsum(state.last_w, state.last_v, "b n h, b n h d -> b h d")
        state.z = state.last_w.sum(1)
    state.count += 1
    denom = state.z.unsqueeze(-1) + eps
    return (state.sum_k / denom).to(k_t.dtype), (state.sum_v / denom).to(v_t.dtype)


def leap_recurrent_reference(
    w: Tensor, k: Tensor, v: Tensor, window: int | None, eps: float = 1e-5
) -> tuple[Tensor, Tensor, Tensor]:
    """Causal window sums by stepping `leap_recurrent_step` over t.

    Same contract as `leap_window_sums(w, k, v, window)`: (kbar, vbar, z).
    """
    b, t, h, d = k.shape
    state = leap_state_init(b, h, d, window, k.device, _accumulation_dtype(w, k, v))
    kbar, vbar, z = [], [], []
    for i in range(t):
        kbar_i, vbar_i = leap_recurrent_step(state, w[:, i], k[:, i], v[:, i], eps)
        kbar.append(kbar_i)
        vbar.append(vbar_i)
        z.append(state.z)
    return torch.stack(kbar, 1), torch.stack(vbar, 1), torch.stack(z, 1)


def leap_attention_map(
    w: Tensor, window: int | None, *, causal: bool = True, eps: float = 1e-5
) -> Tensor:
    """The implicit attention map A [b, h, t, t]: A[t, j] = w_j / (S_t(1) + eps) in the window.

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
    weights = rearrange(w.to(_accumulation_dtype(w)), "b j h -> b h 1 j") * in_window
    return weights / (weights.sum(-1, keepdim=True) + eps)
