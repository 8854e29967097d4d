"""One process per run directory: RUN_DIR/.lock is held for the life of a run.

A second `seqlab train` into the same directory, or a second `--resume` of it, stops with one
line naming the holder's pid; the lock goes away with its process however that ends.
"""

import os
import signal
import subprocess
import sys
import time

import pytest

from seqlab.cli.main import main
from seqlab.errors import CheckpointError
from seqlab.train.runs import is_locked, lock_run


def test_a_second_holder_is_refused_with_the_pid(tmp_path):
    run = tmp_path / "run"
    with lock_run(run):
        assert (run / ".lock").read_text().strip() == str(os.getpid())
        assert is_locked(run)
        # flock locks belong to an open file: a second open in this process conflicts too.
        with pytest.raises(
            CheckpointError, match=f"in use by another seqlab process \\(pid {os.getpid()}\\)"
        ):
            with lock_run(run):
                pass
        (run / "config.json").write_text("{}")  # the run wrote something: the folder stays
    assert not is_locked(run)
    assert (run / ".lock").read_text() == ""  # no holder
    with lock_run(run):  # free again
        pass


def test_released_on_an_exception_and_an_unused_new_folder_is_removed(tmp_path):
    run = tmp_path / "new"
    with pytest.raises(RuntimeError):
        with lock_run(run):
            raise RuntimeError("config error before the run wrote anything")
    assert not run.exists()
    run.mkdir()
    with pytest.raises(KeyboardInterrupt):
        with lock_run(run):
            raise KeyboardInterrupt
    assert run.is_dir() and not is_locked(run)  # it existed before: kept


def _wait_for(predicate, proc, timeout=60.0):
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the first run ended early: {proc.communicate()}")
        if time.time() > deadline:
            raise AssertionError("the first run did not start in time")
        time.sleep(0.05)


def test_a_second_train_or_resume_of_a_running_run_gets_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["--preset", "tiny", "--run-dir", str(run), "--no-progress", "--batch-size", "4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(
        [sys.executable, "-m", "seqlab.cli.main", "train", *argv, "--max-iters", "1000000",
         "--set", "train.eval_iters=1", "train.sample_tokens=0"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # The step-0 evaluation writes the first checkpoint, so a --resume has one to read.
        _wait_for(lambda: (run / "checkpoints" / "latest").is_file(), first)
        assert (run / ".lock").read_text().strip() == str(first.pid)
        for second in (
            ["train", *argv, "--seed", "2", "--max-iters", "2"],
            ["train", "--resume", str(run), "--max-iters", "2"],
        ):
            assert main(second) == 2
            err = capsys.readouterr().err
            assert f"in use by another seqlab process (pid {first.pid})" in err, err
            assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert first.poll() is None  # the first run went on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The kernel dropped the lock with the killed process; its stale pid does not block.
    assert not is_locked(run)
    with lock_run(run):
        pass
