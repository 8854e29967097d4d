"""Training FLOPs per step, counted by torch rather than by a per-architecture formula.

`torch.utils.flop_counter.FlopCounterMode` intercepts every aten op of one forward + backward
and adds up the matmuls (mm, addmm, bmm, baddbmm) and attention kernels, so the count is right
for any architecture: a 6 * params * tokens rule would be wrong for MoE routing, weight
tying, recurrent scans and attention over long contexts. Elementwise ops, norms, softmax and
the optimizer are not counted, as in the usual MFU definition (PaLM, appendix B).

Attention is counted as full (non-causal) attention, torch's own convention for its SDPA
formulas. torch registers no formula for the CPU flash-attention kernel, so this module adds
one (the same formula as for the CUDA kernels); without it attention would count as zero on CPU.
"""

import contextlib
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

aten = torch.ops.aten


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flop(
    grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs
):
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


CPU_SDPA_FORMULAS = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flop,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flop,
}


def count_flops(fn: Callable[[], object]) -> int:
    """Total FLOPs of the matmul-like ops that `fn()` runs (forward and any backward inside it)."""
    with FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FORMULAS) as counter:
        fn()
    return counter.get_total_flops()


def training_flops(
    model: torch.nn.Module,
    loss_fn: Callable,
    batch: dict[str, torch.Tensor],
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> int:
    """FLOPs of one forward + backward of `loss_fn(model, batch) -> (loss, metrics)` on `batch`.

    The model's gradients are cleared afterwards, so a later training step starts clean.
    """

    def step():
        with autocast():
            loss, _ = loss_fn(model, batch)
        loss.backward()

    flops = count_flops(step)
    model.zero_grad(set_to_none=True)
    return flops
