"""Fault injection: a real `seqlab train` killed with SIGKILL at random moments always resumes,
and ends with exactly the losses of an uninterrupted run.

SIGKILL gives the process no chance to save or clean up, so this checks what the checkpoint
format promises: a checkpoint directory is written under a temporary name and renamed when
complete, the pointers are replaced atomically, the run lock dies with its process, and a
resume replays the same computation (bitwise equal losses: the same code on the same machine).
One of the kills lands while a checkpoint is being written (right after its temporary folder
appears). Slow (several processes, each importing torch): run with `-m slow`.
"""

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from seqlab.train import checkpoint as ckpt
from seqlab.train.metrics import losses

MAX_ITERS = 60
COMMON = [
    "--no-progress",
    "--set",
    f"train.max_iters={MAX_ITERS}",
    "train.checkpoint_interval=2",
    "train.eval_interval=20",
    "train.eval_iters=1",
    "train.log_interval=1",
    "train.sample_tokens=0",
]
NEW = ["--model", "gpt", "--preset", "tiny", "--batch-size", "4", "--seed", "3"]
# One thread: the same reduction order in every process.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _start(cwd, args):
    return subprocess.Popen(
        [sys.executable, "-m", "seqlab.cli.main", "train", *args, *COMMON],
        cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _latest(run):
    pointer = run / "checkpoints" / "latest"
    return pointer.read_text().strip() if pointer.is_file() else None


def _temp_folders(run):
    root = run / "checkpoints"
    return [d.name for d in root.iterdir() if d.name.startswith(".tmp_")] if root.is_dir() else []


def _losses(run):
    return losses(run), losses(run, "val")


def _kill_after_progress(proc, run, wait_s, during_write, deadline):
    """SIGKILL `proc` once it has written a checkpoint of its own: `wait_s` later, or (with
    `during_write`) as soon as the next checkpoint's temporary folder appears. Returns what
    happened: "exited", "killed" or "killed mid-write" (the temporary folder survived)."""
    start = _latest(run)
    while _latest(run) == start:
        if proc.poll() is not None:
            return "exited"
        assert time.time() < deadline, "the run made no progress"
        time.sleep(0.01)
    if during_write:
        seen = set(_temp_folders(run))  # leftovers of an earlier kill
        while not set(_temp_folders(run)) - seen:
            if proc.poll() is not None:
                return "exited"
            assert time.time() < deadline, "no checkpoint write seen"
    else:
        time.sleep(wait_s)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if proc.returncode == 0:
        return "exited"
    return "killed mid-write" if during_write and _temp_folders(run) else "killed"


@pytest.mark.slow
def test_sigkill_at_random_moments_resumes_to_the_uninterrupted_losses(tmp_path):
    ref = tmp_path / "ref"
    done = subprocess.run(
        [sys.executable, "-m", "seqlab.cli.main", "train", *NEW, "--run-dir", str(ref), *COMMON],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr

    run = tmp_path / "run"
    rng = random.Random(8)
    deadline = time.time() + 240
    events = []
    proc = _start(tmp_path, [*NEW, "--run-dir", str(run)])
    # Two kills while a checkpoint is being written, three at random moments, shuffled.
    plan = [True, True, False, False, False]
    rng.shuffle(plan)
    for during_write in plan:
        event = _kill_after_progress(proc, run, rng.uniform(0.0, 1.5), during_write, deadline)
        events.append(event)
        if event == "exited":
            break
        assert _latest(run) is not None
        proc = _start(tmp_path, ["--resume", str(run)])  # a stale lock file must not block it
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert events.count("killed") + events.count("killed mid-write") >= 3, events

    (train_ref, val_ref), (train_run, val_run) = _losses(ref), _losses(run)
    assert sorted(train_run) == list(range(1, MAX_ITERS + 1))
    assert train_run == train_ref  # bitwise: exact resume is the contract
    assert val_run == val_ref and sorted(val_run) == [0, 20, 40, 60]
    assert ckpt.read_meta(ckpt.find_checkpoint(run))["step"] == MAX_ITERS
    # Leftover temporary folders of killed writes are pruned by the next save.
    assert _temp_folders(run) == []
    print(events)
