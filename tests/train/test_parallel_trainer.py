"""`seqlab train --parallel fsdp` under torchrun: the trainer's FSDP path (2 CPU processes, gloo)
trains like one process at the same global batch, writes a full checkpoint one process can
load, and resumes exactly. (DDP's trainer path: test_distributed.py.)"""

import subprocess
import sys

import pytest
import torch

from seqlab.train import checkpoint as ckpt
from seqlab.train.metrics import losses
from seqlab.train.runs import load_run

COMMON = [
    "--preset",
    "tiny",
    "--batch-size",
    "8",
    "--no-progress",
    "--set",
    "train.grad_accum=2",
    "train.lr_decay_iters=6",
    "train.eval_interval=3",
    "train.eval_iters=2",
    "train.log_interval=1",
    "train.warmup_iters=1",
    "train.sample_tokens=4",
]

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="gloo process groups need Linux or macOS")


def _losses(run):
    return list(losses(run).values())


def test_fsdp_trains_like_one_process_and_resumes_exactly(tmp_path, torchrun, seqlab_env):
    single, fsdp, cut = tmp_path / "single", tmp_path / "fsdp", tmp_path / "cut"
    subprocess.run(
        [sys.executable, "-m", "seqlab", "train", "--max-iters", "6", "--run-dir", str(single), *COMMON],
        check=True,
        env=seqlab_env,
    )
    torchrun("train", "--max-iters", "6", "--run-dir", str(fsdp), "--parallel", "fsdp", *COMMON)
    torchrun("train", "--max-iters", "3", "--run-dir", str(cut), "--parallel", "fsdp", *COMMON)
    torchrun("train", "--resume", str(cut), "--no-progress", "--set", "train.max_iters=6")
    a, b = _losses(single), _losses(fsdp)
    assert len(a) == len(b) == 6
    # The same global batch and initial weights; only the reduction order differs.
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=1e-5, atol=1e-5)
    assert _losses(cut) == b  # resuming is the same computation as not stopping
    assert (fsdp / "samples.txt").read_text().count("--- step 6 ---") == 1  # rank 0 writes
    # The checkpoint is the full model: one process loads it and gets the trainer's val loss.
    model, task, cfg, meta = load_run(fsdp, "latest")
    assert meta["step"] == 6 and ckpt.read_meta(ckpt.find_checkpoint(fsdp))["format"] == 2
    assert model.head.weight is model.embed.weight
