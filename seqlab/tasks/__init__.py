"""Tasks: what a model is trained to do and how it is measured (see tasks/base.py)."""

from seqlab.tasks.lm import CausalLMTask

TASKS = {"lm": CausalLMTask}

__all__ = ["TASKS", "CausalLMTask"]
