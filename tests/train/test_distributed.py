"""torchrun: 2 CPU processes (gloo) reproduce the single-process losses at the same global batch."""

import os
import subprocess
import sys

import pytest

from seqlab.train.metrics import read_metrics

ARGS = [
    "train",
    "--preset",
    "tiny",
    "--max-iters",
    "6",
    "--batch-size",
    "8",
    "--no-progress",
    "--set",
    "train.eval_interval=3",
    "train.eval_iters=2",
    "train.log_interval=1",
    "train.warmup_iters=1",
    "train.sample_tokens=0",
]


TORCHRUN = [
    sys.executable,
    "-m",
    "torch.distributed.run",
    "--standalone",
    "--nproc_per_node=2",
    "-m",
    "seqlab",
]


def _losses(run):
    return [r["loss"] for r in read_metrics(run / "metrics.jsonl") if r["split"] == "train"]


@pytest.mark.skipif(sys.platform == "win32", reason="gloo process groups need Linux or macOS")
def test_two_process_ddp_matches_single_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    subprocess.run([sys.executable, "-m", "seqlab", *ARGS, "--run-dir", str(single)], check=True, env=env)
    subprocess.run([*TORCHRUN, *ARGS, "--run-dir", str(ddp)], check=True, env=env, timeout=300)
    a, b = _losses(single), _losses(ddp)
    assert len(a) == len(b) == 6
    for x, y in zip(a, b):
        assert abs(x - y) <= 1e-4 * abs(x), (a, b)
    # Only rank 0 writes: one metrics file, one checkpoint tree, no duplicate records.
    steps = [r["step"] for r in read_metrics(ddp / "metrics.jsonl") if r["split"] == "train"]
    assert steps == sorted(set(steps))


def test_two_process_resume_with_dropout_reproduces_the_uninterrupted_run(tmp_path):
    # Every rank's dropout RNG is saved at an evaluation checkpoint, so a resumed DDP run with
    # dropout matches the uninterrupted one.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    full_args = [*ARGS, "model.dropout=0.2", "train.lr_decay_iters=6"]
    first_args = [
        ("3" if a == "6" and full_args[i - 1] == "--max-iters" else a) for i, a in enumerate(full_args)
    ]
    full, cut = tmp_path / "full", tmp_path / "cut"
    subprocess.run([*TORCHRUN, *full_args, "--run-dir", str(full)], check=True, env=env, timeout=300)
    subprocess.run([*TORCHRUN, *first_args, "--run-dir", str(cut)], check=True, env=env, timeout=300)
    resume = ["train", "--resume", str(cut), "--no-progress", "--set", "train.max_iters=6"]
    subprocess.run([*TORCHRUN, *resume], check=True, env=env, timeout=300)
    assert len(_losses(full)) == 6
    assert _losses(full) == _losses(cut)
