"""Assemble a run from its config, and reopen a run directory: config, task state, checkpoint.

The order every entry point uses (train, --resume, eval, generate, bench):

    model_config(cfg)                      the model section alone (name, preset, overrides)
    task = build_task(cfg, state)          the task, from the config and its saved state
    build_model_for_task(cfg, task)        the model section + task.model_requirements()

A run directory holds config.json (the resolved run config), task.json ({"task": name,
"state": the task's state_dict()}) and checkpoints/ (seqlab.train.checkpoint). Reopening one
checks the checkpoint format first, so a run written by an older seqlab is refused with one
line before anything else is parsed.

One process at a time writes a run directory: `lock_run(run_dir)` holds an exclusive flock on
RUN_DIR/.lock for the life of the run, with the holder's pid in it. The kernel drops the lock
when the process ends in any way (an exception, Ctrl-C, SIGKILL), so a stale .lock file never
blocks a resume; a second process gets a one-line error naming the holder's pid.
"""

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from seqlab.errors import CheckpointError, ConfigError
from seqlab.models import build_config, model_entry
from seqlab.tasks import TASKS
from seqlab.tasks.base import AtLeast, Task
from seqlab.train import checkpoint as ckpt
from seqlab.train.config import RunConfig, load_run_config, run_config_from_dict
from seqlab.train.distributed import resolve_device


def model_config(cfg: RunConfig, requirements: dict[str, Any] | None = None):
    """The model config of the run's model section, completed by the task's requirements.

    An exact requirement (e.g. num_features) must equal the section's value if it sets one;
    AtLeast(n) (vocab_size) is the default and a lower bound for the section's value.
    """
    section = dict(cfg.model)
    name, preset = section.pop("name", "gpt"), section.pop("preset", "tiny")
    for key, need in (requirements or {}).items():
        if isinstance(need, AtLeast):
            if key in section and section[key] < need.value:
                raise ConfigError(
                    f"model.{key}={section[key]} is smaller than the {cfg.task} task needs "
                    f"({need.value}, e.g. the tokenizer's vocabulary); remove the override or raise it"
                )
            section.setdefault(key, need.value)
        else:
            if key in section and section[key] != need:
                raise ConfigError(
                    f"model.{key}={section[key]} does not match the data: the {cfg.task} task needs "
                    f"{key}={need}; remove the override"
                )
            section[key] = need
    return build_config(name, preset, **section)


def build_task(cfg: RunConfig, state: dict[str, Any] | None = None) -> Task:
    """The run's task, from the config and (reopening a run) the task's saved state."""
    return TASKS[cfg.task].from_config(cfg, model_config(cfg), state)


def build_model_for_task(cfg: RunConfig, task: Task):
    """(model, model config): the run's model section completed by task.model_requirements()."""
    model_cfg = model_config(cfg, task.model_requirements())
    return model_entry(cfg.model.get("name", "gpt")).model(model_cfg), model_cfg


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"{str(path.parent)!r} has no {path.name}: the run directory is incomplete"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(
            f"{what} {str(path)!r} is corrupt ({e}); the run directory is damaged"
        ) from None


def read_run_config(run_dir: str | Path) -> RunConfig:
    """The saved run config of a run directory."""
    data = _read_json(Path(run_dir) / "config.json", "run config")
    try:
        return run_config_from_dict(data)
    except ConfigError as e:
        raise CheckpointError(
            f"the run config {str(Path(run_dir) / 'config.json')!r} is not valid: {e}"
        ) from None


def task_file(task: Task) -> dict[str, Any]:
    """What task.json holds."""
    return {"task": task.name, "state": task.state_dict()}


def read_task_state(run_dir: str | Path, task_name: str) -> dict[str, Any]:
    """The state a run's task saved (task.json["state"]), checked to belong to `task_name`."""
    path = Path(run_dir) / "task.json"
    data = _read_json(path, "task file")
    if not isinstance(data, dict) or "state" not in data or "task" not in data:
        raise CheckpointError(
            f"{str(path)!r} is not a task file of this seqlab (written by an older version, whose "
            "layer layout changed, or damaged); retrain, or use that seqlab version"
        )
    if data["task"] != task_name:
        raise CheckpointError(
            f"{str(path)!r} belongs to task {data['task']!r} but the run config says {task_name!r}; "
            "the run directory is inconsistent"
        )
    return data["state"]


LOCK_NAME = ".lock"

try:
    import fcntl
except ImportError:  # not POSIX (Windows): runs are not locked there
    fcntl = None


def _lock_holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "?"
    except OSError:
        return "?"


def is_locked(run_dir: str | Path) -> bool:
    """Whether a live process holds the lock of `run_dir` (a free or missing .lock: False)."""
    path = Path(run_dir) / LOCK_NAME
    if fcntl is None or not path.is_file():
        return False
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


@contextlib.contextmanager
def lock_run(run_dir: str | Path):
    """Hold RUN_DIR/.lock exclusively while the body runs (creating RUN_DIR if needed).

    Raises CheckpointError, naming the holder's pid, when another process holds it. A run
    directory this call created and nothing else wrote into is removed again on exit, so a
    run that fails before it starts (a config error) leaves nothing behind.
    """
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    if fcntl is None:
        yield
        return
    while True:
        # "a+": opening must not truncate the pid of a process that holds the lock.
        f = open(path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise CheckpointError(
                f"run directory {str(run_dir)!r} is in use by another seqlab process (pid "
                f"{_lock_holder(path)}); wait for it to finish or stop it, or choose another --run-dir"
            ) from None
        # The file may have been removed (by a holder cleaning up an empty run directory)
        # between open and flock: then this lock guards nothing; take the new file's.
        try:
            same = os.path.samestat(os.fstat(f.fileno()), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        f.close()
    try:
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield
    finally:
        try:
            if created and {p.name for p in run_dir.iterdir()} == {LOCK_NAME}:
                path.unlink()  # still locked: nobody can take this file in between
                run_dir.rmdir()
            else:
                f.seek(0)
                f.truncate()  # no pid: nobody holds it
        except OSError:
            pass
        finally:
            f.close()  # releases the flock


def _check_run_dir(run_dir: Path, which: str) -> tuple[Path, dict[str, Any]]:
    """(checkpoint folder, meta): the directory is a run and its checkpoint of this format."""
    if not (run_dir / "config.json").is_file():
        raise CheckpointError(
            f"{str(run_dir)!r} is not a seqlab run directory (no config.json); pass a run directory "
            "written by `seqlab train`"
        )
    return ckpt.open_checkpoint(run_dir, which)


def resume_config(run_dir: str | Path, overrides: list[str] = (), checkpoint: str = "latest") -> RunConfig:
    """The saved config of a run directory, with dotted overrides (e.g. a longer train.max_iters).

    `checkpoint` (latest | best | a step folder) is checked to exist and be of this format."""
    run_dir = Path(run_dir)
    _check_run_dir(run_dir, checkpoint)
    cfg = load_run_config(overrides=overrides, base=read_run_config(run_dir))
    cfg.run_dir = str(run_dir)
    return cfg


def load_run(
    run_dir: str | Path,
    which: str = "best",
    device: str | torch.device = "cpu",
    data_source: str | None = None,
):
    """(model, task, cfg, meta) for checkpoint `which` (best | latest | a step folder) of a run.

    `data_source` evaluates on other data with the run's own task state (e.g. its tokenizer).
    """
    run_dir = Path(run_dir)
    ckpt_dir, meta = _check_run_dir(run_dir, which)
    cfg = read_run_config(run_dir)
    if data_source is not None:
        cfg.data.source = data_source
    saved_name = meta.get("model", {}).get("name")
    if saved_name and saved_name != cfg.model.get("name"):
        raise CheckpointError(
            f"checkpoint {str(ckpt_dir)!r} holds a {saved_name!r} model but the run config says "
            f"{cfg.model.get('name')!r}; the run directory is inconsistent"
        )
    task = build_task(cfg, read_task_state(run_dir, cfg.task))
    model, _ = build_model_for_task(cfg, task)
    ckpt.load_weights(model, ckpt_dir, meta)
    model.to(resolve_device(device, key="--device")).eval()
    return model, task, cfg, meta


__all__ = [
    "build_model_for_task",
    "build_task",
    "is_locked",
    "load_run",
    "lock_run",
    "model_config",
    "read_run_config",
    "read_task_state",
    "resume_config",
    "task_file",
]
