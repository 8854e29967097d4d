"""LEAP attention layer (Linear Explainable Attention in Parallel, seed 001: mtanghu/LEAP).

    [Q | F | K | V] = x W_qfkv                 one fused projection, split into h heads
    l_t = F_t . K_t / sqrt(d)  ("elu")   or   Norm(F_t) . Norm(K_t) * rescale / d  ("exp")
    w_t = elu(l_t) + 1         ("elu")   or   exp(l_t)                              ("exp")
    Kbar_t, Vbar_t = focus-weighted means of K, V over the window of t (seqlab.ops.leap)
    a_t = sigmoid(Q_t . Kbar_t / sqrt(d))  (or the rescaled exp form)
    y_t = a_t Vbar_t  ->  merge heads  ->  W_o

Shapes: x [b, t, c] -> [b, t, c], c = h * d. Training runs the parallel form (O(t) work);
decoding feeds one token at a time through a `LeapState` per layer (O(1) per token: global
layers keep three running sums, windowed layers the last W entries).

Departures from the seed, on purpose: an output projection W_o (the seed had none); pads
(attention_mask == 0) get zero focus weight (the seed ignored the mask); window sums are
accumulated in fp32 without subtracting prefix sums (the seed lost all precision in bf16
at long t); optional rotary positions on Q and K.
"""

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from seqlab.layers.rotary import RotaryEmbedding
from seqlab.ops.leap import (
    LeapState,
    alibi_decay,
    leap_attention_map,
    leap_gate_elu,
    leap_gate_exp,
    leap_logit_elu,
    leap_logit_exp,
    leap_recurrent_step,
    leap_state_init,
    leap_state_prefill,
    leap_window_sums,
)

FOCUS = ("elu", "exp")


class MultiheadLeap(nn.Module):
    """Multi-head LEAP attention.

    hidden_size, n_head: width c and heads h (the seed's names). window_size: W, or None /
    >= sequence length for a global layer. focus "elu" (default) or "exp" with `rescale`
    (the seed README's rescaled dot product). causal=False gives the bidirectional encoder
    form (symmetric window, no recurrence). decay=True weighs token j by gamma_h^(t-j) in the
    focus sums (the "decay" position option).
    """

    def __init__(
        self,
        hidden_size: int,
        n_head: int,
        window_size: int | None = None,
        dropout: float = 0.1,
        focus: str = "elu",
        rescale: float | None = None,
        causal: bool = True,
        decay: bool = False,
        eps: float = 1e-5,
    ):
        super().__init__()
        if hidden_size % n_head:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by n_head {n_head}")
        if focus not in FOCUS:
            raise ValueError(f"unknown focus {focus!r}; choose one of {FOCUS}")
        if focus == "exp" and rescale is None:
            raise ValueError("focus='exp' needs a rescale constant (the seed uses rescale=10)")
        if window_size is not None and window_size < 1:
            raise ValueError(f"window_size must be >= 1 or None (global), got {window_size}")
        self.num_heads = n_head
        self.head_dim = hidden_size // n_head
        self.window = window_size
        self.focus = focus
        self.rescale = rescale
        self.causal = causal
        self.eps = eps
        self.qfkv = nn.Linear(hidden_size, 4 * hidden_size, bias=False)
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        # "decay" positions: token j counts gamma_h^(t-j) in the focus sums of head h (fixed
        # ALiBi-like slopes), which keeps the O(1) recurrence and needs no position table.
        self.register_buffer("decay", alibi_decay(n_head) if decay else None, persistent=False)

    def _project(self, x: torch.Tensor, rotary: RotaryEmbedding | None, offset: int):
        q, f, k, v = rearrange(self.qfkv(x), "b t (four h d) -> four b t h d", four=4, h=self.num_heads)
        if rotary is not None:
            # F and K are rotated alike, so the focus F_t . K_t (same position) is unchanged and
            # the gate Q_t . Kbar_t depends only on relative positions: shifting every position
            # by a constant (left padding) changes nothing.
            q, k = (r.transpose(1, 2) for r in rotary(q.transpose(1, 2), k.transpose(1, 2), offset))
            f, _ = rotary(f.transpose(1, 2), f.transpose(1, 2), offset)
            f = f.transpose(1, 2)
        return self.dropout(q), self.dropout(f), k, self.dropout(v)

    def _weights(self, f, k, attention_mask):
        if self.focus == "elu":
            w = F.elu(self.dropout(leap_logit_elu(f, k))) + 1
        else:
            w = torch.exp(self.dropout(leap_logit_exp(f, k, self.rescale)))
        if attention_mask is not None:
            w = w * attention_mask.to(w.dtype).unsqueeze(-1)  # pads get zero focus
        return w  # [b, t, h], fp32

    def _gate(self, q, kbar):
        return leap_gate_elu(q, kbar) if self.focus == "elu" else leap_gate_exp(q, kbar, self.rescale)

    def forward(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        rotary: RotaryEmbedding | None = None,
        return_maps: bool = False,
    ):
        """Parallel form. Returns out [b, t, c], or (out, maps) with maps = {"attention":
        A [b, h, t, t] (implicit attention, rows = focus distribution), "gate": a [b, t, h]}."""
        q, f, k, v = self._project(x, rotary, 0)
        w = self._weights(f, k, attention_mask)
        kbar, vbar, _ = leap_window_sums(
            w, k, v, self.window, causal=self.causal, decay=self.decay, eps=self.eps
        )
        a = self._gate(q, kbar)  # [b, t, h]
        y = a.unsqueeze(-1) * vbar
        out = self.proj(rearrange(y, "b t h d -> b t (h d)"))
        if not return_maps:
            return out
        attention = leap_attention_map(w, self.window, causal=self.causal, decay=self.decay, eps=self.eps)
        maps = {"attention": attention, "gate": a}
        return out, maps

    def init_state(self, batch_size: int, device=None) -> LeapState:
        if not self.causal:
            raise RuntimeError("the bidirectional (encoder) LEAP layer has no recurrent form")
        return leap_state_init(
            batch_size, self.num_heads, self.head_dim, self.window, device, decay=self.decay
        )

    def step(
        self,
        x: torch.Tensor,
        state: LeapState,
        attention_mask: torch.Tensor | None = None,
        rotary: RotaryEmbedding | None = None,
    ) -> torch.Tensor:
        """Recurrent form: feed tokens x [b, t, c] one by one through `state`; returns [b, t, c].

        Equals the parallel form on the same tokens (fp32 round-off), at O(1) cost per token.
        """
        q, f, k, v = self._project(x, rotary, state.count)
        w = self._weights(f, k, attention_mask)
        if state.count == 0 and x.shape[1] > 1:
            # A prompt into an empty state: the parallel form gives its outputs, and the state
            # takes the whole chunk at once (no per-token loop).
            kbar, vbar, _ = leap_window_sums(w, k, v, self.window, decay=self.decay, eps=self.eps)
            leap_state_prefill(state, w, k, v)
            y = self._gate(q, kbar).unsqueeze(-1) * vbar
        else:
            ys = []
            for i in range(x.shape[1]):
                kbar_i, vbar_i = leap_recurrent_step(state, w[:, i], k[:, i], v[:, i], self.eps)
                ys.append(self._gate(q[:, i], kbar_i).unsqueeze(-1) * vbar_i)
            y = torch.stack(ys, dim=1)  # [b, t, h, d]
        return self.proj(rearrange(y, "b t h d -> b t (h d)"))


def head_dim_warning(hidden_size: int, n_head: int) -> str | None:
    """The seed's advice: LEAP heads work best with 32 <= head dim <= 128."""
    d = hidden_size // n_head
    if not 32 <= d <= 128:
        return (
            f"LEAP head dim is {d} (hidden_size {hidden_size} / n_head {n_head}); it is tuned for "
            f"32..128, change n_head for better results"
        )
    return None


__all__ = ["FOCUS", "MultiheadLeap", "head_dim_warning"]
