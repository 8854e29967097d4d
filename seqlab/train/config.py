"""The run configuration: model (name, preset, config overrides), data, task and trainer.

Built from defaults, then JSON/YAML files, then dotted overrides (`train.lr=3e-4`,
`model.dim=64`). Every section checks its values when it is built (__post_init__): a value
out of range is a ConfigError naming the key, the value and the valid range. Model keys other
than name/preset are checked by the chosen model's config dataclass, task_options by the
task's Options dataclass, when the run is resolved (validate).

train.callbacks names the training callbacks (seqlab.train.callbacks: a mapping name ->
options, or a list of names); train.parallel picks how several processes (torchrun) share the
model: "ddp" (replicas, gradients averaged) or "fsdp" (each block's parameters, gradients and
optimizer state sharded with FSDP2); it is ignored with one process.
"""

import codecs
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from seqlab.config import dotted_to_nested, from_dict, load_file, merge, to_dict
from seqlab.data import TOKENIZER_KINDS
from seqlab.errors import ConfigError
from seqlab.models import build_config, model_entry
from seqlab.tasks import TASKS, resolve_task
from seqlab.train.callbacks import build_callbacks, normalize
from seqlab.train.tracking import normalize as normalize_trackers

DTYPES = ("float32", "bfloat16")
PARALLEL = ("ddp", "fsdp")


def _number(section: str, key: str, value, *, low=None, high=None, low_open=False, high_open=False):
    """Raise ConfigError unless `value` is a finite number in the range (bounds None = open)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        left = "(-inf" if low is None else f"{'(' if low_open else '['}{low}"
        right = "inf)" if high is None else f"{high}{')' if high_open else ']'}"
        raise ConfigError(
            f"{section}.{key}={value!r} is out of range: it must be a finite number in {left}, {right}"
        )


@dataclass
class DataConfig:
    source: str | None = None  # None = the embedded Shakespeare corpus; else a file, folder or hf:<name>
    tokenizer: str = "char"  # char | byte | bpe
    vocab_size: int | None = None  # BPE vocabulary size (bpe only)
    val_fraction: float = 0.1
    encoding: str = "utf-8"  # text encoding of the corpus files (not used by the byte tokenizer)
    # Grid data: the size of generated grids (mazes: cells per side, an int, or [gy, gx]) and
    # of text laid out as grids; null = the data's default.
    grid: int | list[int] | None = None

    def __post_init__(self):
        if self.tokenizer not in TOKENIZER_KINDS:
            raise ConfigError(f"data.tokenizer={self.tokenizer!r} must be one of {TOKENIZER_KINDS}")
        if self.vocab_size is not None and self.vocab_size < 1:
            raise ConfigError(f"data.vocab_size={self.vocab_size} must be >= 1 or null (the tokenizer's)")
        if self.grid is not None:
            sides = [self.grid] if isinstance(self.grid, int) else list(self.grid)
            if not 1 <= len(sides) <= 2 or any(
                isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in sides
            ):
                raise ConfigError(
                    f"data.grid={self.grid!r} must be a positive int (cells per side), [rows, cols] or null"
                )
        _number("data", "val_fraction", self.val_fraction, low=0, high=1, low_open=True, high_open=True)
        try:
            "".encode(self.encoding)  # LookupError also for codecs that are not text encodings
            codecs.lookup(self.encoding)
        except LookupError:
            raise ConfigError(
                f"data.encoding={self.encoding!r} is not a text encoding Python knows; use a codec "
                "name such as utf-8, latin-1 or cp1252"
            ) from None


@dataclass
class TrainConfig:
    batch_size: int = 12  # global batch per optimizer step (split over processes and accumulation)
    grad_accum: int = 1
    max_iters: int = 2000
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: int | None = None  # None = max_iters
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0 disables
    eval_interval: int = 250
    eval_iters: int = 20
    # Examples decoded at each evaluation for the task's decoding metrics (seq2seq PER/WER,
    # grid exact-match); 0 = none. Tasks without such metrics ignore it.
    eval_decode: int = 200
    log_interval: int = 10
    checkpoint_interval: int | None = None  # None = at every evaluation
    max_time: float | None = None  # seconds of training in this invocation; then save and stop
    seed: int = 1337
    dtype: str = "float32"  # float32 | bfloat16 (autocast)
    compile: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    sample_tokens: int = 200  # size of the sample written at the end (0 = none)
    sample_prompt: str | None = None  # None = the task's default (lm: "\n" if in the vocabulary)
    progress: bool = True
    parallel: str = "ddp"  # ddp | fsdp, with several processes (torchrun); ignored with one
    # Callbacks by name (seqlab.train.callbacks.CALLBACKS): {name: {option: value}} or [name, ...].
    callbacks: dict[str, Any] | list[str] = field(default_factory=dict)
    # Shortcut for train.callbacks.autonomic (the autonomic controller, default options).
    autonomic: bool = False
    # Experiment trackers that also get every metrics record (seqlab.train.tracking):
    # [tensorboard, wandb] or "tensorboard,wandb"; empty = none.
    log_to: list[str] | str | None = field(default_factory=list)

    def __post_init__(self):
        for key in ("batch_size", "grad_accum", "max_iters", "eval_interval", "eval_iters", "log_interval"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key}={getattr(self, key)} must be >= 1")
        for key in ("warmup_iters", "sample_tokens", "seed", "eval_decode"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key}={getattr(self, key)} must be >= 0")
        for key in ("lr_decay_iters", "checkpoint_interval"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(f"train.{key}={getattr(self, key)} must be >= 1 or null")
        _number("train", "lr", self.lr, low=0, low_open=True)
        _number("train", "min_lr", self.min_lr, low=0)
        _number("train", "weight_decay", self.weight_decay, low=0)
        _number("train", "grad_clip", self.grad_clip, low=0)
        for key in ("beta1", "beta2"):
            _number("train", key, getattr(self, key), low=0, high=1, high_open=True)
        if self.max_time is not None:
            _number("train", "max_time", self.max_time, low=0, low_open=True)
        if self.dtype not in DTYPES:
            raise ConfigError(f"train.dtype={self.dtype!r} must be one of {DTYPES}")
        if self.parallel not in PARALLEL:
            raise ConfigError(f"train.parallel={self.parallel!r} must be one of {PARALLEL}")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except RuntimeError:
                raise ConfigError(
                    f"train.device={self.device!r} is not a device name; use auto, cpu, cuda, cuda:N or mps"
                ) from None
        self.callbacks = normalize(self.callbacks)
        if self.autonomic:
            self.callbacks.setdefault("autonomic", {})
        build_callbacks(self.callbacks)  # unknown names and bad options fail here, naming the key
        self.log_to = normalize_trackers(self.log_to)  # unknown names fail here; packages at start


@dataclass
class RunConfig:
    model: dict[str, Any] = field(default_factory=lambda: {"name": "gpt", "preset": "baby"})
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    task: str | None = None  # None = the model's own task (registry): lm, forecast, ...
    # Task-specific settings, checked by the task's Options dataclass (e.g. lm: context;
    # forecast: column, season, nan, context).
    task_options: dict[str, Any] = field(default_factory=dict)
    run_dir: str | None = None  # None = runs/<model>-<preset>

    def __post_init__(self):
        if not isinstance(self.model.get("name", "gpt"), str):
            raise ConfigError(f"model.name must be a registered model name, got {self.model['name']!r}")
        if self.task is not None and self.task not in TASKS:
            raise ConfigError(f"task={self.task!r} is not a task; choose one of: {', '.join(TASKS)}")


def validate(cfg: RunConfig) -> RunConfig:
    """Check cross-field constraints and the model section; raise ConfigError naming the key."""
    if cfg.task is None:
        # The model's own task, or the one its grid data is made for (mazes: grid2grid).
        entry = model_entry(cfg.model.get("name", "gpt"))
        cfg.task = resolve_task(entry.task, entry.all_tasks, cfg.data.source)
    TASKS[cfg.task].parse_options(cfg.task_options)  # unknown keys, wrong types, bad values
    model = dict(cfg.model)
    name = model.pop("name", "gpt")
    preset = model.pop("preset", "tiny")
    if cfg.task not in model_entry(name).all_tasks:
        tasks = model_entry(name).all_tasks
        raise ConfigError(
            f"model {name!r} is made for task {' or '.join(map(repr, tasks))}, not {cfg.task!r}; pick a "
            f"{cfg.task!r} model (see `seqlab models`) or set task={tasks[0]}"
        )
    build_config(name, preset, **model)  # unknown keys / wrong types raise here, naming the key
    return cfg


def load_run_config(
    files: list[str] = (), overrides: list[str] = (), base: RunConfig | None = None
) -> RunConfig:
    """Defaults (or `base`), then each file in order, then dotted overrides."""
    cfg = base or RunConfig()
    for path in files:
        cfg = merge(cfg, load_file(path), where=f"config file {path}")
    if overrides:
        cfg = merge(cfg, dotted_to_nested(list(overrides)), where="--set")
    return validate(cfg)


def resolved_dict(cfg: RunConfig, model_config) -> dict[str, Any]:
    """The config as saved in the run directory: the model section fully expanded."""
    out = to_dict(cfg)
    out["model"] = {
        "name": cfg.model.get("name", "gpt"),
        "preset": cfg.model.get("preset", "tiny"),
        **to_dict(model_config),
    }
    return out


def run_config_from_dict(data: dict[str, Any]) -> RunConfig:
    return validate(from_dict(RunConfig, data))
