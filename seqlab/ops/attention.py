"""Scaled dot-product attention with every mask seqlab uses: a readable reference and SDPA.

    A = softmax(q k^T / sqrt(d) + bias, masked where a key is not allowed) v

q [b, h, t_q, d], k and v [b, h, t_k, d] -> [b, h, t_q, d]. Queries sit at the last t_q of the
t_k key positions (a decoding step, or a prefill after cached tokens, is the end of the
sequence; queries and keys coincide when t_q == t_k). A key is allowed when every given mask
allows it:

    causal                    key position <= query position
    window (causal)           query - key < window: the last `window` keys, itself included
    window (bidirectional)    |query - key| <= window // 2
    key_mask [b, t_k]         True = a real key, False = padding
    mask [b|1, h|1, t_q, t_k] True = may attend (2D neighbourhoods, any other structure)
    bias [b|1, h|1, t_q, t_k] added to the scores (T5 relative position bias); keep it finite

`scale` multiplies q k^T in place of 1 / sqrt(d) (None = 1 / sqrt(d)); T5 uses 1.0 because
its initialization folds the 1 / sqrt(d) into the query weights.

A query that may see no key at all (a left pad before the first real token, an empty source
sequence) gets output 0 and zero gradients, never NaN: its row is unmasked for the softmax,
then multiplied by 0.

impl="eager" is the reference: the formula above in fp32, in plain tensor ops.
impl="sdpa" is `F.scaled_dot_product_attention` with the masks folded into one boolean or
additive mask, and `is_causal=True` (no mask tensor at all) when only causality applies.
Tests compare the two on outputs and gradients for every mask form.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor

IMPLS = ("sdpa", "eager")


def position_mask(
    t_q: int, t_k: int, *, causal: bool, window: int | None, device: torch.device | str | None = None
) -> Tensor | None:
    """Boolean [t_q, t_k] (True = may attend) from causality and the window, or None when
    every query may see every key. Queries are the last t_q of the t_k positions."""
    if not causal and window is None:
        return None
    # Every key visible without a mask: one causal query whose window reaches the first key,
    # or a bidirectional window wider than the whole sequence.
    if causal and t_q == 1 and (window is None or t_k <= window):
        return None
    if not causal and t_k - 1 <= window // 2:
        return None
    q_pos = torch.arange(t_k - t_q, t_k, device=device)[:, None]
    k_pos = torch.arange(t_k, device=device)[None, :]
    if not causal:
        return (q_pos - k_pos).abs() <= window // 2
    allowed = k_pos <= q_pos
    if window is not None:
        allowed &= q_pos - k_pos < window
    return allowed


def attention_eager(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    allowed: Tensor | None = None,
    bias: Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> Tensor:
    """The reference: softmax(scale q k^T + bias) v in fp32 (scale None = 1 / sqrt(d)), keys
    where `allowed` is False excluded. Every row of `allowed` must allow at least one key."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.einsum("bhid,bhjd->bhij", q.float(), k.float()) * scale
    if bias is not None:
        scores = scores + bias.float()
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    probs = scores.softmax(dim=-1)
    if dropout_p > 0:
        probs = F.dropout(probs, dropout_p)
    return torch.einsum("bhij,bhjd->bhid", probs, v.float()).to(q.dtype)


def _sdpa(q, k, v, allowed, bias, dropout_p, is_causal, scale=None):
    attn_mask = allowed
    if bias is not None:
        attn_mask = bias.to(q.dtype)
        if allowed is not None:
            attn_mask = attn_mask.masked_fill(~allowed, float("-inf"))
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale
    )


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    window: int | None = None,
    key_mask: Tensor | None = None,
    mask: Tensor | None = None,
    bias: Tensor | None = None,
    dropout_p: float = 0.0,
    impl: str = "sdpa",
    scale: float | None = None,
) -> Tensor:
    """Attention of q [b, h, t_q, d] over k, v [b, h, t_k, d] under the masks of the module
    docstring; returns [b, h, t_q, d] in q's dtype."""
    if impl not in IMPLS:
        raise ValueError(f"unknown attention impl {impl!r}; choose one of {IMPLS}")
    t_q, t_k = q.shape[-2], k.shape[-2]
    # SDPA's own causal mask is aligned top-left, so it is right only when queries == keys.
    is_causal = (
        impl == "sdpa"
        and causal
        and window is None
        and t_q == t_k
        and t_q > 1
        and key_mask is None
        and mask is None
        and bias is None
    )
    allowed = None if is_causal else position_mask(t_q, t_k, causal=causal, window=window, device=q.device)
    if key_mask is not None:
        keys = key_mask.bool()[:, None, None, :]  # [b, 1, 1, t_k]
        allowed = keys if allowed is None else allowed & keys
    if mask is not None:
        allowed = mask if allowed is None else allowed & mask
    visible = None
    if key_mask is not None or mask is not None:
        # Causality and windows always leave a query its own key; padding and free-form masks
        # may leave it none. Unmask such rows (no -inf-only softmax, so no NaN in the forward
        # or the backward) and zero their output below.
        visible = allowed.any(dim=-1, keepdim=True)  # [b|1, h|1, t_q, 1]
        allowed = allowed | ~visible

    low_precision = q.dtype in (torch.bfloat16, torch.float16) or torch.is_autocast_enabled("cpu")
    if q.device.type == "cpu" and low_precision:
        # torch's CPU flash-attention kernel is ~5x slower forward + backward in bf16 than in
        # fp32 (measured: b=12, h=4, t=64, d=32, torch 2.13), so on CPU attention runs in fp32
        # (autocast would cast it back down) while the projections stay in low precision.
        with torch.autocast("cpu", enabled=False):
            if impl == "eager":
                out = attention_eager(q, k, v, allowed, bias, dropout_p, scale)
            else:
                out = _sdpa(
                    q.float(),
                    k.float(),
                    v.float(),
                    allowed,
                    None if bias is None else bias.float(),
                    dropout_p,
                    is_causal,
                    scale,
                )
        out = out.to(q.dtype)
    elif impl == "eager":
        out = attention_eager(q, k, v, allowed, bias, dropout_p, scale)
    else:
        out = _sdpa(q, k, v, allowed, bias, dropout_p, is_causal, scale)
    if visible is not None:
        out = out * visible
    return out


__all__ = ["IMPLS", "attention", "attention_eager", "position_mask"]
