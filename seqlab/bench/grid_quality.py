"""heptapod vs the gpt baseline on grid data, same preset, examples and budget: one command each.

    python -m seqlab.bench.grid_quality --data mazes --grid 9 --preset tiny --steps 1500
    python -m seqlab.bench.grid_quality --data mazes --grid 9,15,21 --preset baby --steps 5000
    python -m seqlab.bench.grid_quality --data mazes --models heptapod --iterations 1,2,4
    python -m seqlab.bench.grid_quality --data digits --preset tiny --steps 1500
    python -m seqlab.bench.grid_quality --data arc --task grid2grid --steps 3000

For every model (and --grid size, and heptapod --iterations), one run through seqlab's trainer
with the same preset, batch, steps, learning rate and train.seed, so both models see the same
examples (mazes are generated from the same seeds). heptapod reads the 2D grid (masked modeling;
one-pass decoding for grid2grid); gpt reads it flattened in raster order (grid_codec's layouts)
and decodes greedily with its KV cache.

Measured at the end, on the validation split: the validation loss, bits per cell (the grid
task: comparable between the two, see seqlab.tasks.grid), and for grid2grid exact_match and
cell_accuracy over the first --decode pairs of the fixed held-out set (mazes) or the ARC
evaluation tasks' test pairs. Also per run: parameters, cells read in training, seconds, and
the training time as a ratio to gpt's measured in the same process (the machine is shared and
noisy: compare ratios). torch runs --threads threads (default 1).

Results: a table on stdout and --out/results.json (every number and the environment: device,
torch version, commit, command line); the run directories stay under --out.
"""

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch

from seqlab.bench.report import device_name, git_commit
from seqlab.models import count_parameters
from seqlab.train import load_run_config, train
from seqlab.train.metrics import read_metrics
from seqlab.train.runs import build_model_for_task, build_task


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _overrides(args, model: str, grid: int | None, iterations: int | None, run_dir: Path) -> list[str]:
    out = [
        f"model.name={model}",
        f"model.preset={args.preset}",
        f"data.source={args.data}",
        f"train.max_iters={args.steps}",
        f"train.batch_size={args.batch_size}",
        f"train.lr={args.lr}",
        f"train.warmup_iters={min(100, args.steps // 10)}",
        f"train.seed={args.seed}",
        f"train.eval_interval={args.steps}",
        f"train.eval_iters={args.eval_iters}",
        f"train.eval_decode={args.decode}",
        "train.sample_tokens=1",  # the samples PNG of the final model
        "train.log_interval=50",
        "train.progress=false",
        f"train.device={args.device}",
        f"run_dir={run_dir}",
    ]
    if args.task:
        out.append(f"task={args.task}")
    if grid is not None:
        out.append(f"data.grid={grid}")
    if iterations is not None:
        out.append(f"model.iterations={iterations}")
    return out + list(args.set or [])


def run_one(args, model: str, grid: int | None, iterations: int | None) -> dict:
    name = f"{model}-{args.data}" + (f"-{grid}" if grid else "") + (f"-it{iterations}" if iterations else "")
    run_dir = Path(args.out) / name
    cfg = load_run_config(overrides=_overrides(args, model, grid, iterations, run_dir))
    task = build_task(cfg)
    params = count_parameters(build_model_for_task(cfg, task)[0])
    cells = task.count_tokens(task.batch("train", cfg.train.batch_size, torch.Generator().manual_seed(0)))
    start = time.time()
    train(cfg)
    seconds = time.time() - start
    val = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["split"] == "val"][-1]
    keep = ("loss", "bits_per_cell", "bits_per_target", "exact_match", "cell_accuracy", "argmax_accuracy")
    return {
        "run": name,
        "model": model,
        "task": cfg.task,
        "grid": grid,
        "iterations": iterations,
        "params": params,
        "examples": cfg.train.batch_size * cfg.train.max_iters,
        "cells_read": cells * cfg.train.max_iters,  # one batch's count x steps
        "seconds": seconds,
        **{k: val[k] for k in keep if k in val},
    }


def table(rows: list[dict]) -> str:
    cols = ["run", "task", "params", "examples", "cells_read", "seconds", "time_vs_gpt", "loss"]
    cols += [c for c in ("bits_per_cell", "exact_match", "cell_accuracy") if any(c in r for r in rows)]
    fmt = {
        "params": "{:,}",
        "cells_read": "{:,}",
        "seconds": "{:.0f}",
        "time_vs_gpt": "{:.2f}",
        "loss": "{:.4f}",
        "bits_per_cell": "{:.4f}",
        "exact_match": "{:.3f}",
        "cell_accuracy": "{:.3f}",
    }
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [fmt.get(c, "{}").format(r[c]) if r.get(c) is not None else "-" for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="mazes", help="mazes | digits | arc | a text file")
    p.add_argument("--task", help="grid | grid2grid (default: the data's own: mazes grid2grid, else grid)")
    p.add_argument("--grid", type=_ints, help="data.grid sizes, comma-separated (mazes: 9,15,21)")
    p.add_argument("--models", default="heptapod,gpt", help="comma-separated model names")
    p.add_argument("--iterations", type=_ints, help="heptapod model.iterations values, comma-separated")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--eval-iters", type=int, default=20)
    p.add_argument("--decode", type=int, default=200, help="validation pairs decoded (grid2grid)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="overrides for every run")
    p.add_argument("--out", default="runs/grid_quality")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for grid in args.grid or [None]:
        for model in args.models.split(","):
            for iterations in (args.iterations or [None]) if model == "heptapod" else [None]:
                rows.append(run_one(args, model, grid, iterations))
                print(json.dumps(rows[-1]), flush=True)
        gpt = [r for r in rows if r["grid"] == grid and r["model"] == "gpt"]
        for r in rows:
            if r["grid"] == grid and gpt:
                r["time_vs_gpt"] = r["seconds"] / gpt[0]["seconds"]
    env = {
        "device": device_name(torch.device("cuda" if args.device.startswith("cuda") else "cpu")),
        "torch": torch.__version__,
        "threads": args.threads,
        "commit": git_commit(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(["python -m seqlab.bench.grid_quality", *sys.argv[1:]]),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"environment": env, "runs": rows}, indent=2))
    print(f"{env['device']}, torch {env['torch']}, {args.threads} thread(s), commit {env['commit']}")
    print(env["command"])
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
