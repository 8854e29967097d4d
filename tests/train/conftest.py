"""Shared helpers for trainer tests: small, fast run configs on real text."""

import pytest

from seqlab.train.config import load_run_config


@pytest.fixture
def tiny_cfg(tmp_path):
    def make(*overrides, run_dir=None):
        base = [
            "model.preset=tiny",
            "train.batch_size=8",
            "train.max_iters=12",
            "train.eval_interval=4",
            "train.eval_iters=2",
            "train.log_interval=1",
            "train.warmup_iters=2",
            "train.progress=false",
            "train.sample_tokens=20",
            f"run_dir={run_dir or tmp_path / 'run'}",
        ]
        return load_run_config(overrides=base + list(overrides))

    return make
