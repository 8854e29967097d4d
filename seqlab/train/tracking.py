"""Experiment trackers: every record of metrics.jsonl also sent to TensorBoard or Weights & Biases.

Opt-in with train.log_to, a list of tracker names or a comma-separated string
(`--set train.log_to=tensorboard,wandb`); off by default. Each tracker needs its extra
(pip install 'seqlab[tensorboard]' / 'seqlab[wandb]'); a missing one is a ConfigError when
training starts, before any work.

A tracker has two methods, log(record) and close(). MetricsLog hands it each record it writes
(tensors already turned into numbers), so a tracker sees exactly what metrics.jsonl holds:

    {"step": s, "split": p, key: value, ...}              ->  scalar "p/key" at step s
    {"step": s, "split": "callback", "callback": n, ...}  ->  scalar "callback/n/key" at step s

Values that are not numbers (lists, strings) are skipped. Only the main process makes trackers.

- tensorboard: torch.utils.tensorboard.SummaryWriter, event files in RUN_DIR/tensorboard.
- wandb: offline unless WANDB_MODE is set (files in RUN_DIR/wandb; upload them later with
  `wandb sync RUN_DIR/wandb/offline-run-*`); project WANDB_PROJECT or "seqlab", run name the
  run directory's name, config the resolved run config. No crash reports, no system-metrics
  sampling, no console capture: nothing leaves the machine.

Resume: metrics.jsonl drops the records after the checkpoint step (those steps run again), and
the trackers follow: TensorBoard gets purge_step = checkpoint step + 1 (it hides what the older
event files logged from that step on); wandb continues the run id kept in RUN_DIR/wandb_run_id
(wandb cannot rewind a run: steps it already received keep their first values).
"""

import contextlib
import importlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from seqlab.errors import ConfigError
from seqlab.train.checkpoint import atomic_write_text


def scalars(record: dict[str, Any]) -> Iterator[tuple[str, float]]:
    """(tag, value) for every number of a metrics record: "split/key", "callback/name/key"."""
    prefix = f"callback/{record['callback']}" if record["split"] == "callback" else record["split"]
    for key, value in record.items():
        if key != "step" and isinstance(value, (int, float)):
            yield f"{prefix}/{key}", float(value)


class Tracker:
    """Receives every metrics record of a run; `module` is the package it needs."""

    module: str

    def log(self, record: dict[str, Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class TensorBoardTracker(Tracker):
    module = "tensorboard"

    def __init__(self, run_dir: Path, config: dict[str, Any], keep_until_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=keep_until_step + 1)

    def log(self, record):
        for tag, value in scalars(record):
            self.writer.add_scalar(tag, value, record["step"])

    def close(self):
        self.writer.close()


class WandbTracker(Tracker):
    module = "wandb"

    def __init__(self, run_dir: Path, config: dict[str, Any], keep_until_step: int):
        import wandb  # check_installed has switched off its crash reports (they go online)

        id_file = run_dir / "wandb_run_id"
        if keep_until_step >= 0 and id_file.is_file():
            run_id = id_file.read_text().strip()
        else:
            run_id = secrets.token_hex(4)
            atomic_write_text(id_file, run_id + "\n")
        self.run = wandb.init(
            mode=None if "WANDB_MODE" in os.environ else "offline",
            dir=str(run_dir),
            project=os.environ.get("WANDB_PROJECT") or "seqlab",
            name=run_dir.name,
            config=config,
            id=run_id,
            resume="allow",
            settings=wandb.Settings(
                silent=True,
                console="off",
                x_disable_stats=True,
                x_disable_meta=True,
                x_disable_machine_info=True,
                disable_git=True,
                save_code=False,
            ),
        )

    def log(self, record):
        values = dict(scalars(record))
        if values:
            self.run.log(values, step=record["step"])

    def close(self):
        self.run.finish()


TRACKERS: dict[str, type[Tracker]] = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker}


def normalize(log_to: list[str] | str | None) -> list[str]:
    """train.log_to as a list of tracker names: "tensorboard,wandb", [names] or none ("", [], null)."""
    names = (log_to or "").split(",") if log_to is None or isinstance(log_to, str) else log_to
    names = [str(name).strip() for name in names if str(name).strip()]
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(
                f"train.log_to: unknown tracker {name!r}; choose from {', '.join(TRACKERS)} "
                "(a list or a comma-separated string)"
            )
    return list(dict.fromkeys(names))


def check_installed(names: list[str]) -> None:
    """Raise ConfigError naming the extra to install when a tracker's package does not import."""
    if "wandb" in names:
        os.environ.setdefault("WANDB_ERROR_REPORTING", "false")  # before wandb is first imported
    for name in names:
        try:
            importlib.import_module(TRACKERS[name].module)
        except ImportError as e:
            raise ConfigError(
                f"train.log_to={name} needs the {TRACKERS[name].module} package ({e}); "
                f"install it with pip install 'seqlab[{name}]'"
            ) from None


def open_trackers(
    names: list[str], run_dir: Path, config: dict[str, Any], keep_until_step: int
) -> list[Tracker]:
    """The trackers `names` of the run in `run_dir` (main process only).

    `config`: the resolved run config; `keep_until_step`: as for MetricsLog, the last step whose
    records a resumed run keeps (-1 for a new run). A tracker that fails to start closes the
    ones started before it. The packages are checked by check_installed when training starts."""
    trackers = []
    with contextlib.ExitStack() as started:
        for name in names:
            tracker = TRACKERS[name](Path(run_dir), config, keep_until_step)
            started.callback(tracker.close)
            trackers.append(tracker)
        started.pop_all()
    return trackers
