"""LEAP attention mixer (Linear Explainable Attention in Parallel, seed 001: mtanghu/LEAP).

    [Q | F | K | V] = x W_qfkv                 one fused projection, split into h heads
    focus "elu" (default):
        l_t = F_t . K_t / sqrt(d),   w_t = elu(l_t) + 1
        Kbar_t, Vbar_t = focus-weighted means of K, V over the window of t (seqlab.ops.leap)
        a_t = sigmoid(Q_t . Kbar_t / sqrt(d))
    focus "exp" (the seed README's rescaled dot product, constant c = rescale), as the
    original's `rescale` releases computed it:
        Norm(z) = (z - mean(z)) / (std(z) + 1e-5)   over the head dim, UNBIASED std, no params
        Q, F, K, V <- Norm(Q), Norm(F), Norm(K), Norm(V)   all four, per token, before the sums
        w_t = exp(F_t . K_t * c / d)                |F_t . K_t| < d, so w_t <= e^c
        Kbar_t, Vbar_t = focus-weighted means of the NORMED K, V over the window of t
        a_t = sigmoid(Q_t . Kbar_t * c / d)         (Kbar_t is not normalised again)
    y_t = a_t Vbar_t  ->  merge heads  ->  W_o

Shapes: x [b, t, c] -> [b, t, c], c = h * d. It follows the mixer protocol of
seqlab.layers.block: `forward(x, ctx, state=None)` reads the padding mask (ctx.padding_mask,
[b, t], 1 = token) and the rotary tables (ctx.rotary, (cos, sin) [b or 1, 1, t, d]) from the
context. Without a state the parallel form runs (O(t) work); with the `LeapState` made by
`init_state` the call is the recurrent form and advances the state in place (O(1) per token:
global layers keep three running sums, windowed layers the last W entries). When ctx.maps is a
list, the parallel form appends its explainability maps {"attention": A [b, h, t, t],
"gate": a [b, t, h]}. An additive bias or boolean mask in the context (ctx.attn_bias /
ctx.attn_mask, softmax attention's) is refused: LEAP has no pairwise scores to apply it to.

Departures from the seed, on purpose: an output projection W_o (the seed had none); pads
(padding mask 0) get zero focus weight (the seed ignored the mask); window sums are
accumulated in fp32 without subtracting prefix sums (the seed lost all precision in bf16
at long t); optional rotary positions on Q, F and K (for "exp", applied after Norm: a rotation
keeps |Norm(z)|, so the bound on the logit and the relative gate both hold).
"""

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from seqlab.layers.block import Context
from seqlab.layers.rotary import apply_rotary
from seqlab.ops.leap import (
    LeapState,
    alibi_decay,
    dot_headdim,
    leap_attention_map,
    leap_gate_elu,
    leap_logit_elu,
    leap_recurrent_step,
    leap_state_init,
    leap_state_prefill,
    leap_window_sums,
    norm_headdim,
)

FOCUS = ("elu", "exp")


def seed_alias(name: str, value, seed_name: str, seed_value):
    """A size given under seqlab's name or the seed's (dim / hidden_size...); both must agree."""
    if seed_value is None:
        return value
    if value is not None and value != seed_value:
        raise ValueError(f"got both {name}={value!r} and its seed name {seed_name}={seed_value!r}; give one")
    return seed_value


def state_dtype(dtype: torch.dtype | None) -> torch.dtype:
    """The dtype of the recurrent sums: fp32 whatever the model's dtype (fp64 for fp64), as the
    parallel form accumulates them (a bf16 running sum would lose the window's small terms)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_no_pairwise_mask(ctx: Context, mixer: str) -> None:
    """A linear mixer has no pairwise scores to bias or mask: refuse them rather than ignore them."""
    if ctx.attn_bias is not None or ctx.attn_mask is not None:
        raise ValueError(
            f"the {mixer} mixer takes no attention bias or mask (it has no pairwise scores); only "
            "softmax attention reads ctx.attn_bias / ctx.attn_mask"
        )


def rotate_heads(x: Tensor, rotary: tuple[Tensor, Tensor]) -> Tensor:
    """Rotate x [b, t, h, d] by the context's tables (cos, sin) [b or 1, 1, t, d]."""
    cos, sin = (rearrange(table, "b one t d -> b t one d") for table in rotary)
    return apply_rotary(x, cos, sin)


class MultiheadLeap(nn.Module):
    """Multi-head LEAP attention.

    dim, num_heads (the seed's hidden_size, n_head): width c and heads h. window (the seed's
    window_size): W, or None / >= sequence length for a global layer. focus "elu" (default) or
    "exp" with `rescale` (the seed README's rescaled dot product). causal=False gives the
    bidirectional encoder form (symmetric window, no recurrence). decay=True weighs token j by
    gamma_h^(t-j) in the focus sums (the "decay" positions).
    """

    # `seqlab explain` draws the maps this mixer appends to ctx.maps.
    supports_focus_maps = True

    def __init__(
        self,
        dim: int | None = None,
        num_heads: int | None = None,
        window: int | None = None,
        dropout: float = 0.1,
        *,
        focus: str = "elu",
        rescale: float | None = None,
        causal: bool = True,
        decay: bool = False,
        eps: float = 1e-5,
        hidden_size: int | None = None,
        n_head: int | None = None,
        window_size: int | None = None,
    ):
        super().__init__()
        dim = seed_alias("dim", dim, "hidden_size", hidden_size)
        num_heads = seed_alias("num_heads", num_heads, "n_head", n_head)
        window = seed_alias("window", window, "window_size", window_size)
        if dim is None or num_heads is None:
            raise ValueError("MultiheadLeap needs dim (hidden_size) and num_heads (n_head)")
        if num_heads < 1 or dim % num_heads:
            raise ValueError(
                f"dim (hidden_size) {dim} must be divisible by num_heads (n_head) {num_heads} >= 1"
            )
        if focus not in FOCUS:
            raise ValueError(f"unknown focus {focus!r}; choose one of {FOCUS}")
        if focus == "exp" and rescale is None:
            raise ValueError("focus='exp' needs a rescale constant (the seed uses rescale=10)")
        if focus == "exp" and dim // num_heads < 2:
            raise ValueError(
                f"focus='exp' normalises each head by its unbiased std, which needs head dim >= 2; "
                f"got dim {dim} / num_heads {num_heads} = {dim // num_heads}: use fewer heads"
            )
        if window is not None and window < 1:
            raise ValueError(f"window (window_size) must be >= 1 or None (global), got {window}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window = window
        self.focus = focus
        self.rescale = rescale
        self.causal = causal
        self.eps = eps
        self.qfkv = nn.Linear(dim, 4 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)
        # "decay" positions: token j counts gamma_h^(t-j) in the focus sums of head h (fixed
        # ALiBi-like slopes), which keeps the O(1) recurrence and needs no position table.
        self.register_buffer("decay", alibi_decay(num_heads) if decay else None, persistent=False)

    def _project(self, x: Tensor, rotary: tuple[Tensor, Tensor] | None):
        q, f, k, v = rearrange(self.qfkv(x), "b t (four h d) -> four b t h d", four=4, h=self.num_heads)
        if self.focus == "exp":
            # Every stream is normalised per token and head, so the window sums average the
            # normed K and V (the original's rescale variant), in the parallel and recurrent
            # forms alike. Norm comes after dropout so that |F . K| < d holds while training.
            q, f, v = self.dropout(q), self.dropout(f), self.dropout(v)
            q, f, k, v = (
                norm_headdim(z.to(state_dtype(z.dtype)), correction=1).to(z.dtype) for z in (q, f, k, v)
            )
        if rotary is not None:
            # F and K are rotated alike, so the focus F_t . K_t (same position) is unchanged and
            # the gate Q_t . Kbar_t depends only on relative positions: shifting every position
            # by a constant (left padding) changes nothing.
            q, f, k = rotate_heads(q, rotary), rotate_heads(f, rotary), rotate_heads(k, rotary)
        if self.focus == "exp":
            return q, f, k, v
        return self.dropout(q), self.dropout(f), k, self.dropout(v)

    def _weights(self, f: Tensor, k: Tensor, padding_mask: Tensor | None) -> Tensor:
        if self.focus == "elu":
            w = F.elu(self.dropout(leap_logit_elu(f, k))) + 1
        else:
            w = torch.exp(self.dropout(dot_headdim(f, k) * (self.rescale / self.head_dim)))
        if padding_mask is not None:
            w = w * padding_mask.to(w.dtype).unsqueeze(-1)  # pads get zero focus
        return w  # [b, t, h], fp32

    def _gate(self, q: Tensor, kbar: Tensor) -> Tensor:
        if self.focus == "elu":
            return leap_gate_elu(q, kbar)
        # q is already normed (_project); Kbar, a mean of normed keys, is not normed again.
        return torch.sigmoid(dot_headdim(q, kbar) * (self.rescale / self.head_dim)).to(q.dtype)

    def forward(self, x: Tensor, ctx: Context | None = None, state: LeapState | None = None) -> Tensor:
        """x [b, t, c] -> [b, t, c]: the parallel form, or with `state` the recurrent one
        (which appends no maps: they come from the parallel form)."""
        ctx = ctx if ctx is not None else Context()
        check_no_pairwise_mask(ctx, "LEAP")
        q, f, k, v = self._project(x, ctx.rotary)
        w = self._weights(f, k, ctx.padding_mask)
        if state is not None:
            y = self._recurrent(q, w, k, v, state)
        else:
            kbar, vbar, _ = leap_window_sums(
                w, k, v, self.window, causal=self.causal, decay=self.decay, eps=self.eps
            )
            a = self._gate(q, kbar)  # [b, t, h]
            y = a.unsqueeze(-1) * vbar
            if ctx.maps is not None:
                attention = leap_attention_map(
                    w, self.window, causal=self.causal, decay=self.decay, eps=self.eps
                )
                ctx.maps.append({"attention": attention, "gate": a})
        return self.proj(rearrange(y, "b t h d -> b t (h d)"))

    def _recurrent(self, q: Tensor, w: Tensor, k: Tensor, v: Tensor, state: LeapState) -> Tensor:
        """Feed the tokens one by one through `state`: y [b, t, h, d], equal to the parallel form
        on the same tokens (fp32 round-off) at O(1) cost per token."""
        if not self.causal:
            raise RuntimeError("the bidirectional (encoder) LEAP layer has no recurrent form")
        if state.length == 0 and q.shape[1] > 1:
            # A prompt into an empty state: the parallel form gives its outputs, and the state
            # takes the whole chunk at once (no per-token loop).
            kbar, vbar, _ = leap_window_sums(w, k, v, self.window, decay=self.decay, eps=self.eps)
            leap_state_prefill(state, w, k, v)
            return self._gate(q, kbar).unsqueeze(-1) * vbar
        ys = []
        for i in range(q.shape[1]):
            kbar_i, vbar_i = leap_recurrent_step(state, w[:, i], k[:, i], v[:, i], self.eps)
            ys.append(self._gate(q[:, i], kbar_i).unsqueeze(-1) * vbar_i)
        return torch.stack(ys, dim=1)

    def init_state(
        self, batch_size: int, capacity: int | None = None, device=None, dtype: torch.dtype | None = None
    ) -> LeapState:
        """An empty recurrent state (capacity is ignored: the state does not grow with t)."""
        if not self.causal:
            raise RuntimeError("the bidirectional (encoder) LEAP layer has no recurrent form")
        return leap_state_init(
            batch_size,
            self.num_heads,
            self.head_dim,
            self.window,
            device,
            state_dtype(dtype),
            decay=self.decay,
        )


def head_dim_warning(dim: int, num_heads: int) -> str | None:
    """The seed's advice: LEAP heads work best with 32 <= head dim <= 128."""
    d = dim // num_heads
    if not 32 <= d <= 128:
        return (
            f"LEAP head dim is {d} (hidden_size {dim} / n_head {num_heads}); it is tuned for "
            f"32..128, change n_head for better results"
        )
    return None


__all__ = [
    "FOCUS",
    "MultiheadLeap",
    "check_no_pairwise_mask",
    "head_dim_warning",
    "rotate_heads",
    "seed_alias",
    "state_dtype",
]
