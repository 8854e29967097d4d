"""The task interface: what a model is trained to do and how it is measured.

A task builds itself from the run config and its own saved state, declares what it needs of
the model, turns data into batches, computes the loss (primary + the model's auxiliary losses)
and metrics from the model output, counts a batch's tokens and makes its own samples. The
trainer, `seqlab eval`, `seqlab generate` and `seqlab bench` talk only to this interface (every
method is abstract: there are no optional ones to probe for), so a new task (2D grids, seq2seq)
needs no trainer change. Register it in seqlab/tasks/__init__.py (TASKS).

Building a task, in the order the trainer runs it:

    model_config = the model section of the run config (name, preset, overrides)
    task = Task.from_config(run_config, model_config, state)    # state: task.json["state"] or None
    model config = model section + task.model_requirements()      # e.g. vocab_size, num_features

The context (how many positions a training example holds) is decided by the task, through one
hook: `sequence_context(model_config, options.context)`. A sequence task's `context` option
(`--set task_options.context=N`) wins; without it the task trains at the context the model
config declares, its `max_seq_len`. A model config that declares no max_seq_len needs the
option, and a context longer than the model's max_seq_len is an error naming both keys. Tasks
over other shapes (2D grids, source/target pairs) read their own sizes from the model config
the same way, in their from_config.

Options: each task declares its `task_options` as a dataclass (`Options`) whose __post_init__
checks the values; unknown keys and wrong types are ConfigErrors naming the key.

Saved state: `state_dict()` is what a run directory records about the task (task.json =
{"task": name, "state": state_dict()}), e.g. the tokenizer, so eval, generate and --resume
rebuild exactly the same task.
"""

import abc
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from seqlab.config import from_dict
from seqlab.errors import ConfigError


@dataclass(frozen=True)
class AtLeast:
    """A model requirement that is a lower bound: the model config takes `value` unless the
    run config sets the key to something larger (e.g. a vocabulary padded past the tokenizer's)."""

    value: int


def check_context(value: int | None, key: str = "task_options.context") -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"{key}={value!r} must be a positive int (positions per example) or null")


def sequence_context(model_config, context: int | None) -> int:
    """The context a sequence task trains at: `context` (the task option) when given, else the
    model config's declared max_seq_len; never more than the model's max_seq_len."""
    fields = {f.name for f in dataclasses.fields(model_config)}
    declared = model_config.max_seq_len if "max_seq_len" in fields else None
    if context is None:
        if declared is None:
            raise ConfigError(
                f"{type(model_config).__name__} declares no max_seq_len, so the task cannot know its "
                "context: set task_options.context=N"
            )
        return declared
    check_context(context)
    if declared is not None and context > declared:
        raise ConfigError(
            f"task_options.context={context} is longer than the model's max_seq_len={declared}; "
            f"lower the context or raise model.max_seq_len"
        )
    return context


def reject_unknown_sample_options(task: str, options: dict[str, Any], accepted) -> None:
    unknown = sorted(k for k in options if k not in accepted)
    if unknown:
        takes = f"they take: {', '.join(accepted)}" if accepted else "they take no options"
        raise ConfigError(f"the {task} task's samples take no {', '.join(unknown)}; {takes}")


def detach_metrics(out_metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in out_metrics.items()}


class Task(abc.ABC):
    name: str  # the key in TASKS (and in task.json)
    primary_loss_key: str  # key of the primary loss (without aux terms) in loss()'s metrics

    @dataclass
    class Options:
        """The task's task_options (none by default); a subclass defines its own."""

    @classmethod
    def parse_options(cls, task_options: dict[str, Any]):
        """task_options as the task's Options: unknown keys, wrong types and bad values raise
        ConfigError naming the key."""
        return from_dict(cls.Options, dict(task_options), where=f"task_options of task {cls.name!r}")

    @classmethod
    @abc.abstractmethod
    def from_config(cls, cfg, model_config, state: dict[str, Any] | None = None) -> "Task":
        """Build from the run config (data.*, task_options, train.sample_*), the model config of
        the run's model section (before model_requirements() are applied) and, when reopening
        a run, the state this task saved (task.json["state"])."""

    @abc.abstractmethod
    def model_requirements(self) -> dict[str, Any]:
        """Values the model config must take (exact), or AtLeast(n) lower bounds."""

    @abc.abstractmethod
    def batch(self, split: str, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """A batch drawn with `generator` (CPU tensors; the trainer moves and shards them by row)."""

    @abc.abstractmethod
    def loss(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """(total loss to backpropagate, metrics to log: primary loss, aux terms, model metrics)."""

    @abc.abstractmethod
    def count_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """How many tokens (positions the model reads) a batch holds, for throughput."""

    @abc.abstractmethod
    def eval_summary(self, mean_loss: float) -> dict[str, float]:
        """Derived metrics for a mean validation loss (bits per token, perplexity, ...)."""

    @abc.abstractmethod
    def decode_metrics(self, model: torch.nn.Module, split: str, limit: int) -> dict[str, float]:
        """Metrics that need the model to decode, not just a loss (seq2seq PER/WER greedy and beam,
        grid exact-match), over the first `limit` examples of `split` (a fixed set, the same at
        every evaluation); {} for a task that has none. Called by evaluate() after the loss, with
        limit = train.eval_decode (0 = skip)."""

    @abc.abstractmethod
    def sample(self, model: torch.nn.Module, run_dir: Path | None = None, **options) -> str:
        """A human-readable sample of the model's behaviour (generated text, a forecast table).

        Options default to the run config's (train.sample_tokens, train.sample_prompt,
        train.seed); an option the task does not take is a ConfigError. With `run_dir` the
        task may also write files there (e.g. a PNG); the returned text goes to samples.txt.
        """

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """What must be saved with a run to rebuild the task (e.g. the tokenizer); JSON-able."""


__all__ = [
    "AtLeast",
    "Task",
    "check_context",
    "detach_metrics",
    "reject_unknown_sample_options",
    "sequence_context",
]
