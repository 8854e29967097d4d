"""The training loop: one explicit loop, readable in one sitting.

    for step in range(start, max_iters):
        evaluate + checkpoint every eval_interval steps
        draw the global batch, take this process's rows, split into accumulation micro-batches
        forward (optionally under bf16 autocast), backward, clip, AdamW step, log

Exact resume: the data generator, the RNG states, the optimizer and the schedule position are
saved, and evaluation uses its own fixed generator, so an interrupted and resumed run
produces the same losses as an uninterrupted one. A NaN/inf loss stops the run before any
checkpoint is written, so the last good checkpoint stays intact. Ctrl-C and --max-time save
a checkpoint before stopping.
"""

import contextlib
import json
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from seqlab import __version__
from seqlab.config import to_dict
from seqlab.errors import CheckpointError, ConfigError, TrainingDiverged
from seqlab.models import build_config, count_parameters, model_entry
from seqlab.tasks import TASKS
from seqlab.train import checkpoint as ckpt
from seqlab.train import distributed
from seqlab.train.config import RunConfig, load_run_config, resolved_dict, run_config_from_dict
from seqlab.train.metrics import MetricsLog, plot_loss_curve
from seqlab.train.optim import lr_at, make_optimizer


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    val_loss: float | None
    best_val_loss: float | None
    tokens_per_s: float
    sample: str = ""
    stopped: str = "finished"  # finished | max_time (an interrupt re-raises KeyboardInterrupt)


def _holds_a_run(path: Path) -> bool:
    return (path / "checkpoints" / "latest").is_file()


def default_run_dir(cfg: RunConfig) -> Path:
    """runs/<model>-<preset>, or the first free runs/<model>-<preset>-N: never over an earlier run."""
    base = Path("runs") / f"{cfg.model.get('name', 'gpt')}-{cfg.model.get('preset', 'tiny')}"
    path, n = base, 1
    while _holds_a_run(path):
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def build_task(cfg: RunConfig, block_size: int, tokenizer_state: dict | None = None):
    d = cfg.data
    return TASKS[cfg.task].from_source(
        d.source,
        block_size,
        tokenizer=d.tokenizer,
        vocab_size=d.vocab_size,
        val_fraction=d.val_fraction,
        tokenizer_state=tokenizer_state,
        **cfg.task_options,
    )


def build_model_for_task(cfg: RunConfig, task):
    """Model config from the run's model section, completed by the task.

    The task fixes the vocabulary (vocab_size: at least the tokenizer's) and the values its
    model_overrides() returns, e.g. a forecast's number of series features (num_features).
    """
    section = dict(cfg.model)
    name, preset = section.pop("name", "gpt"), section.pop("preset", "tiny")
    overrides = task.model_overrides() if hasattr(task, "model_overrides") else {}
    for key, value in overrides.items():
        if section.get(key, value) != value:
            raise ConfigError(
                f"model.{key}={section[key]} does not match the data: the {task.name} task needs "
                f"{key}={value}; remove the override"
            )
        section[key] = value
    if getattr(task, "vocab_size", None) is not None:
        if section.get("vocab_size", task.vocab_size) < task.vocab_size:
            raise ConfigError(
                f"model.vocab_size={section['vocab_size']} is smaller than the tokenizer's vocabulary "
                f"({task.vocab_size}); remove the override or raise it"
            )
        section.setdefault("vocab_size", task.vocab_size)
    model_cfg = build_config(name, preset, **section)
    return model_entry(name).model(model_cfg), model_cfg


def block_size(cfg: RunConfig) -> int:
    """The context length a run trains at: its model config's max_seq_len."""
    section = dict(cfg.model)
    name, preset = section.pop("name", "gpt"), section.pop("preset", "tiny")
    return build_config(name, preset, **section).max_seq_len


@torch.no_grad()
def evaluate(model, task, cfg: RunConfig, device, autocast) -> dict[str, Any]:
    """Mean loss over fixed validation batches (same batches at every evaluation) and metrics."""
    t = cfg.train
    model.eval()
    gen = torch.Generator().manual_seed(t.seed + 1)
    primary = task.primary_loss_key  # the task's loss without aux terms
    losses, aux = [], {}
    for _ in range(t.eval_iters):
        batch = {k: v.to(device) for k, v in task.batch("val", t.batch_size, gen).items()}
        with autocast():
            _, metrics = task.loss(model, batch)
        losses.append(float(metrics.pop(primary, metrics.get("loss", float("nan")))))
        for k, v in metrics.items():
            if isinstance(v, torch.Tensor) and v.numel() == 1:
                aux.setdefault(k, []).append(float(v))
    model.train()
    mean = sum(losses) / len(losses)
    out = {"loss": mean, **task.eval_summary(mean)}
    out.update({k: sum(v) / len(v) for k, v in aux.items()})
    return out


def resume_config(run_dir: str | Path, overrides: list[str] = ()) -> RunConfig:
    """The saved config of a run directory, with dotted overrides (e.g. a longer train.max_iters)."""
    saved = Path(run_dir) / "config.json"
    if not saved.is_file():
        raise CheckpointError(
            f"cannot resume: {str(saved)!r} not found; pass a run directory written by `seqlab train`"
        )
    cfg = load_run_config(overrides=overrides, base=run_config_from_dict(json.loads(saved.read_text())))
    cfg.run_dir = str(run_dir)
    return cfg


class _StopRequest:
    """The first Ctrl-C asks the loop to stop at the next step boundary (then it saves);
    a second one interrupts at once. Only in the main thread, where signals can be handled."""

    def __init__(self):
        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nseqlab: stopping after this step (Ctrl-C again to stop at once)", flush=True)

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def train(cfg: RunConfig, resume: str | Path | None = None, callbacks: list | None = None) -> TrainResult:
    """Train per `cfg`; with `resume` (a run directory), continue exactly where it stopped.

    When resuming, `cfg` should be `resume_config(run_dir)` (the saved config, optionally with
    overrides such as a longer max_iters); a model that does not match the checkpoint is an error.
    """
    callbacks = list(callbacks or [])
    info, device = distributed.setup(cfg.train.device)
    try:
        return _train(cfg, resume, callbacks, info, device)
    finally:
        distributed.teardown()


def _train(cfg: RunConfig, resume, callbacks, info, device) -> TrainResult:
    state = None
    if resume is not None:
        run_dir = Path(resume)
        ckpt_dir = ckpt.find_checkpoint(run_dir, "latest")
        state = ckpt.load_trainer_state(ckpt_dir)
        tokenizer_state = json.loads((run_dir / "task.json").read_text()).get("tokenizer")
    else:
        run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)
        if _holds_a_run(run_dir):
            raise ConfigError(
                f"run directory {str(run_dir)!r} already holds a run; continue it with --resume {run_dir}, "
                f"or choose another --run-dir (a new run never overwrites an earlier one)"
            )
        tokenizer_state = None
    t = cfg.train

    task = build_task(cfg, block_size(cfg), tokenizer_state)
    primary = task.primary_loss_key  # logged as "loss"; not twice
    torch.manual_seed(t.seed)  # the same initial weights on every process and every run
    model, model_cfg = build_model_for_task(cfg, task)
    model_name = cfg.model.get("name", "gpt")
    if state is not None:
        ckpt.load_weights(model, ckpt_dir)
    model.to(device)
    optimizer = make_optimizer(model, t.lr, t.weight_decay, (t.beta1, t.beta2))

    per_rank, rem = divmod(t.batch_size, info.world_size * t.grad_accum)
    if rem or per_rank == 0:
        raise ConfigError(
            f"train.batch_size={t.batch_size} must be a multiple of processes x grad_accum "
            f"({info.world_size} x {t.grad_accum})"
        )
    decay_iters = t.lr_decay_iters or t.max_iters
    data_gen = torch.Generator().manual_seed(t.seed)
    torch.manual_seed(t.seed + info.rank)
    step, best_val, last_eval_step = 0, math.inf, -1
    last_saved_step = -1
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        data_gen.set_state(state["data_rng"])
        torch.set_rng_state(
            state["torch_rng"][info.rank] if info.rank < len(state["torch_rng"]) else state["torch_rng"][0]
        )
        step, best_val, last_eval_step = state["step"], state["best_val"], state["last_eval_step"]
        last_saved_step = step
        for cb, cb_state in zip(callbacks, state.get("callbacks", [])):
            if hasattr(cb, "load_state_dict"):
                cb.load_state_dict(cb_state)

    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.atomic_write_text(run_dir / "config.json", json.dumps(resolved_dict(cfg, model_cfg), indent=2))
        ckpt.atomic_write_text(run_dir / "task.json", json.dumps(task.state_dict()))
    log = (
        MetricsLog(run_dir / "metrics.jsonl", keep_until_step=step if state is not None else -1)
        if info.is_main
        else None
    )

    train_model = torch.compile(model) if t.compile else model
    if info.enabled:
        train_model = DDP(train_model, device_ids=[device.index] if device.type == "cuda" else None)
    use_bf16 = t.dtype == "bfloat16"

    def autocast():
        if use_bf16:
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    meta = {
        "model": {"name": model_name, **to_dict(model_cfg)},
        "seqlab_version": __version__,
        "torch_version": torch.__version__,
    }

    def save(is_best: bool, val_loss: float | None, torch_rng: list | None = None):
        """Rank 0 writes; `torch_rng` holds every rank's RNG state when the caller gathered them."""
        nonlocal last_saved_step
        last_saved_step = step
        if not info.is_main:
            return
        trainer_state = {
            "optimizer": optimizer.state_dict(),
            "data_rng": data_gen.get_state(),
            "torch_rng": torch_rng or [torch.get_rng_state()],
            "step": step,
            "best_val": best_val,
            "last_eval_step": last_eval_step,
            "callbacks": [cb.state_dict() if hasattr(cb, "state_dict") else {} for cb in callbacks],
        }
        ckpt.save_checkpoint(
            run_dir / "checkpoints", step, model, trainer_state, {**meta, "val_loss": val_loss}, is_best
        )

    def run_eval():
        nonlocal best_val, last_eval_step
        result = None
        rng = distributed.gather_rng_states(info)
        if info.is_main:
            result = evaluate(model, task, cfg, device, autocast)
            if not math.isfinite(result["loss"]):
                raise TrainingDiverged(
                    f"validation loss is {result['loss']} at step {step}; nothing was saved for this step "
                    f"and the last good checkpoint in {run_dir / 'checkpoints'} is intact. Lower train.lr, "
                    f"enable train.grad_clip, or use float32."
                )
            is_best = result["loss"] < best_val
            best_val = min(best_val, result["loss"])
            last_eval_step = step
            log.write({"step": step, "split": "val", **result})
            for cb in callbacks:
                if hasattr(cb, "on_eval"):
                    cb.on_eval(step, result, model)
            save(is_best, result["loss"], rng)
            plot_loss_curve(
                run_dir / "metrics.jsonl",
                run_dir / "loss_curve.png",
                f"{model_name} on {cfg.data.source or 'default corpus'}",
            )
        distributed.barrier(info)
        return result

    if info.is_main:
        print(
            f"seqlab: {model_name} ({count_parameters(model) / 1e6:.2f}M params) on {device}, "
            f"{t.dtype}, {info.world_size} process(es), run dir {run_dir}"
        )
    bar = tqdm(total=t.max_iters, initial=step, disable=not (info.is_main and t.progress), dynamic_ncols=True)
    tokens_per_step = t.batch_size * task.block_size if hasattr(task, "block_size") else t.batch_size
    start_time = time.time()
    window_time, window_steps, total_tokens = time.time(), 0, 0
    stopped, last_val, running = "finished", None, None
    stop = _StopRequest()
    mid_step = False
    try:
        while step < t.max_iters:
            if stop.requested:
                raise KeyboardInterrupt
            if step % t.eval_interval == 0 and step != last_eval_step:
                last_val = run_eval()
            elif t.checkpoint_interval and step % t.checkpoint_interval == 0 and step > last_saved_step:
                save(False, None, distributed.gather_rng_states(info))
            lr = lr_at(step, t.lr, t.min_lr, t.warmup_iters, decay_iters)
            for group in optimizer.param_groups:
                group["lr"] = lr

            mid_step = True  # from drawing the batch until `step` counts the update
            batch = task.batch("train", t.batch_size, data_gen)
            rows = slice(info.rank * per_rank * t.grad_accum, (info.rank + 1) * per_rank * t.grad_accum)
            batch = {k: v[rows].to(device) for k, v in batch.items()}
            step_loss = torch.zeros((), device=device)
            step_metrics: dict[str, Any] = {}
            for micro in range(t.grad_accum):
                mb = {k: v[micro * per_rank : (micro + 1) * per_rank] for k, v in batch.items()}
                sync = micro == t.grad_accum - 1 or not info.enabled
                with contextlib.nullcontext() if sync else train_model.no_sync(), autocast():
                    loss, metrics = task.loss(train_model, mb)
                (loss / t.grad_accum).backward()
                step_loss += loss.detach().float() / t.grad_accum
                step_metrics = metrics
            running = distributed.mean_across(step_loss, info).item()  # the step's one host sync
            if not math.isfinite(running):
                raise TrainingDiverged(
                    f"training loss became {running} at step {step + 1}; stopped without saving, so "
                    f"the last good checkpoint in {run_dir / 'checkpoints'} is intact. Lower train.lr "
                    f"(now {t.lr}), keep train.grad_clip > 0, or train in float32."
                )
            if t.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            mid_step = False
            window_steps += 1
            total_tokens += tokens_per_step

            if step % t.log_interval == 0 or step == t.max_iters:
                now = time.time()
                tok_s = window_steps * tokens_per_step / max(now - window_time, 1e-9)
                window_time, window_steps = now, 0
                if info.is_main:
                    extra = {k: v for k, v in step_metrics.items() if k != primary}
                    log.write(
                        {
                            "step": step,
                            "split": "train",
                            "loss": running,
                            "lr": lr,
                            "tokens_per_s": tok_s,
                            **extra,
                        }
                    )
                    bar.set_postfix(
                        loss=f"{running:.4f}",
                        tok_s=f"{tok_s:,.0f}",
                        val=f"{best_val:.4f}" if math.isfinite(best_val) else "-",
                    )
            for cb in callbacks:
                if hasattr(cb, "on_train_step"):
                    cb.on_train_step(step, running, model, optimizer)
            bar.update(1)
            if t.max_time is not None and time.time() - start_time > t.max_time:
                stopped = "max_time"
                break
    except KeyboardInterrupt:
        bar.close()
        if mid_step:
            # The data and RNG state already belong to the next step: saving would break exact
            # resume (a first Ctrl-C waits for the step to end; this was a second one).
            if info.is_main:
                print(
                    f"\nseqlab: interrupted inside step {step + 1}; nothing saved, "
                    "the last checkpoint is intact."
                )
        elif step > last_saved_step:
            if info.is_main:
                print(f"\nseqlab: interrupted at step {step}; saving a checkpoint to resume from.")
            # No collective here (the other processes may not have been interrupted together), so
            # only rank 0's dropout RNG is saved; an evaluation-time checkpoint keeps every rank's.
            save(False, None)
        raise
    finally:
        stop.restore()
    bar.close()
    if step != last_eval_step:
        last_val = run_eval()
    elapsed = time.time() - start_time
    sample = ""
    if info.is_main:
        if hasattr(task, "sample") and t.sample_tokens > 0:
            sample = task.sample(model, prompt=t.sample_prompt, max_new_tokens=t.sample_tokens, seed=t.seed)
            with open(run_dir / "samples.txt", "a") as f:
                f.write(f"--- step {step} ---\n{sample}\n")
        val_txt = f"{last_val['loss']:.4f}" if last_val else "n/a"
        print(
            f"seqlab: {stopped} at step {step}: val loss {val_txt} (best {best_val:.4f}), "
            f"{total_tokens / max(elapsed, 1e-9):,.0f} tokens/s; run dir {run_dir}"
        )
    return TrainResult(
        run_dir=run_dir,
        step=step,
        val_loss=last_val["loss"] if last_val else None,
        best_val_loss=best_val if math.isfinite(best_val) else None,
        tokens_per_s=total_tokens / max(elapsed, 1e-9),
        sample=sample,
        stopped=stopped,
    )
