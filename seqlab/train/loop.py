"""The training loop: one explicit loop, readable in one sitting.

    build the task (from the config and, resuming, its saved state), the callbacks, the model
    (+ the task's requirements); load weights; wrap for parallelism; make the optimizer
    for step in range(start, max_iters):
        evaluate + checkpoint every eval_interval steps (every process evaluates the same
        batches: with FSDP the forward is a collective)
        draw the global batch, take this process's rows, split into accumulation micro-batches
        forward (optionally under bf16 autocast), backward, clip, AdamW step, log, callbacks

The loop knows only the task interface (seqlab.tasks.base.Task), the callback protocol
(seqlab.train.callbacks) and the parallel helpers (wrap, no_sync, clip_grad_norm, full state
dicts); nothing in it depends on the model or the task.

Exact resume: the data generator, the RNG states, the optimizer, the schedule position and
every callback's state (by name) are saved, and evaluation uses its own fixed generator, so an
interrupted and resumed run produces the same losses as an uninterrupted one. A NaN/inf loss
stops the run before any checkpoint is written, so the last good checkpoint stays intact.
Ctrl-C, SIGTERM and --max-time save a checkpoint before stopping; with several processes the
stop is agreed at a step boundary, so every process stops after the same step.

One run per directory: rank 0 holds RUN_DIR/.lock (runs.lock_run) from before the checkpoint
is read until the run ends in any way, so two processes never interleave a run's files.
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
from tqdm.auto import tqdm

from seqlab import __version__
from seqlab.config import to_dict
from seqlab.errors import ConfigError, TrainingDiverged
from seqlab.models import count_parameters, model_entry
from seqlab.train import checkpoint as ckpt
from seqlab.train import distributed, parallel
from seqlab.train.callbacks import Callback, build_callbacks
from seqlab.train.config import RunConfig, resolved_dict
from seqlab.train.metrics import MetricsLog, plot_loss_curve
from seqlab.train.optim import lr_at, make_optimizer
from seqlab.train.runs import (
    build_model_for_task,
    build_task,
    is_locked,
    lock_run,
    read_task_state,
    task_file,
)
from seqlab.train.tracking import check_installed, open_trackers


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
    while _holds_a_run(path) or is_locked(path):
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


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
        losses.append(float(metrics.pop(primary)))
        for k, v in metrics.items():
            if isinstance(v, torch.Tensor) and v.numel() == 1:
                aux.setdefault(k, []).append(float(v))
    mean = sum(losses) / len(losses)
    out = {"loss": mean, **task.eval_summary(mean)}
    out.update({k: sum(v) / len(v) for k, v in aux.items()})
    if t.eval_decode:
        with torch.no_grad(), autocast():
            out.update(task.decode_metrics(model, "val", t.eval_decode))
    model.train()
    return out


class _StopRequest:
    """The first Ctrl-C (SIGINT) or SIGTERM (what schedulers send before they kill) asks the
    loop to stop at the next step boundary, then it saves; a second one interrupts at once.
    Only in the main thread, where signals can be handled."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        name = signal.Signals(signum).name
        print(f"\nseqlab: {name}: stopping after this step ({name} again to stop at once)", flush=True)

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            # None: the previous handler was not installed from Python (the default then).
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)


def train(
    cfg: RunConfig,
    resume: str | Path | None = None,
    callbacks: list[Callback] | None = None,
    checkpoint: str = "latest",
) -> TrainResult:
    """Train per `cfg`; with `resume` (a run directory), continue exactly where it stopped.

    When resuming, `cfg` should be `runs.resume_config(run_dir)` (the saved config, optionally
    with overrides such as a longer max_iters); a model that does not match the checkpoint is an
    error. `checkpoint`: which one to resume from (latest | best | a step folder such as
    step_0000500 or step_500); the run then continues from that step, and what was logged after
    it is dropped. `callbacks`: Callback objects made in Python, beside those the config and the
    model's registry entry name (seqlab.train.callbacks).

    Rank 0 holds the run directory's lock (runs.lock_run) for the whole run: a second process
    training into it, or resuming it, gets a CheckpointError naming the holder's pid.
    """
    if resume is None and checkpoint != "latest":
        raise ConfigError(
            f"checkpoint={checkpoint!r} picks the checkpoint to resume from; it needs --resume RUN_DIR"
        )
    check_installed(cfg.train.log_to)  # every process, before any work
    info, device = distributed.setup(cfg.train.device)
    try:
        # A process that goes silent ends the others' wait with one line naming its rank.
        with distributed.guard(info):
            if resume is not None:
                run_dir = Path(resume)
            else:
                run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)
            with (
                lock_run(run_dir) if info.is_main else contextlib.nullcontext(),
                contextlib.ExitStack() as on_exit,
            ):
                return _train(cfg, resume, checkpoint, run_dir, list(callbacks or []), info, device, on_exit)
    finally:
        distributed.teardown()


def _run_callbacks(cfg: RunConfig, extra: list[Callback]) -> list[Callback]:
    """The model's registry callbacks, the config's, then the Python ones; names are unique."""
    callbacks = build_callbacks(cfg.train.callbacks, model_entry(cfg.model.get("name", "gpt")).callbacks)
    callbacks += extra
    names = [cb.name for cb in callbacks]
    if len(set(names)) != len(names):
        raise ConfigError(
            f"callback names must be unique (their states are saved by name), got {names}; give "
            "each callback made in Python its own `name`"
        )
    return callbacks


def _train(
    cfg: RunConfig, resume, checkpoint, run_dir: Path, extra_callbacks, info, device, on_exit
) -> TrainResult:
    """`on_exit` (an ExitStack) closes what the run opens, however it ends: the metrics log and
    its trackers."""
    t = cfg.train
    state, task_state = None, None
    if resume is not None:
        # Read under the lock: no other process is writing a checkpoint now.
        ckpt_dir, ckpt_meta = ckpt.open_checkpoint(run_dir, checkpoint)
        state = ckpt.load_trainer_state(ckpt_dir, ckpt_meta)
        task_state = read_task_state(run_dir, cfg.task)
    else:
        if _holds_a_run(run_dir):
            raise ConfigError(
                f"run directory {str(run_dir)!r} already holds a run; continue it with --resume {run_dir}, "
                f"or choose another --run-dir (a new run never overwrites an earlier one)"
            )

    task = build_task(cfg, task_state)
    primary = task.primary_loss_key  # logged as "loss"; not twice
    callbacks = _run_callbacks(cfg, extra_callbacks)
    torch.manual_seed(t.seed)  # the same initial weights on every process and every run
    model, model_cfg = build_model_for_task(cfg, task)
    model_name = cfg.model.get("name", "gpt")
    if state is not None:
        ckpt.load_weights(model, ckpt_dir, ckpt_meta)
    model.to(device)
    # torch.compile before the parallel wrapper, as DDP recommends; evaluation and samples use
    # `model` itself (with FSDP it is sharded in place, so they run on every process).
    train_model = parallel.wrap(torch.compile(model) if t.compile else model, info, device, t.parallel)
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
        parallel.load_optimizer_state(model, optimizer, state["optimizer"], t.parallel)
        data_gen.set_state(state["data_rng"])
        torch.set_rng_state(
            state["torch_rng"][info.rank] if info.rank < len(state["torch_rng"]) else state["torch_rng"][0]
        )
        step, best_val, last_eval_step = state["step"], state["best_val"], state["last_eval_step"]
        last_saved_step = step
        saved_callbacks = state["callbacks"]
        for cb in callbacks:
            if cb.name in saved_callbacks:
                cb.load_state_dict(saved_callbacks[cb.name])
        dropped = sorted(set(saved_callbacks) - {cb.name for cb in callbacks})
        if dropped and info.is_main:
            print(f"seqlab: ignoring the saved state of {', '.join(dropped)}: not a callback of this run")

    log = None
    if info.is_main:
        resolved = resolved_dict(cfg, model_cfg)
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.atomic_write_text(run_dir / "config.json", json.dumps(resolved, indent=2))
        ckpt.atomic_write_text(run_dir / "task.json", json.dumps(task_file(task)))
        kept = step if state is not None else -1  # a new run keeps nothing of an earlier log
        log = on_exit.enter_context(MetricsLog(run_dir / "metrics.jsonl", kept))
        log.trackers += open_trackers(t.log_to, run_dir, resolved, kept)  # closed with the log

    use_bf16 = t.dtype == "bfloat16"

    def autocast():
        if use_bf16:
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    meta = {
        "model": {"name": model_name, **to_dict(model_cfg)},
        "task": cfg.task,
        "seqlab_version": __version__,
        "torch_version": torch.__version__,
    }

    def report(cb: Callback, values: dict[str, Any] | None) -> None:
        """What a callback did or measured goes to metrics.jsonl."""
        if values and info.is_main:
            log.write({"step": step, "split": "callback", "callback": cb.name, **values})

    def save(is_best: bool, val_loss: float | None, torch_rng: list | None = None):
        """Every process gathers the full state (a collective with FSDP); rank 0 writes.

        `torch_rng` holds every rank's RNG state when the caller gathered them."""
        nonlocal last_saved_step
        last_saved_step = step
        model_state = parallel.model_state_dict(model, t.parallel)
        optimizer_state = parallel.optimizer_state_dict(model, optimizer, t.parallel)
        if not info.is_main:
            return
        trainer_state = {
            "optimizer": optimizer_state,
            "data_rng": data_gen.get_state(),
            "torch_rng": torch_rng or [torch.get_rng_state()],
            "step": step,
            "best_val": best_val,
            "last_eval_step": last_eval_step,
            "callbacks": {cb.name: cb.state_dict() for cb in callbacks},
        }
        ckpt.save_checkpoint(
            run_dir / "checkpoints", step, model_state, trainer_state, {**meta, "val_loss": val_loss}, is_best
        )

    def run_eval():
        nonlocal best_val, last_eval_step
        rng = distributed.gather_rng_states(info)
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
        if info.is_main:
            log.write({"step": step, "split": "val", **result})
        for cb in callbacks:
            report(cb, cb.on_eval(step, result, model))
        save(is_best, result["loss"], rng)
        if info.is_main:
            plot_loss_curve(
                run_dir / "metrics.jsonl",
                run_dir / "loss_curve.png",
                f"{model_name} on {cfg.data.source or 'default data'}",
            )
            for cb in callbacks:
                cb.on_artifacts(step, run_dir)
        distributed.barrier(info)
        return result

    if info.is_main:
        print(
            f"seqlab: {model_name} ({count_parameters(model) / 1e6:.2f}M params) on {device}, "
            f"{t.dtype}, {info.world_size} process(es), run dir {run_dir}"
        )
    bar = tqdm(total=t.max_iters, initial=step, disable=not (info.is_main and t.progress), dynamic_ncols=True)
    start_time = time.time()
    window_time, window_tokens, total_tokens = time.time(), 0, 0
    stopped, last_val, running = "finished", None, None
    stop = _StopRequest()
    mid_step = agreed_stop = False
    try:
        while step < t.max_iters:
            if step % t.eval_interval == 0 and step != last_eval_step:
                last_val = run_eval()
            elif t.checkpoint_interval and step % t.checkpoint_interval == 0 and step > last_saved_step:
                save(False, None, distributed.gather_rng_states(info))
            lr = lr_at(step, t.lr, t.min_lr, t.warmup_iters, decay_iters)
            for group in optimizer.param_groups:
                group["lr"] = lr

            mid_step = True  # from drawing the batch until `step` counts the update
            batch = task.batch("train", t.batch_size, data_gen)
            tokens = task.count_tokens(batch)  # the global batch, on the CPU: no device sync
            rows = slice(info.rank * per_rank * t.grad_accum, (info.rank + 1) * per_rank * t.grad_accum)
            batch = {k: v[rows].to(device) for k, v in batch.items()}
            step_loss = torch.zeros((), device=device)
            step_metrics: dict[str, Any] = {}
            for micro in range(t.grad_accum):
                mb = {k: v[micro * per_rank : (micro + 1) * per_rank] for k, v in batch.items()}
                sync = micro == t.grad_accum - 1
                with parallel.no_sync(train_model, t.parallel, sync), autocast():
                    loss, metrics = task.loss(train_model, mb)
                (loss / t.grad_accum).backward()
                step_loss += loss.detach().float() / t.grad_accum
                step_metrics = metrics
            # The loss and the stop flags (Ctrl-C / SIGTERM, --max-time) travel together: the
            # step's one host sync and, with several processes, its one collective, so every
            # process stops after the same step.
            over_time = t.max_time is not None and time.time() - start_time > t.max_time
            flags = step_loss.new_tensor([float(stop.requested), float(over_time)])
            running, interrupted, over_time = distributed.mean_across(
                torch.cat([step_loss.reshape(1), flags]), info
            ).tolist()
            if not math.isfinite(running):
                raise TrainingDiverged(
                    f"training loss became {running} at step {step + 1}; stopped without saving, so "
                    f"the last good checkpoint in {run_dir / 'checkpoints'} is intact. Lower train.lr "
                    f"(now {t.lr}), keep train.grad_clip > 0, or train in float32."
                )
            if t.grad_clip > 0:
                parallel.clip_grad_norm(model, t.grad_clip, t.parallel)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            mid_step = False
            window_tokens += tokens
            total_tokens += tokens

            if step % t.log_interval == 0 or step == t.max_iters:
                now = time.time()
                tok_s = window_tokens / max(now - window_time, 1e-9)
                window_time, window_tokens = now, 0
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
                report(cb, cb.on_train_step(step, running, model, optimizer))
            bar.update(1)
            # One process needs no agreement: a stop asked during this step's callbacks counts.
            if interrupted > 0 or (not info.enabled and stop.requested):
                agreed_stop = True
                raise KeyboardInterrupt
            if over_time > 0:
                stopped = "max_time"
                break
    except KeyboardInterrupt:
        bar.close()
        # An agreed stop finds every process at the same step boundary, so the checkpoint may
        # gather state from all of them; any other interrupt reached this process alone.
        lone = info.enabled and not agreed_stop
        if mid_step:
            # The data and RNG state already belong to the next step: saving would break exact
            # resume (a first Ctrl-C waits for the step to end; this was a second one).
            if info.is_main:
                print(
                    f"\nseqlab: interrupted inside step {step + 1}; nothing saved, "
                    "the last checkpoint is intact."
                )
        elif step > last_saved_step and lone and t.parallel == "fsdp":
            if info.is_main:
                print(
                    f"\nseqlab: interrupted at step {step} on this process only; a sharded model "
                    "cannot be saved without the others, so nothing was saved."
                )
        elif step > last_saved_step:
            if info.is_main:
                print(f"\nseqlab: interrupted at step {step}; saving a checkpoint to resume from.")
            # Alone, only rank 0's dropout RNG can be saved; an agreed stop keeps every rank's.
            save(False, None, None if lone else distributed.gather_rng_states(info))
        raise
    finally:
        stop.restore()
    bar.close()
    if step != last_eval_step:
        last_val = run_eval()
    elapsed = time.time() - start_time
    sample = ""
    if t.sample_tokens > 0:
        # Every process samples (the same computation: with FSDP the forward is a collective).
        sample = task.sample(model, run_dir=run_dir if info.is_main else None)
    if info.is_main:
        if sample:
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
