"""Training: one explicit loop, optimizer and schedule, checkpoints, metrics, distributed setup."""

from seqlab.train.config import DataConfig, RunConfig, TrainConfig, load_run_config
from seqlab.train.loop import TrainResult, evaluate, train

__all__ = ["DataConfig", "RunConfig", "TrainConfig", "TrainResult", "evaluate", "load_run_config", "train"]
