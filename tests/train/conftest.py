"""Shared helpers for trainer tests: small, fast run configs on real text; torchrun."""

import os
import subprocess
import sys

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


# Two CPU processes under torchrun, one thread each (the machine has 2 cores).
TORCHRUN = [
    sys.executable,
    "-m",
    "torch.distributed.run",
    "--standalone",
    "--nproc_per_node=2",
    "-m",
    "seqlab",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture
def torchrun():
    """torchrun(*seqlab_args): `seqlab ARGS` in 2 processes; fails the test on a non-zero exit."""

    def run(*args):
        subprocess.run([*TORCHRUN, *args], check=True, env=ENV, timeout=300)

    return run


@pytest.fixture
def seqlab_env():
    return ENV
