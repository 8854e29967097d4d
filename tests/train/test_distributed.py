"""torchrun: 2 CPU processes (gloo) reproduce the single-process losses at the same global batch;
a process that goes silent is named by the others, which stop within the timeout."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from seqlab.train.metrics import losses, read_metrics

SETS = [
    "train.eval_interval=3",
    "train.eval_iters=2",
    "train.log_interval=1",
    "train.warmup_iters=1",
    "train.lr_decay_iters=6",  # the schedule of a 6-step run, also in a run cut at 3
    "train.grad_accum=2",
    "train.sample_tokens=0",
]


def _args(max_iters: int, *sets: str) -> list[str]:
    return ["train", "--preset", "tiny", "--max-iters", str(max_iters), "--batch-size", "8", "--no-progress",
            "--set", *SETS, *sets]  # fmt: skip


def _losses(run):
    return list(losses(run).values())


def _resume(run, max_iters: int) -> list[str]:
    return ["train", "--resume", str(run), "--no-progress", "--set", f"train.max_iters={max_iters}"]


@pytest.mark.skipif(sys.platform == "win32", reason="gloo process groups need Linux or macOS")
def test_two_process_ddp_matches_single_process(tmp_path, torchrun, seqlab_env):
    # Same global batch (8 rows = 2 processes x 2 micro-batches x 2 rows): only the order of the
    # reductions differs. FSDP's trainer path: test_parallel_trainer.py; parallel.py: test_fsdp.py.
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    subprocess.run(
        [sys.executable, "-m", "seqlab", *_args(6), "--run-dir", str(single)],
        check=True,
        env=seqlab_env,
        timeout=300,
    )
    torchrun(*_args(6, "train.parallel=ddp"), "--run-dir", str(ddp))
    a, b = _losses(single), _losses(ddp)
    assert len(a) == 6
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=1e-5, atol=1e-5)
    # Only rank 0 writes: one metrics file, one checkpoint tree, no duplicate records.
    assert [r["step"] for r in read_metrics(ddp / "metrics.jsonl") if r["split"] == "train"] == [
        1,
        2,
        3,
        4,
        5,
        6,
    ]


@pytest.mark.skipif(sys.platform == "win32", reason="gloo process groups need Linux or macOS")
def test_two_process_resume_with_dropout_reproduces_the_uninterrupted_run(tmp_path, torchrun):
    # Every rank's dropout RNG is saved at an evaluation checkpoint, so a resumed DDP run with
    # dropout matches the uninterrupted one.
    full, cut = tmp_path / "full", tmp_path / "cut"
    torchrun(*_args(6, "model.dropout=0.2"), "--run-dir", str(full))
    torchrun(*_args(3, "model.dropout=0.2"), "--run-dir", str(cut))
    torchrun(*_resume(cut, 6))
    assert len(_losses(full)) == 6
    assert _losses(full) == _losses(cut)


def _stop_worker(stopper: int, timeout_s: float) -> int:
    """Worker of the test below: all-reduce in a loop; rank `stopper` SIGSTOPs itself."""
    from seqlab.errors import SeqlabError
    from seqlab.train import distributed

    info, _ = distributed.setup("cpu", timeout_s=timeout_s)
    try:
        with distributed.guard(info):
            for i in range(10_000):
                if info.rank == stopper and i == 3:
                    os.kill(os.getpid(), signal.SIGSTOP)
                distributed.mean_across(torch.ones(1), info)
    except SeqlabError as e:  # as the CLI prints it
        print(f"seqlab train: error: {e}", file=sys.stderr)
        return 2
    finally:
        distributed.teardown()
    return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(sys.platform == "win32", reason="SIGSTOP and gloo need Linux or macOS")
def test_a_stopped_worker_is_named_and_the_other_exits_within_the_timeout(seqlab_env):
    # Two 2-process runs side by side (they mostly wait): in one rank 1 stops itself, in the
    # other rank 0, which also holds the rendezvous store (no torchrun agent here).
    timeout_s = 5
    runs = {}
    for stopper in (1, 0):
        env = {**seqlab_env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2"}
        env.pop("SEQLAB_DIST_TIMEOUT", None)
        runs[stopper] = [
            subprocess.Popen(
                [sys.executable, __file__, "stop-worker", str(stopper), str(timeout_s)],
                env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                stderr=subprocess.PIPE,
                text=True,
            )
            for r in range(2)
        ]
    start = time.monotonic()
    errors, elapsed = {}, {}
    try:
        for stopper, procs in runs.items():
            _, errors[stopper] = procs[1 - stopper].communicate(timeout=120)  # gloo: 30 minutes
            elapsed[stopper] = time.monotonic() - start
    finally:
        for p in [p for procs in runs.values() for p in procs]:
            if p.poll() is None:
                p.kill()  # SIGKILL also ends a stopped process
            p.wait()
    for stopper, procs in runs.items():
        err = errors[stopper]
        assert procs[1 - stopper].returncode == 2, err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("seqlab train: error: "), err
        assert f"rank {stopper} " in lines[0] and "went silent" in lines[0], lines[0]
        assert f"waited up to {timeout_s} s" in lines[0]
        # Python start + the timeout + a few seconds of watching the heartbeats.
        assert elapsed[stopper] < 60, elapsed


def test_the_timeout_comes_from_the_argument_the_environment_or_the_default(monkeypatch):
    from seqlab.errors import ConfigError
    from seqlab.train.distributed import DEFAULT_TIMEOUT_S, resolve_timeout

    monkeypatch.delenv("SEQLAB_DIST_TIMEOUT", raising=False)
    assert resolve_timeout() == DEFAULT_TIMEOUT_S
    assert resolve_timeout(12) == 12.0
    monkeypatch.setenv("SEQLAB_DIST_TIMEOUT", "45")
    assert resolve_timeout() == 45.0
    for bad in ("soon", "-1", "0", "nan"):
        monkeypatch.setenv("SEQLAB_DIST_TIMEOUT", bad)
        with pytest.raises(ConfigError, match="SEQLAB_DIST_TIMEOUT"):
            resolve_timeout()
    with pytest.raises(ConfigError, match="positive"):
        resolve_timeout(0)


def test_guard_turns_only_communication_failures_into_one_line():
    from seqlab.train.distributed import DistInfo, DistributedError, guard

    gloo = RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out "
                        "waiting 5000ms for recv operation to complete")  # fmt: skip
    with pytest.raises(DistributedError) as caught, guard(DistInfo(rank=0, world_size=2)):
        raise gloo
    message = str(caught.value)
    assert "\n" not in message and message.startswith("rank 1 of 2 did not answer")
    assert message.endswith("Backend: Timed out waiting 5000ms for recv operation to complete")
    with pytest.raises(RuntimeError, match="shape mismatch"), guard(DistInfo(rank=0, world_size=2)):
        raise RuntimeError("shape mismatch")  # not a communication failure: unchanged
    with pytest.raises(RuntimeError, match="Timed out"), guard(DistInfo()):
        raise gloo  # one process: nothing to name


if __name__ == "__main__" and sys.argv[1] == "stop-worker":
    sys.exit(_stop_worker(int(sys.argv[2]), float(sys.argv[3])))
