"""The run configuration: model (name, preset, config overrides), data, task and trainer.

Built from defaults, then JSON/YAML files, then dotted overrides (`train.lr=3e-4`,
`model.dim=64`). Model keys other than name/preset are checked against the chosen model's
config dataclass when the run is resolved; everything else is checked here.
"""

from dataclasses import dataclass, field
from typing import Any

from seqlab.config import dotted_to_nested, from_dict, load_file, merge, to_dict, unknown_key_error
from seqlab.errors import ConfigError
from seqlab.models import build_config, model_entry
from seqlab.tasks import TASKS


@dataclass
class DataConfig:
    source: str | None = None  # None = the embedded Shakespeare corpus; else a file, folder or hf:<name>
    tokenizer: str = "char"  # char | byte | bpe
    vocab_size: int | None = None  # BPE vocabulary size (bpe only)
    val_fraction: float = 0.1


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
    log_interval: int = 10
    checkpoint_interval: int | None = None  # None = at every evaluation
    max_time: float | None = None  # seconds of training in this invocation; then save and stop
    seed: int = 1337
    dtype: str = "float32"  # float32 | bfloat16 (autocast)
    compile: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    sample_tokens: int = 200
    sample_prompt: str = "\n"
    progress: bool = True


@dataclass
class RunConfig:
    model: dict[str, Any] = field(default_factory=lambda: {"name": "gpt", "preset": "baby"})
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    task: str | None = None  # None = the model's own task (registry): lm, forecast, ...
    # Task-specific settings, passed to the task's from_source; each task lists its OPTIONS
    # (e.g. forecast: column, season, nan).
    task_options: dict[str, Any] = field(default_factory=dict)
    run_dir: str | None = None  # None = runs/<model>-<preset>


DTYPES = ("float32", "bfloat16")


def validate(cfg: RunConfig) -> RunConfig:
    """Check cross-field constraints and the model section; raise ConfigError naming the key."""
    t = cfg.train
    if cfg.task is None:
        cfg.task = model_entry(cfg.model.get("name", "gpt")).task
    if cfg.task not in TASKS:
        raise ConfigError(f"unknown task {cfg.task!r}; choose one of: {', '.join(TASKS)}")
    options = getattr(TASKS[cfg.task], "OPTIONS", ())
    for key in cfg.task_options:
        if key not in options:
            raise unknown_key_error(key, options, f"task_options of task {cfg.task!r}")
    if t.dtype not in DTYPES:
        raise ConfigError(f"train.dtype must be one of {DTYPES}, got {t.dtype!r}")
    for key in ("batch_size", "grad_accum", "max_iters", "eval_interval", "eval_iters", "log_interval"):
        if getattr(t, key) < 1:
            raise ConfigError(f"train.{key} must be >= 1, got {getattr(t, key)}")
    if not 0 < cfg.data.val_fraction < 1:
        raise ConfigError(f"data.val_fraction must lie in (0, 1), got {cfg.data.val_fraction}")
    model = dict(cfg.model)
    name = model.pop("name", "gpt")
    preset = model.pop("preset", "tiny")
    if model_entry(name).task != cfg.task:
        raise ConfigError(
            f"model {name!r} is made for task {model_entry(name).task!r}, not {cfg.task!r}; pick a "
            f"{cfg.task!r} model (see `seqlab models`) or set task={model_entry(name).task}"
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
