"""The task interface: what a model is trained to do and how it is measured.

A task turns data into batches, computes the loss (primary + the model's auxiliary losses)
and metrics from the model output, and makes samples. The trainer only talks to this
interface, so a new task (forecasting, 2D grids, seq2seq) needs no trainer change.
"""

from typing import Any, Protocol

import torch


class Task(Protocol):
    name: str
    primary_loss_key: str  # key of the primary loss (without aux terms) in loss()'s metrics

    def batch(self, split: str, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """A batch drawn with `generator` (CPU tensors; the trainer moves and shards them)."""

    def loss(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """(total loss to backpropagate, metrics to log: primary loss, aux terms, model metrics)."""

    def eval_summary(self, mean_loss: float) -> dict[str, float]:
        """Derived metrics for a mean validation loss (bits per char, perplexity, ...)."""

    def sample(self, model: torch.nn.Module, **kwargs) -> str:
        """A human-readable sample of the model's behaviour (generated text, a forecast)."""

    def state_dict(self) -> dict[str, Any]:
        """What must be saved with a run to rebuild the task (e.g. the tokenizer)."""
