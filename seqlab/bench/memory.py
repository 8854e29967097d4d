"""Peak memory of a block of code: CUDA allocator peak, or peak RSS on Linux CPU.

    with PeakMemory(device) as mem:
        build the model and optimizer, run a few training steps
    mem.peak_bytes  # peak during the block minus what was in use before it (None if unknown)

CUDA: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats` (tensors only, not
the allocator's cached blocks or the CUDA context). Linux CPU: the kernel's resident-set
high-water mark (VmHWM in /proc/self/status), reset by writing "5" to /proc/self/clear_refs,
minus the RSS before the block. RSS counts everything the process touches (allocator slack,
libraries loaded during the block), so it is an upper bound on the tensors' memory, and
memory that malloc kept from earlier work can be reused without raising RSS; `malloc_trim`
hands that back to the kernel first, so consecutive cases start from the same footing.
Elsewhere (macOS, Windows) the peak is None.
"""

import contextlib
import ctypes
import gc
from pathlib import Path

import torch

CUDA_METHOD = "torch.cuda.max_memory_allocated minus allocated before"
RSS_METHOD = "peak RSS (VmHWM after clear_refs) minus RSS before"


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} not found in /proc/self/status")


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.peak_bytes: int | None = None
        self.method: str | None = None
        self._before = 0

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._before = torch.cuda.memory_allocated(self.device)
            self.method = CUDA_METHOD
        elif self.device.type == "cpu":
            _malloc_trim()
            try:
                Path("/proc/self/clear_refs").write_text("5")
                self._before = _status_kb("VmRSS") * 1024
                self.method = RSS_METHOD
            except OSError:
                self.method = None
        return self

    def __exit__(self, *exc) -> None:
        if self.method == CUDA_METHOD:
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._before
        elif self.method == RSS_METHOD:
            self.peak_bytes = _status_kb("VmHWM") * 1024 - self._before
