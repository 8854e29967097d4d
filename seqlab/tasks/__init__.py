"""Tasks: what a model is trained to do and how it is measured (see tasks/base.py)."""

from seqlab.tasks.forecast import ForecastTask
from seqlab.tasks.grid import Grid2GridTask, GridTask, resolve_task
from seqlab.tasks.lm import CausalLMTask
from seqlab.tasks.seq2seq import Seq2SeqTask

TASKS = {
    "lm": CausalLMTask,
    "forecast": ForecastTask,
    "seq2seq": Seq2SeqTask,
    "grid": GridTask,
    "grid2grid": Grid2GridTask,
}

__all__ = [
    "TASKS",
    "CausalLMTask",
    "ForecastTask",
    "Grid2GridTask",
    "GridTask",
    "Seq2SeqTask",
    "resolve_task",
]
