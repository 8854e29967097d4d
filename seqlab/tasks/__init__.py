"""Tasks: what a model is trained to do and how it is measured (see tasks/base.py)."""

from seqlab.tasks.forecast import ForecastTask
from seqlab.tasks.lm import CausalLMTask

TASKS = {"lm": CausalLMTask, "forecast": ForecastTask}

__all__ = ["TASKS", "CausalLMTask", "ForecastTask"]
