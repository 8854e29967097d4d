"""Window sums along time, optionally with exponential decay: the engine of the LEAP focus sums.

For x [b, t, ...] and a window of W tokens, `window_sum` returns

    causal:        S_i = sum_{j = max(0, i-W+1)}^{i} gamma^(i-j) x_j
    bidirectional: S_i = sum_{|j - i| <= W//2} gamma^|i-j| x_j       (clipped to the sequence)

where gamma = 1 without decay and gamma_h in (0, 1] per head with decay (x is then [b, t, h, f]).
W = None, or a window that covers the whole sequence, is global. Used by seqlab.ops.leap
for LEAP's focus sums and its "decay" positions.

Implementations (`impl=`):

- "reference": the formula as a Python loop over i, in float64. Slow; for tests.
- "shifted": the sum of the W shifted copies of x (scaled by gamma^shift). O(t W).
- "blocked": O(t) work for any window (O(t C), C = DECAY_CHUNK, with decay). The sequence is
  cut into blocks of W tokens; the window of token i is a prefix of its own block plus a
  suffix of the previous block, each a sum restarted at every block. Nothing is subtracted.
- "fast": "shifted" for W <= SHIFTED_MAX_WINDOW, "blocked" above; "auto" is "fast" today.

All paths work in x's dtype (the caller picks fp32 or fp64) and are plain torch ops, so
autograd differentiates them, also with respect to the decay.

Decay without overflow: gamma^(i-j) is never factored as gamma^i / gamma^j (gamma^-8192
overflows fp32 for any useful gamma); every factor used is a power gamma^n with n >= 0, so
it lies in (0, 1]. The global decayed sum is chunked (`_decayed_prefix_sum`): within chunks
of C tokens a [C, C] lower-triangular matrix of gamma^(i-j) applied as a matmul; across
chunks the chunk totals form a sequence of t / C entries whose own decayed prefix sum (factor
gamma^C) is the same problem, solved by the same function. All weights are <= 1 and positive
and nothing is subtracted, so the fp32 round-off of S_i is relative to the magnitudes of its
own terms and does not grow with t (tested at t = 8192).
"""

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import Tensor

__all__ = ["IMPLS", "SHIFTED_MAX_WINDOW", "DECAY_CHUNK", "window_bounds", "window_sum"]

IMPLS = ("auto", "fast", "blocked", "shifted", "reference")

# "fast" sums shifted copies up to this window and uses the blocked sums above it (CPU
# fwd+bwd, b=8 h=4 d=32, t=1024 and 4096: the shifted sum wins up to W = 8, then loses).
SHIFTED_MAX_WINDOW = 8

# Chunk length of the decayed prefix sum: [C, C] matmuls, O(t C) multiply-adds, then the same
# sum over the t / C chunk totals (CPU fwd+bwd, b=8 h=4 t=4096: C = 16..128 within noise,
# 64 slightly ahead; much faster than an O(t log t) doubling scan, which is memory bound).
DECAY_CHUNK = 64


def window_sum(
    x: Tensor,
    window: int | None,
    *,
    causal: bool = True,
    decay: Tensor | None = None,
    impl: str = "auto",
) -> Tensor:
    """Window sums of x [b, t, ...] along t (x [b, t, h, f] with decay [h]), in x's dtype.

    "reference" returns float64. Autocast is off inside: it would run the decay matmuls in
    bf16/fp16 and lose the fp32 accumulation (TF32, if the caller enables it, still applies).
    """
    if impl == "reference":
        return _window_sum_reference(x, window, causal, decay)
    with torch.autocast(x.device.type, enabled=False):
        return _window_sum(x, window, causal, decay, impl)


def _window_sum(x: Tensor, window: int | None, causal: bool, decay: Tensor | None, impl: str) -> Tensor:
    if impl in ("auto", "fast"):
        impl = "shifted" if window is not None and window <= SHIFTED_MAX_WINDOW else "blocked"
    log_decay = None if decay is None else decay.to(x.dtype).log()
    if causal:
        return _causal_window_sum(x, window, log_decay, impl)

    t = x.shape[1]
    radius = None if window is None or window // 2 >= t - 1 else window // 2
    if log_decay is None:
        if radius is None:
            return x.sum(1, keepdim=True).expand_as(x)
        # The symmetric window [i - r, i + r] is the causal window of length 2r + 1 ending at
        # i + r: pad r zeros after the sequence and read the causal sums r tokens later.
        x = _pad_time(x, 0, radius)
        return _causal_window_sum(x, 2 * radius + 1, None, impl)[:, radius:]
    # With decay the weight of x_j depends on its distance to i, not to the window's end: sum
    # the past (j <= i) and the future (j > i) separately. The future is the causal sum of the
    # reversed sequence, j in [i, i + r - 1] with gamma^(j-i), read one token later, times gamma.
    past = _causal_window_sum(x, None if radius is None else radius + 1, log_decay, impl)
    if radius == 0:
        return past
    future = _causal_window_sum(x.flip(1), radius, log_decay, impl).flip(1)
    return past + _pad_time(future[:, 1:], 0, 1) * log_decay.exp()[:, None]


def window_bounds(i: int, t: int, window: int | None, causal: bool) -> tuple[int, int]:
    """The window of token i as a slice [lo, hi) of a length-t sequence."""
    if causal:
        return (0 if window is None else max(0, i - window + 1)), i + 1
    if window is None:
        return 0, t
    radius = window // 2
    return max(0, i - radius), min(t, i + radius + 1)


def _window_sum_reference(x: Tensor, window: int | None, causal: bool, decay: Tensor | None) -> Tensor:
    """The formula as a loop over i, in float64."""
    t = x.shape[1]
    x64 = x.double()
    sums = []
    for i in range(t):
        lo, hi = window_bounds(i, t, window, causal)
        x_j = x64[:, lo:hi]  # [b, n, ...], n tokens in the window
        if decay is not None:
            distance = (torch.arange(lo, hi, device=x.device) - i).abs()
            x_j = x_j * (decay.double()[None, :] ** distance[:, None])[..., None]  # gamma^|i-j| [n, h, 1]
        sums.append(x_j.sum(1))
    return torch.stack(sums, 1)


def _causal_window_sum(x: Tensor, window: int | None, log_decay: Tensor | None, impl: str) -> Tensor:
    """sum_{j = i-W+1}^{i} gamma^(i-j) x_j; log_decay [h] = log gamma, or None for gamma = 1."""
    if window is None or window >= x.shape[1]:
        return x.cumsum(1) if log_decay is None else _decayed_prefix_sum(x, log_decay)
    if impl == "shifted":
        return _shifted_window_sum(x, window, log_decay)
    return _blocked_window_sum(x, window, log_decay)


def _shifted_window_sum(x: Tensor, window: int, log_decay: Tensor | None) -> Tensor:
    """sum_{n < W} gamma^n x[i - n]: W - 1 additions of shifted copies (zero before the start)."""
    t = x.shape[1]
    xp = _pad_time(x, window - 1, 0)
    s = x
    for n in range(1, window):
        shifted = xp[:, window - 1 - n : window - 1 - n + t]
        s = s + (shifted if log_decay is None else shifted * (n * log_decay).exp()[:, None])
    return s


def _blocked_window_sum(x: Tensor, window: int, log_decay: Tensor | None) -> Tensor:
    """Causal window sums from prefix and suffix sums restarted every W tokens.

    Token i of block n sees tokens 0..i of its own block (a prefix sum within block n) and
    tokens i+1..W-1 of block n-1 (a suffix sum within block n-1). Both are plain sums of at
    most W entries of the window itself: nothing is subtracted, so the round-off is relative
    to the window's own entries, does not grow with t, and entries outside the window
    (however large) have no effect at all. A suffix sum taken as block total minus prefix
    would let a large entry just before the window leak its round-off into the window.

    With decay the own-block prefix is the decayed prefix sum restarted per block, and entry
    j of the previous block has weight gamma^(W + i - j) = gamma^(W-1-j) * gamma^(i+1): a
    suffix sum of entries pre-scaled by their distance to the block end, then scaled by the
    distance from the block start to i. Both factors are <= 1.
    """
    b, t, *rest = x.shape
    n = -(-t // window)
    xb = _pad_time(x, 0, n * window - t).reshape(b, n, window, *rest)  # [b, n, W, ...]
    if log_decay is None:
        own = xb.cumsum(2)  # entries 0..i of each block
    else:
        own = _decayed_prefix_sum(xb.flatten(0, 1), log_decay).unflatten(0, (b, n))
        slot = torch.arange(window, device=x.device, dtype=x.dtype)
        xb = xb * _powers(log_decay, window - 1 - slot)[..., None]  # gamma^(W-1-j) [W, h, 1]
    suffix = xb.flip(2).cumsum(2).flip(2)  # entries i..W-1 of each block
    # Entries i+1..W-1 of the previous block: suffix shifted by one slot and by one block,
    # zero for block 0 and for slot W - 1 (whose window is its whole own block).
    carried = F.pad(suffix[:, :-1, 1:], (0, 0) * len(rest) + (0, 1, 1, 0))
    if log_decay is not None:
        carried = carried * _powers(log_decay, slot + 1)[..., None]  # gamma^(i+1) [W, h, 1]
    return (own + carried).reshape(b, n * window, *rest)[:, :t]


def _decayed_prefix_sum(x: Tensor, log_decay: Tensor, chunk: int = DECAY_CHUNK) -> Tensor:
    """sum_{j <= i} gamma^(i-j) x_j for x [b, t, h, f], chunked (see the module docstring)."""
    b, t, h, f = x.shape
    c = min(t, chunk)
    n = -(-t // c)
    xb = rearrange(_pad_time(x, 0, n * c - t), "b (n c) h f -> b n c h f", c=c)
    pos = torch.arange(c, device=x.device, dtype=x.dtype)
    lag = pos[:, None] - pos[None, :]  # [c, c]: i - j
    # gamma^(i-j) for j <= i, else 0: the clamp keeps the masked entries finite (gamma^0 = 1).
    decay_matrix = _powers(log_decay, lag.clamp(min=0)) * (lag >= 0)[..., None]  # [c, c, h]
    within = einsum(decay_matrix, xb, "i j h, b n j h f -> b n i h f")
    if n > 1:
        # The state at the end of every chunk is the decayed prefix sum of the chunk totals
        # (each already decayed to its chunk's end) with factor gamma^c per chunk.
        ends = _decayed_prefix_sum(within[:, :, -1], log_decay * c, chunk)  # [b, n, h, f]
        before = F.pad(ends[:, :-1], (0, 0, 0, 0, 1, 0))  # state before chunk n
        into = _powers(log_decay, pos + 1)[..., None]  # gamma^(i+1) [c, h, 1]
        within = within + before[:, :, None] * into
    return rearrange(within, "b n c h f -> b (n c) h f")[:, :t]


def _powers(log_decay: Tensor, exponents: Tensor) -> Tensor:
    """gamma^e = exp(e log gamma) for exponents e >= 0 of any shape: [*e.shape, h], in (0, 1]."""
    return (exponents[..., None] * log_decay).exp()


def _pad_time(x: Tensor, before: int, after: int) -> Tensor:
    """Zero-pad dim 1 (time) of x [b, t, ...]."""
    if before == 0 and after == 0:
        return x
    return F.pad(x, (0, 0) * (x.dim() - 2) + (before, after))
