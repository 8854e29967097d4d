"""torchrun support: process group setup (gloo on CPU, nccl on GPU), rank info, reductions,
and a one-line error naming the process that went silent.

Every collective waits at most `timeout_s` (argument of setup, else the SEQLAB_DIST_TIMEOUT
environment variable, else 300 s) for the other processes, instead of gloo's 30 minutes.
To say WHICH process went silent, each process counts up a key of its own in the rendezvous
store (torchrun's, or rank 0's) once a second from a daemon thread. A process that is stopped
(SIGSTOP), hung or dead stops counting; a process that is only slow (a long evaluation) keeps
counting. When a collective fails, `guard` watches the counters for a few seconds and turns
the backend's error into one DistributedError line naming the silent ranks.

The timeout also bounds the start (every process must reach setup within it) and any wait of
the others while rank 0 works alone (writing a checkpoint): raise it for very large models.
With nccl, the backend's watchdog may end the process itself when the timeout passes.
"""

import contextlib
import os
import re
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from seqlab.errors import ConfigError, SeqlabError

TIMEOUT_ENV = "SEQLAB_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 300.0
_BEAT_S = 1.0  # heartbeat period
_WATCH_S = 4.0  # how long a failure watches the heartbeats: a live process beats 3-4 times

# What gloo, nccl and the store say when a peer does not answer or its connection drops (other
# backend errors, e.g. an unsupported operation, pass unchanged).
_COMM_FAILURE = re.compile(
    r"timed out|timeout|connection (closed|reset|refused)|closed by peer|broken pipe", re.I
)


class DistributedError(SeqlabError, RuntimeError):
    """A process of a multi-process run stopped answering; the message names it."""


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_timeout(timeout_s: float | None = None) -> float:
    """The collective timeout in seconds: the argument, else $SEQLAB_DIST_TIMEOUT, else 300."""
    where = "timeout_s"
    if timeout_s is None:
        raw = os.environ.get(TIMEOUT_ENV)
        if raw is None:
            return DEFAULT_TIMEOUT_S
        where = f"{TIMEOUT_ENV}={raw!r}"
        try:
            timeout_s = float(raw)
        except ValueError:
            raise ConfigError(f"{where} is not a number of seconds; set it to e.g. 300") from None
    if not timeout_s > 0 or timeout_s == float("inf"):
        raise ConfigError(
            f"{where}: the distributed timeout must be a positive number of seconds, got {timeout_s}"
        )
    return float(timeout_s)


class _Heartbeat:
    """Counts up key `rank` (under "seqlab_alive/") in the rendezvous store every _BEAT_S s.

    The beating thread and the failure check each use a clone of the store (their own
    connection), so neither waits behind the other or behind the process group's own use.
    """

    def __init__(self, store, info: DistInfo):
        self.info = info
        self._beat = dist.PrefixStore("seqlab_alive", store.clone())
        self._probe = dist.PrefixStore("seqlab_alive", store.clone())
        self._stop = threading.Event()
        self._beat.add(str(info.rank), 1)
        self._thread = threading.Thread(target=self._run, name="seqlab-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(_BEAT_S):
            try:
                self._beat.add(str(self.info.rank), 1)
            except Exception:  # the store is gone: the run is ending, nobody to tell
                return

    def stop(self) -> None:
        self._stop.set()

    def silent_ranks(self) -> list[int] | None:
        """The ranks whose count did not move for _WATCH_S s; None if the store is silent."""
        ranks = range(self.info.world_size)
        found: list[list[int]] = []

        def watch():
            try:
                before = [self._probe.add(str(r), 0) for r in ranks]
                time.sleep(_WATCH_S)
                after = [self._probe.add(str(r), 0) for r in ranks]
            except Exception:  # the store is gone
                return
            found.append([r for r in ranks if after[r] == before[r] and r != self.info.rank])

        # A store whose host is stopped never answers (a TCPStore client's add has no
        # timeout), so watch from a daemon thread and give up on it after a while.
        watcher = threading.Thread(target=watch, name="seqlab-heartbeat-watch", daemon=True)
        watcher.start()
        watcher.join(2 * _WATCH_S)
        return found[0] if found else None


_heartbeat: _Heartbeat | None = None
_timeout_s: float = DEFAULT_TIMEOUT_S


def available_devices() -> str:
    """What this machine has, in words, for error messages."""
    have = ["cpu"]
    if torch.cuda.is_available():
        have.append(f"cuda (x{torch.cuda.device_count()})")
    if torch.backends.mps.is_available():
        have.append("mps")
    return ", ".join(have)


def resolve_device(
    pref: str | torch.device = "auto", local_rank: int = 0, key: str = "train.device"
) -> torch.device:
    """ "auto" (this process's GPU if there is one, else the CPU) or a device that exists here;
    anything else is a one-line ConfigError naming the device and what this machine has."""
    if str(pref) == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(pref)
    except (RuntimeError, TypeError):
        raise ConfigError(
            f"{key}={pref!r} is not a device name; this machine has: {available_devices()}"
        ) from None
    present = {
        "cpu": True,
        "cuda": torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count(),
        "mps": torch.backends.mps.is_available(),
    }.get(device.type, False)
    if not present:
        raise ConfigError(
            f"{key}={str(pref)!r}: no such device on this machine; it has: {available_devices()} "
            f"(use cpu or auto)"
        )
    return device


def setup(device_pref: str = "auto", timeout_s: float | None = None) -> tuple[DistInfo, torch.device]:
    """Read torchrun's environment, start the process group if several processes, pick a device.

    timeout_s: how long a collective waits for the other processes (see resolve_timeout).
    """
    global _heartbeat, _timeout_s
    info = DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )
    device = resolve_device(device_pref, info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if info.enabled and not dist.is_initialized():
        _timeout_s = resolve_timeout(timeout_s)
        timeout = timedelta(seconds=_timeout_s)
        # The env:// rendezvous init_process_group would do, kept in hand for the heartbeat.
        store, _, _ = next(dist.rendezvous("env://", info.rank, info.world_size, timeout=timeout))
        store.set_timeout(timeout)
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            store=store,
            rank=info.rank,
            world_size=info.world_size,
            timeout=timeout,
        )
        try:
            _heartbeat = _Heartbeat(store, info)
        except (AttributeError, RuntimeError):  # a store without clone(): errors name no rank
            _heartbeat = None
    return info, device


def teardown() -> None:
    global _heartbeat
    if _heartbeat is not None:
        _heartbeat.stop()
        _heartbeat = None
    if dist.is_initialized():
        dist.destroy_process_group()


def _is_comm_failure(exc: BaseException) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, RuntimeError) and _COMM_FAILURE.search(str(exc)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _backend_says(exc: BaseException) -> str:
    # gloo's first line starts with its source location: "[/path/unbound_buffer.cc:78] Timed out ..."
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return re.sub(r"^\[[^\]]*\]\s*", "", first)[:200]


def describe_failure(info: DistInfo, exc: BaseException) -> str:
    """One line: which rank went silent (from the heartbeats), what this rank saw, what to do."""
    me, n = info.rank, info.world_size
    others = [r for r in range(n) if r != me]
    silent = _heartbeat.silent_ranks() if _heartbeat is not None else None
    if _heartbeat is None:  # a process group started elsewhere: no heartbeats to read
        who = f"rank {others[0]} of {n} did not answer" if n == 2 else f"one of ranks {others} did not answer"
    elif silent is None:
        host = "the torchrun agent" if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" else "rank 0"
        who = f"{host} (it holds the rendezvous store) went silent: the store stopped answering"
    elif silent:
        ranks = f"rank {silent[0]}" if len(silent) == 1 else "ranks " + ", ".join(map(str, silent))
        who = f"{ranks} of {n} went silent (no heartbeat for {_WATCH_S:g} s: stopped, hung or dead)"
    else:
        ranks = f"rank {others[0]} of {n} is" if n == 2 else f"ranks {others} are"
        who = (
            f"{ranks} alive but did not reach the collective (a step slower than the timeout, or a "
            "code path the ranks do not share)"
        )
    return (
        f"{who}; rank {me} waited up to {_timeout_s:g} s ({TIMEOUT_ENV} sets it) and stops. "
        f"Backend: {_backend_says(exc)}"
    )


@contextlib.contextmanager
def guard(info: DistInfo):
    """Turn a collective's timeout or lost connection into a DistributedError naming the
    rank that went silent (one line, for the CLI); other errors pass unchanged."""
    try:
        yield
    except Exception as e:
        if not info.enabled or isinstance(e, SeqlabError) or not _is_comm_failure(e):
            raise
        raise DistributedError(describe_failure(info, e)) from e


def mean_across(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= info.world_size
    return value


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def gather_rng_states(info: DistInfo) -> list[torch.Tensor]:
    """Every rank's CPU RNG state (dropout streams differ per rank), in rank order.

    A collective: all ranks must call it together.
    """
    state = torch.get_rng_state()
    if not info.enabled:
        return [state]
    states: list = [None] * info.world_size
    dist.all_gather_object(states, state)
    return states
