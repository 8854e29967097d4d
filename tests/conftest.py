"""Test-wide settings.

Tests use tiny models, for which a second intra-op thread gains nothing and, on a 2-core
machine shared with other work, OpenMP thread contention can slow a step by 100x.
"""

import torch

torch.set_num_threads(1)


import pytest  # noqa: E402


def _assert_same_greedy(model, got: torch.Tensor, expected: torch.Tensor, tie: float = 1e-4) -> None:
    """Two greedy continuations [b, t] from different code paths (cached vs recomputed, another
    CPU) are equal, or part where a token was a near tie: at the first differing step, every
    row that differs has its top-2 logits within `tie` (fp32 round-off picks either branch).
    Anything else is a real difference."""
    assert got.shape == expected.shape
    if torch.equal(got, expected):
        return
    differs = got != expected  # [b, t]
    step = int(differs.any(0).nonzero()[0])
    rows = differs[:, step]
    with torch.no_grad():
        logits = model(expected[:, :step]).logits[:, -1].float()  # [b, v]
    top2 = logits.topk(2, dim=-1).values
    gap = (top2[:, 0] - top2[:, 1])[rows]
    assert (gap < tie).all(), f"greedy continuations differ at step {step}, not a tie (gaps {gap.tolist()})"


@pytest.fixture
def assert_same_greedy():
    return _assert_same_greedy


@pytest.fixture
def stop_at():
    """stop_at(N): a training callback that interrupts the run after step N, as Ctrl-C would
    (the trainer saves nothing for the step it was in), for resume tests."""
    from seqlab.train.callbacks import Callback

    class StopAt(Callback):
        name = "stop_at"

        def __init__(self, step):
            self.step = step

        def on_train_step(self, step, loss, model, optimizer):
            if step == self.step:
                raise KeyboardInterrupt

    return StopAt
