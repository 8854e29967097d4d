"""Measured matmul peak FLOP/s: the denominator of model FLOPs utilization (MFU).

Datasheet peaks are unknown for most CPUs (they depend on the SKU, the vector units, AMX and
the clock under load) and optimistic for GPUs, so MFU here is measured against what this
process can actually get from torch's matmul: the best of a few timed n x n matmuls in the
benchmarked dtype, after warmup, with the current thread count. A model at MFU 1.0 would
run all its FLOPs as fast as a large square matmul does.
"""

import functools
import time

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def default_sizes(device: torch.device) -> tuple[int, ...]:
    # Large enough to saturate the units, small enough to time in about a second; on CPU the
    # smaller size often wins because it stays in cache, so both are tried.
    return (4096, 8192) if device.type == "cuda" else (1024, 2048)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); a no-op on CPU. Every bench timer calls it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# A CPU without native bf16 units emulates bf16 matmuls: a 2048^3 one took 59 s (AMD EPYC,
# 1 thread, torch 2.13; 0.43 s in fp32). Sizes grow only while one matmul stays under this.
SLOW_MATMUL_S = 0.5


def _timed_matmul(a: torch.Tensor, b: torch.Tensor, device: torch.device) -> float:
    start = time.perf_counter()
    a @ b
    sync(device)
    return time.perf_counter() - start


@functools.cache
def _measure(dtype: torch.dtype, device: torch.device, sizes: tuple[int, ...], repeats: int, threads: int):
    best = 0.0
    probe = 256  # a first small matmul says whether the big ones are affordable
    for n in (probe, *sizes):
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        first = _timed_matmul(a, b, device)  # also the warmup
        if first > SLOW_MATMUL_S:
            best = max(best, 2 * n**3 / first)
            break
        for _ in range(repeats):
            best = max(best, 2 * n**3 / _timed_matmul(a, b, device))
        if n != probe and first * 8 > SLOW_MATMUL_S * repeats:
            break  # the next size (2x: 8x the work) would take too long
    return best


def matmul_peak_flops(
    dtype: str | torch.dtype,
    device: str | torch.device = "cpu",
    sizes: tuple[int, ...] | None = None,
    repeats: int = 5,
) -> float:
    """Best measured FLOP/s of an n x n @ n x n matmul in `dtype` (cached per process and thread count)."""
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    device = torch.device(device)
    sizes = tuple(sizes or default_sizes(device))
    return _measure(dtype, device, sizes, repeats, torch.get_num_threads())
