"""Does the autonomic controller help? One command for the comparison its spec asks for.

    python -m seqlab.bench.autonomic_claim --seeds 3 --task lm --data tinyshakespeare.txt
    python -m seqlab.bench.autonomic_claim --seeds 3 --task g2p

For each seed, four runs of the same model, data, recipe and budget (seqlab.bench.cases.RECIPE,
nanoGPT's shakespeare_char CPU recipe, --max-iters steps):

    autonomic   the controller moves the RoPE base and the window (train.autonomic=true and
                the --controller options, e.g. factor=1.01)
    fixed_start no controller: the model's start values (model.rope_base, model.window)
    fixed_end   no controller: the values the autonomic run of the same seed ended with, held
                fixed from step 0 (model.rope_base / model.window set to them)
    schedule    no controller: the window grows linearly from the start window to the context
                (g2p: 32, the longest cmudict entry) in 4 stages by 3/4 of the budget, with
                NTK-aware RoPE base and YaRN temperature (the window_schedule callback;
                modded-nanogpt style)

and one table: final validation loss per arm and seed, mean and standard deviation, and the
values each arm ended with. Results go to --out (results.json, results.md, the run dirs);
every number comes from the runs' own metrics.jsonl.

--task lm trains the `hybrid` LM (default preset baby) on --data (default: the embedded
corpus); --task g2p trains the encoder-decoder host with hybrid self-attention on the
grapheme-to-phoneme task (needs the g2p extra, and the `autonomic_host` model).

    python -m seqlab.bench.autonomic_claim --speed --preset baby

times instead, interleaving the cases call by call in one process (the ratios compare the
same moments of a noisy machine): a training step (forward, backward, AdamW) of hybrid vs gpt
at batch 12 x context, HybridAttention vs causal Attention forward + backward at the same
width, and the autonomic callback's own cost per step.
"""

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from seqlab.bench.cases import RECIPE
from seqlab.errors import ConfigError
from seqlab.layers.autonomic import Targets
from seqlab.models import MODELS
from seqlab.train import load_run_config, train
from seqlab.train.metrics import read_metrics
from seqlab.train.runs import load_run

TASKS = {
    # task -> (model, seqlab task name, the window the schedule grows to: None = the context)
    "lm": ("hybrid", "lm", None),
    # cmudict words and pronunciations are at most 32 symbols + eos; the host's max_seq_len
    # (512) only sizes its caches.
    "g2p": ("autonomic_host", "seq2seq", 32),
}
ARMS = ("autonomic", "fixed_start", "fixed_end", "schedule")


def _final_val(run_dir: Path) -> dict:
    """The last evaluation's metrics (loss, and PER / WER for g2p)."""
    vals = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["split"] == "val"]
    return {k: v for k, v in vals[-1].items() if k not in ("step", "split")}


def _end_values(run_dir: Path) -> tuple[float | None, int | None]:
    model, *_ = load_run(run_dir, "latest")
    targets = Targets.of(model)
    return targets.base, targets.window


def run_claim(args) -> dict:
    model, task, schedule_end = TASKS[args.task]
    if model not in MODELS:
        raise ConfigError(
            f"--task {args.task} needs the {model!r} model, which this seqlab does not register"
        )
    out = Path(args.out)
    base = [
        *RECIPE,
        f"model.name={model}",
        f"model.preset={args.preset}",
        f"task={task}",
        f"train.max_iters={args.max_iters}",
        f"train.eval_interval={args.eval_interval or args.max_iters}",
        "train.progress=false",
        *(args.set or ()),
    ]
    if args.data:
        base.append(f"data.source={args.data}")
    controller = [f"train.callbacks.autonomic.{kv}" for kv in args.controller or ()]
    results = {
        "task": args.task,
        "model": model,
        "preset": args.preset,
        "max_iters": args.max_iters,
        "runs": [],
    }
    for seed in range(args.seeds):
        common = [*base, f"train.seed={1337 + seed}"]
        arms = {
            "autonomic": [*common, "train.autonomic=true", *controller],
            "fixed_start": common,
            "schedule": [
                *common,
                f"train.callbacks.window_schedule.steps={max(1, 3 * args.max_iters // 4)}",
                "train.callbacks.window_schedule.stages=4",
                *([f"train.callbacks.window_schedule.end={schedule_end}"] if schedule_end else []),
            ],
        }
        order = ["autonomic", "fixed_start", "fixed_end", "schedule"]
        end = None
        for arm in order:
            run_dir = out / f"seed{seed}" / arm
            if arm == "fixed_end":
                overrides = [*common, f"model.rope_base={end[0]}"]
                if end[1] is not None:
                    overrides.append(f"model.window={end[1]}")
            else:
                overrides = arms[arm]
            cfg = load_run_config(overrides=[*overrides, f"run_dir={run_dir}"])
            print(f"autonomic_claim: seed {seed}, {arm}", flush=True)
            train(cfg)
            values, final = _end_values(run_dir), _final_val(run_dir)
            if arm == "autonomic":
                end = values
            results["runs"].append(
                {
                    "seed": seed,
                    "arm": arm,
                    "val_loss": final["loss"],
                    "val": final,
                    "rope_base": values[0],
                    "window": values[1],
                    "run_dir": str(run_dir),
                }
            )
    results["summary"] = summarize(results["runs"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown(results))
    return results


def summarize(runs: list[dict]) -> dict:
    summary = {}
    for arm in ARMS:
        losses = [r["val_loss"] for r in runs if r["arm"] == arm]
        if losses:
            summary[arm] = {
                "mean": statistics.fmean(losses),
                "std": statistics.stdev(losses) if len(losses) > 1 else 0.0,
                "n": len(losses),
            }
            pers = [r["val"]["per"] for r in runs if r["arm"] == arm and "per" in r["val"]]
            if pers:
                summary[arm]["per_mean"] = statistics.fmean(pers)
    return summary


def markdown(results: dict) -> str:
    seeds = sorted({r["seed"] for r in results["runs"]})
    lines = [
        f"{results['model']} ({results['preset']}), task {results['task']}, {results['max_iters']} steps: "
        "final validation loss (nats/token)",
        "",
        "| arm | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | std | end base / window (seed 0) |",
        "| --- |" + " --- |" * (len(seeds) + 3),
    ]
    for arm, stats in results["summary"].items():
        runs = {r["seed"]: r for r in results["runs"] if r["arm"] == arm}
        first = runs[seeds[0]]
        cells = [f"{runs[s]['val_loss']:.4f}" for s in seeds]
        window = first["window"] if first["window"] is not None else "-"
        lines.append(
            f"| {arm} | {' | '.join(cells)} | {stats['mean']:.4f} | {stats['std']:.4f} | "
            f"{first['rope_base']:.1f} / {window} |"
        )
    pers = {arm: stats["per_mean"] for arm, stats in results["summary"].items() if "per_mean" in stats}
    if pers:
        lines += ["", "mean greedy phoneme error rate: " + ", ".join(f"{a} {p:.4f}" for a, p in pers.items())]
    return "\n".join(lines) + "\n"


def _median_step_times(steps: dict, repeats: int) -> dict[str, float]:
    """Median seconds per call of each function, the calls interleaved (a, b, a, b, ...), so
    that every ratio compares moments of the same machine load."""
    for fn in steps.values():
        fn()  # warmup
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def speed(preset: str, repeats: int) -> dict:
    """Training-step time of hybrid vs gpt (same preset, batch 12 x context), HybridAttention vs
    causal Attention (forward + backward, same width), and the controller's per-step cost."""
    from seqlab.layers.attention import Attention
    from seqlab.layers.block import Context
    from seqlab.layers.hybrid import HybridAttention
    from seqlab.layers.rotary import RotaryEmbedding
    from seqlab.models import build_model
    from seqlab.train.autonomic import AutonomicCallback
    from seqlab.train.optim import make_optimizer

    torch.manual_seed(0)
    models = {name: build_model(name, preset, vocab_size=65) for name in ("gpt", "hybrid")}
    t = models["gpt"].max_seq_len
    x = torch.randint(0, 65, (12, t))
    y = torch.randint(0, 65, (12, t))

    def train_step(model, optimizer):
        def step():
            model(x, targets=y).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    steps = {name: train_step(m, make_optimizer(m, 1e-4, 0.1, (0.9, 0.99))) for name, m in models.items()}
    model_times = _median_step_times(steps, repeats)

    cfg = models["hybrid"].config
    layers = {
        "attention": Attention(cfg.dim, cfg.num_heads),
        "hybrid_attention": HybridAttention(cfg.dim, cfg.num_heads, cfg.window),
    }
    h = torch.randn(12, t, cfg.dim, requires_grad=True)
    ctx = Context(rotary=RotaryEmbedding(cfg.dim // cfg.num_heads, t)(torch.arange(t), torch.float32))

    def layer_step(layer):
        return lambda: layer(h, ctx).sum().backward()

    layer_times = _median_step_times({k: layer_step(v) for k, v in layers.items()}, repeats)

    callback = AutonomicCallback(factor=1.01, threshold=0.0)
    model = models["hybrid"]
    callback.on_eval(0, {}, model)
    losses = iter(3.0 + 0.1 * math.sin(i) for i in range(10**6))
    counter = iter(range(1, 10**6))
    controller_time = _median_step_times(
        {"controller": lambda: callback.on_train_step(next(counter), next(losses), model, None)}, repeats
    )["controller"]
    return {
        "preset": preset,
        "batch": [12, t],
        "threads": torch.get_num_threads(),
        "train_step_s": model_times,
        "hybrid_over_gpt": model_times["hybrid"] / model_times["gpt"],
        "layer_fwd_bwd_s": layer_times,
        "hybrid_attention_over_attention": layer_times["hybrid_attention"] / layer_times["attention"],
        "controller_step_s": controller_time,
        "controller_over_hybrid_step": controller_time / model_times["hybrid"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m seqlab.bench.autonomic_claim", description=__doc__.split("\n")[0]
    )
    p.add_argument("--task", choices=sorted(TASKS), default="lm")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--data", help="text file for --task lm (default: the embedded corpus)")
    p.add_argument("--preset", default="baby")
    p.add_argument("--max-iters", type=int, default=2000, help="training steps per run (default 2000)")
    p.add_argument("--eval-interval", type=int, help="default: one evaluation at the end (and step 0)")
    p.add_argument("--controller", nargs="+", metavar="KEY=VALUE", help="autonomic options, e.g. factor=1.01")
    p.add_argument(
        "--set", nargs="+", metavar="KEY=VALUE", help="overrides for every run, e.g. train.lr=3e-4"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", default="bench_results/autonomic_claim")
    p.add_argument(
        "--speed", action="store_true", help="instead: time hybrid vs gpt, HybridAttention vs Attention"
    )
    p.add_argument("--repeats", type=int, default=30, help="--speed: interleaved timed calls per case")
    args = p.parse_args(argv)
    if args.seeds < 1 or args.max_iters < 1:
        p.error("--seeds and --max-iters must be >= 1")
    torch.set_num_threads(args.threads)
    if args.speed:
        print(json.dumps(speed(args.preset, args.repeats), indent=2))
        return 0
    results = run_claim(args)
    print(markdown(results))
    print(f"autonomic_claim: wrote {Path(args.out) / 'results.json'} and results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
