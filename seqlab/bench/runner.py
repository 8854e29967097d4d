"""Run benchmark cases: check correctness, then train with the real trainer and time everything.

For each case, in order:
1. correctness, in float32 on a freshly built model: changing future tokens leaves past
   logits unchanged; with a cache, incremental logits equal full recomputation and cached
   greedy generation equals uncached; the loss is finite. A case that fails is refused and
   nothing of it is timed.
2. a probe: peak memory of building the model and optimizer and taking a few training steps
   (see memory.py), then FLOPs of one training step counted by torch (see flops.py).
3. training with `seqlab.train.train` for the budget (max_iters or max_time). Throughput is
   the median tokens/s over the trainer's logged windows, leaving out the first window
   (warmup, evaluation at step 0) and every window that contains an evaluation or checkpoint.
   MFU = FLOPs per step x steps/s / measured matmul peak of the dtype (see peak.py).
4. decode latency per token at each context length: prefill a random prompt of that length,
   then time single-token decode steps (cached when the model can decode (`can_decode`), else full
   recomputation), median over repeats after one warmup. A model with a fixed context
   (`max_positions`: learned positions, LFM's token mixing) is timed only at the contexts it
   holds (context + decode steps <= max_positions); the others are recorded as
   {"context", "status": "n/a", "reason": "max_seq_len N"}, never timed on a cropped prefix.
"""

import contextlib
import json
import shutil
import statistics
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from seqlab.bench.cases import PEER, RECIPE, Case, peer_available
from seqlab.bench.flops import training_flops
from seqlab.bench.memory import PeakMemory
from seqlab.bench.peak import matmul_peak_flops, sync
from seqlab.bench.report import environment, write_report
from seqlab.errors import ConfigError, SeqlabError
from seqlab.models import count_parameters, model_entry
from seqlab.models.generation import generate
from seqlab.tasks.base import sequence_context
from seqlab.train import RunConfig, load_run_config, train
from seqlab.train.distributed import setup as setup_device
from seqlab.train.metrics import read_metrics
from seqlab.train.optim import make_optimizer
from seqlab.train.runs import build_model_for_task, build_task, model_config

TOKEN_COUNT_BATCHES = 8  # batches whose mean token count converts tokens/s into steps/s


class CaseRefused(SeqlabError):
    """A case failed its correctness checks, so none of its numbers would mean anything."""


@dataclass
class BenchSettings:
    data: str | None = None  # None = the embedded corpus; else a text file, folder or hf:<name>
    tokenizer: str = "char"
    max_iters: int = 2000
    max_time: float | None = None  # seconds of training per case, if it comes before max_iters
    device: str = "auto"
    decode_contexts: tuple[int, ...] = (64, 256, 1024)
    decode_steps: int = 32
    decode_repeats: int = 3
    memory_steps: int = 3
    peak_sizes: tuple[int, ...] | None = None  # matmul sizes for the peak; None = per device
    progress: bool = True
    peer: bool = True


@dataclass
class CaseContext:
    """What the runner needs to build, check and time one case."""

    case: Case
    cfg: RunConfig
    run_dir: Path
    device: torch.device
    task: Any = None
    result: dict[str, Any] = field(default_factory=dict)

    def autocast(self):
        if self.case.dtype == "bfloat16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def case_config(case: Case, settings: BenchSettings, run_dir: Path) -> RunConfig:
    """The trainer's config for a case: RECIPE, the bench's budget, then the case's overrides."""
    pairs = [
        f"model.name={case.model}",
        f"model.preset={case.preset}",
        *RECIPE,
        f"train.max_iters={settings.max_iters}",
        f"train.max_time={'null' if settings.max_time is None else settings.max_time}",
        f"train.dtype={case.dtype}",
        f"train.device={settings.device}",
        f"train.progress={'true' if settings.progress else 'false'}",
        f"data.tokenizer={settings.tokenizer}",
        *case.overrides,
    ]
    cfg = load_run_config(overrides=pairs)
    if settings.data is not None:
        cfg.data.source = settings.data  # set directly: a path must not go through YAML parsing
    cfg.run_dir = str(run_dir)
    return cfg


def _decodes(model: torch.nn.Module) -> bool:
    """Whether the model decodes incrementally with a cache (the models' `can_decode`)."""
    return bool(getattr(model, "can_decode", False))


def decode_limit(model: torch.nn.Module) -> int | None:
    """Longest sequence the model can read (the models' `max_positions`), None if unbounded."""
    return getattr(model, "max_positions", None)


def decode_unsupported(context: int, steps: int, limit: int | None) -> dict[str, Any] | None:
    """The decode row of a context the model cannot hold (prompt + generated tokens past its
    fixed context), or None when it can be timed."""
    if limit is None or context + steps <= limit:
        return None
    return {"context": context, "status": "n/a", "reason": f"max_seq_len {limit}"}


@torch.no_grad()
def check_correctness(model: torch.nn.Module, vocab_size: int, max_seq_len: int, device) -> list[str]:
    """Invariants every token model must satisfy before it is timed; returns the failures."""
    failures = []
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(0)
    t = min(max_seq_len, 32)
    cut = max(t // 2, 1)
    x = torch.randint(vocab_size, (2, t), generator=gen).to(device)
    y = x.clone()
    y[:, cut:] = torch.randint(vocab_size, (2, t - cut), generator=gen).to(device)
    try:
        full = model(x).logits
        if not torch.isfinite(full).all():
            failures.append("logits are not finite")
        diff = (full[:, :cut] - model(y).logits[:, :cut]).abs().max().item()
        if diff > 1e-4:
            failures.append(
                f"not causal: changing tokens at positions >= {cut} changed the logits before {cut} "
                f"by up to {diff:.3g}"
            )
        if _decodes(model):
            cache = model.make_cache(2, t)
            pieces = [model(x[:, :cut], cache=cache).logits]
            pieces += [model(x[:, i : i + 1], cache=cache).logits for i in range(cut, t)]
            diff = (torch.cat(pieces, dim=1) - full).abs().max().item()
            if diff > 1e-4:
                failures.append(f"cached decoding differs from full recomputation by up to {diff:.3g}")
            new = min(8, t - cut)
            cached = generate(model, x[:, :cut], new, temperature=0)
            uncached = generate(model, x[:, :cut], new, temperature=0, use_cache=False)
            if not torch.equal(cached, uncached):
                failures.append("cached greedy generation differs from uncached greedy generation")
        loss = model(x[:, :-1], targets=x[:, 1:]).total_loss()
        if not torch.isfinite(loss):
            failures.append(f"loss is {loss.item()}")
    finally:
        model.train(was_training)
    return failures


def steady_windows(records: list[dict], checkpoint_interval: int | None = None) -> list[float]:
    """tokens/s of the logged train windows that hold no warmup, evaluation or checkpoint.

    A window ends at a logged step s and began at the previous logged step p; an evaluation
    logged at step e runs inside it when p <= e < s (the trainer evaluates before step e + 1).
    The first window is always left out: it holds the first steps' one-time costs.
    """
    pauses = {r["step"] for r in records if r.get("split") == "val"}
    kept, prev = [], None
    for r in records:
        if r.get("split") != "train" or "tokens_per_s" not in r:
            continue
        s = r["step"]
        if prev is not None:
            paused = any(prev <= e < s for e in pauses)
            if checkpoint_interval:
                paused |= any(e % checkpoint_interval == 0 and e > 0 for e in range(prev, s))
            if not paused:
                kept.append(r["tokens_per_s"])
        prev = s
    return kept


def _train_steps(ctx: CaseContext, batch: dict[str, torch.Tensor], steps: int) -> torch.nn.Module:
    """Build the case's model and optimizer and take `steps` training steps on `batch`."""
    t = ctx.cfg.train
    torch.manual_seed(t.seed)
    model, _ = build_model_for_task(ctx.cfg, ctx.task)
    model.to(ctx.device)
    optimizer = make_optimizer(model, t.lr, t.weight_decay, (t.beta1, t.beta2))
    for _ in range(steps):
        with ctx.autocast():
            loss, _ = ctx.task.loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync(ctx.device)
    return model


def probe_training(ctx: CaseContext, memory_steps: int) -> dict[str, Any]:
    """Peak memory of a few training steps (model and optimizer included), then FLOPs per step."""
    t = ctx.cfg.train
    micro = t.batch_size // t.grad_accum
    gen = torch.Generator().manual_seed(t.seed)
    batch = {k: v.to(ctx.device) for k, v in ctx.task.batch("train", micro, gen).items()}
    # An unmeasured pass first: one-time costs (kernel libraries, thread pools, lazy imports)
    # would otherwise be charged to whichever case happens to run first.
    _train_steps(ctx, batch, 1)
    with PeakMemory(ctx.device) as mem:
        model = _train_steps(ctx, batch, memory_steps)
    flops = training_flops(model, ctx.task.loss, batch, ctx.autocast) * t.grad_accum
    return {
        "params": count_parameters(model),
        "flops_per_step": flops,
        "memory": {"peak_bytes": mem.peak_bytes, "method": mem.method},
    }


def run_training(ctx: CaseContext) -> dict[str, Any]:
    if ctx.run_dir.exists():
        shutil.rmtree(ctx.run_dir)  # the trainer would otherwise mix in an earlier run's checkpoints
    start = time.perf_counter()
    result = train(ctx.cfg)
    wall = time.perf_counter() - start
    t = ctx.cfg.train
    # The mean over several batches: with variable-size examples (ARC grids, words) one batch's
    # count is off by the batch-to-batch spread.
    gen = torch.Generator().manual_seed(t.seed)
    counts = [
        ctx.task.count_tokens(ctx.task.batch("train", t.batch_size, gen)) for _ in range(TOKEN_COUNT_BATCHES)
    ]
    tokens_per_step = statistics.mean(counts)
    windows = steady_windows(read_metrics(ctx.run_dir / "metrics.jsonl"), t.checkpoint_interval)
    tokens_per_s = statistics.median(windows) if windows else result.tokens_per_s
    return {
        "steps": result.step,
        "stopped": result.stopped,
        "val_loss": result.val_loss,
        "best_val_loss": result.best_val_loss,
        "tokens_per_step": tokens_per_step,
        "tokens_per_s": tokens_per_s,
        "steps_per_s": tokens_per_s / tokens_per_step,
        "examples_per_s": tokens_per_s / tokens_per_step * t.batch_size,
        # "steady": median over clean log windows; "overall": the run's average, evaluations
        # included (only when the run was too short to have a clean window).
        "throughput_source": "steady" if windows else "overall",
        # every clean window, so a run disturbed by other work on the machine shows as spread
        "window_tokens_per_s": windows,
        "overall_tokens_per_s": result.tokens_per_s,
        "wall_s": wall,
        "run_dir": str(ctx.run_dir),
    }


@torch.no_grad()
def decode_latency(
    model: torch.nn.Module,
    vocab_size: int,
    context: int,
    steps: int,
    repeats: int,
    device: torch.device,
    autocast=contextlib.nullcontext,
) -> dict[str, Any]:
    """Milliseconds per generated token after a `context`-token prompt (batch 1), and prefill time."""
    model.eval()
    cached = _decodes(model)
    prompt = torch.randint(vocab_size, (1, context), generator=torch.Generator().manual_seed(context))
    prompt = prompt.to(device)
    state: dict[str, Any] = {}

    def prefill() -> torch.Tensor:
        state["ids"] = prompt
        state["cache"] = model.make_cache(1, context + steps) if cached else None
        return model(prompt, cache=state["cache"]).logits[:, -1]

    def step(logits: torch.Tensor) -> torch.Tensor:
        token = logits.argmax(dim=-1, keepdim=True)  # [1, 1]
        if cached:
            return model(token, cache=state["cache"]).logits[:, -1]
        state["ids"] = torch.cat([state["ids"], token], dim=1)
        return model(state["ids"]).logits[:, -1]

    ms_per_token, prefill_ms = time_decode(prefill, step, steps, repeats, device, autocast)
    return {
        "context": context,
        "ms_per_token": ms_per_token,
        "prefill_ms": prefill_ms,
        "mode": "kv-cache" if cached else "recompute",
    }


def time_decode(prefill, step, steps: int, repeats: int, device, autocast=contextlib.nullcontext):
    """(median ms per decoding step, median prefill ms) over `repeats` passes after one warmup
    pass (kernels, caches, RoPE tables): `prefill()` starts a sequence and returns its last
    logits, `step(logits)` decodes one token and returns the next logits."""
    per_token, prefill_ms = [], []
    for _ in range(repeats + 1):
        with autocast():
            sync(device)
            start = time.perf_counter()
            logits = prefill()
            sync(device)
            mid = time.perf_counter()
            for _ in range(steps):
                logits = step(logits)
            sync(device)
            end = time.perf_counter()
        prefill_ms.append((mid - start) * 1e3)
        per_token.append((end - mid) * 1e3 / steps)
    return statistics.median(per_token[1:]), statistics.median(prefill_ms[1:])


def run_case(ctx: CaseContext, settings: BenchSettings) -> dict[str, Any]:
    """Check, probe, train and time one case; raises CaseRefused if a correctness check fails."""
    out = ctx.result
    torch.manual_seed(ctx.cfg.train.seed)
    model, model_cfg = build_model_for_task(ctx.cfg, ctx.task)
    model.to(ctx.device)
    failures = check_correctness(model, model_cfg.vocab_size, model_cfg.max_seq_len, ctx.device)
    out["checks"] = {"passed": not failures, "failures": failures, "cached": _decodes(model)}
    if failures:
        raise CaseRefused(f"{ctx.case.name} failed its correctness checks: {'; '.join(failures)}")
    del model
    out.update(probe_training(ctx, settings.memory_steps))
    out["train"] = run_training(ctx)
    peak = matmul_peak_flops(ctx.case.dtype, ctx.device, settings.peak_sizes)
    out["peak_flops"] = peak
    out["mfu"] = out["flops_per_step"] * out["train"]["steps_per_s"] / peak
    torch.manual_seed(ctx.cfg.train.seed)
    model, model_cfg = build_model_for_task(ctx.cfg, ctx.task)
    model.to(ctx.device)
    out["decode"] = []
    limit = decode_limit(model)
    for context in settings.decode_contexts:
        unsupported = decode_unsupported(context, settings.decode_steps, limit)
        if unsupported is not None:
            out["decode"].append(unsupported)
            continue
        try:
            out["decode"].append(
                decode_latency(
                    model,
                    model_cfg.vocab_size,
                    context,
                    settings.decode_steps,
                    settings.decode_repeats,
                    ctx.device,
                    ctx.autocast,
                )
            )
        except (RuntimeError, SeqlabError, IndexError) as e:
            # e.g. a model with learned positions cannot go past max_seq_len: record, go on.
            out["decode"].append({"context": context, "error": f"{type(e).__name__}: {e}"})
    return out


def run_cases(cases: list[Case], settings: BenchSettings, out_dir: Path, log=print) -> list[dict[str, Any]]:
    """Run every case in order, in this process; a refused or failing case does not stop the rest.

    Configs are resolved first, so a bad override fails before anything is trained. A peer
    case whose config cannot be built (an override the peer has no key for) is skipped.
    """
    _, device = setup_device(settings.device)
    contexts, results, tasks = [], [], {}
    for case in cases:
        result = {"name": case.name, **asdict(case), "status": "pending", "reason": None}
        results.append(result)
        if model_entry(case.model).task != "lm":
            result.update(status="skipped", reason="the bench measures token models (task 'lm') only")
            continue
        if case.is_peer and not peer_available():
            result.update(
                status="skipped", reason="x-transformers is not installed (pip install 'seqlab[bench]')"
            )
            continue
        try:
            cfg = case_config(case, settings, out_dir / "runs" / case.name)
        except ConfigError as e:
            if not case.is_peer:
                raise
            result.update(status="skipped", reason=f"the peer cannot take this case's config: {e}")
            continue
        contexts.append(CaseContext(case, cfg, Path(cfg.run_dir), device, result=result))
    for ctx in contexts:
        # Cases with the same data, task options and context share one task (one tokenized corpus).
        context = sequence_context(model_config(ctx.cfg), ctx.cfg.task_options.get("context"))
        key = (json.dumps(asdict(ctx.cfg.data)), json.dumps(ctx.cfg.task_options), context)
        if key not in tasks:
            tasks[key] = build_task(ctx.cfg)
        ctx.task = tasks[key]
        log(f"bench: {ctx.case.name}: checking, then training {ctx.cfg.train.max_iters} steps")
        try:
            run_case(ctx, settings)
            ctx.result["status"] = "ok"
        except CaseRefused as e:
            ctx.result.update(status="refused", reason=str(e))
            log(f"bench: REFUSED {e}")
        except (SeqlabError, RuntimeError) as e:
            ctx.result.update(status="error", reason=f"{type(e).__name__}: {e}")
            log(f"bench: {ctx.case.name} failed:\n{traceback.format_exc()}")
    return results


def comparisons(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """seqlab vs peer for every pair of finished cases with the same preset, dtype and overrides."""
    peers = {(r["preset"], r["dtype"], tuple(r["overrides"])): r for r in results if r["model"] == PEER}
    out = []
    for r in results:
        p = peers.get((r["preset"], r["dtype"], tuple(r["overrides"])))
        if r["model"] == PEER or p is None or r["status"] != "ok" or p["status"] != "ok":
            continue
        mem, peer_mem = r["memory"]["peak_bytes"], p["memory"]["peak_bytes"]
        peer_decode = {d["context"]: d for d in p["decode"] if "ms_per_token" in d}
        out.append(
            {
                "model": r["model"],
                "peer": PEER,
                "preset": r["preset"],
                "dtype": r["dtype"],
                "overrides": r["overrides"],
                # > 1 means seqlab is faster / more efficient / leaner
                "tokens_per_s_ratio": r["train"]["tokens_per_s"] / p["train"]["tokens_per_s"],
                "mfu_ratio": r["mfu"] / p["mfu"],
                "memory_ratio": peer_mem / mem if mem and peer_mem else None,
                # keyed by str(context) so the JSON round-trips unchanged
                "decode_speedup": {
                    str(d["context"]): peer_decode[d["context"]]["ms_per_token"] / d["ms_per_token"]
                    for d in r["decode"]
                    if "ms_per_token" in d and d["context"] in peer_decode
                },
                # < 0 means seqlab reached a lower validation loss
                "val_loss_diff": (
                    r["train"]["val_loss"] - p["train"]["val_loss"]
                    if r["train"]["val_loss"] is not None and p["train"]["val_loss"] is not None
                    else None
                ),
                "flops_per_step_ratio": r["flops_per_step"] / p["flops_per_step"],
            }
        )
    return out


def run_bench(
    cases: list[Case], settings: BenchSettings, out_dir: str | Path, command: str | None = None, log=print
) -> dict[str, Any]:
    """Run `cases`, write results.json and results.md into `out_dir`, return the report."""
    out_dir = Path(out_dir)
    _, device = setup_device(settings.device)
    dtypes = list(dict.fromkeys(c.dtype for c in cases))
    # Before the cases run: the commit and date are those of the code that is measured.
    env = environment(device, dtypes, settings.peak_sizes, command)
    results = run_cases(cases, settings, out_dir, log)
    report = {
        "environment": env,
        "settings": {**asdict(settings), "recipe": list(RECIPE), "out_dir": str(out_dir)},
        "cases": results,
        "comparisons": comparisons(results),
    }
    write_report(report, out_dir)
    return report
