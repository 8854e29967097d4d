"""`seqlab bench`: arguments into cases and settings, then the runner; no logic of its own.

seqlab bench --model gpt --preset baby --dtypes float32,bfloat16 --max-iters 2000
seqlab bench --quick                      # a few steps of everything, to check the setup
seqlab bench --set train.lr=3e-4 model.mlp=swiglu --no-peer --out bench_results/swiglu
seqlab bench --suite lm --seeds 3 --data tinyshakespeare.txt   # the leaderboard (seqlab.bench.suites)
seqlab bench --suite all --quick                               # every board, a few steps
"""

import argparse
import datetime
from pathlib import Path

import torch

from seqlab.bench.cases import DTYPES, expand_cases, peer_available
from seqlab.bench.runner import BenchSettings, run_bench
from seqlab.bench.suites import BOARDS, SUITES, SuiteSettings, board_entries, run_suite
from seqlab.errors import ConfigError
from seqlab.models import model_entry

QUICK = dict(
    max_iters=40, decode_steps=8, decode_repeats=1, overrides=("train.eval_iters=5", "train.log_interval=5")
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--suite",
        choices=SUITES,
        help="the leaderboard: every registered model of the suite's task(s), same data, recipe and "
        "seeds, with ratios to the baseline (lm: gpt, grid: gpt raster, seq2seq: t5)",
    )
    p.add_argument("--seeds", type=int, default=1, help="--suite: seeds per model (mean and std; default 1)")
    p.add_argument(
        "--model",
        help="registered model(s), comma-separated (default gpt; with --suite: only these and the baseline)",
    )
    p.add_argument(
        "--preset",
        help="model preset (default baby: 4 layers, 4 heads, 128 wide; with --suite: each board's own)",
    )
    p.add_argument("--data", help="text file, folder, or hf:<dataset>; default: embedded corpus")
    p.add_argument("--tokenizer", default="char", help="char | byte | bpe (default char)")
    p.add_argument(
        "--dtypes",
        help="comma-separated: float32, bfloat16 (autocast); default float32,bfloat16 (--suite: float32)",
    )
    p.add_argument("--max-iters", type=int, help="training steps per case (default 2000; --quick: 40)")
    p.add_argument(
        "--max-time", type=float, help="seconds of training per case, if reached before --max-iters"
    )
    p.add_argument(
        "--peer",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run every case through x-transformers as a peer (default: on when installed)",
    )
    p.add_argument(
        "--decode-contexts",
        help="prompt lengths for decode latency (default 64,256,1024; --suite: each board's)",
    )
    p.add_argument("--decode-steps", type=int, help="timed decode steps per context (default 32)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--out", help="output folder (default bench_results/<models>-<preset>-<time>)")
    p.add_argument("--quick", action="store_true", help="a few steps of everything, for smoke testing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar while training")
    p.add_argument(
        "--set",
        nargs="+",
        metavar="KEY=VALUE",
        help="dotted overrides as for `seqlab train`, e.g. train.lr=3e-4",
    )


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{flag} takes comma-separated integers, e.g. 64,256,1024; got {text!r}") from None
    if not values or min(values) < 1:
        raise ConfigError(f"{flag} needs at least one positive integer, got {text!r}")
    return values


def run_suite_from_args(args: argparse.Namespace) -> int:
    unused = {
        "--tokenizer": args.tokenizer != "char",
        "--max-time": args.max_time is not None,
        "--decode-contexts": args.decode_contexts is not None,
        "--no-peer": not args.peer,
        "--data": args.data is not None and args.suite not in ("lm", "all"),
    }
    for flag, given in unused.items():
        if given:
            raise ConfigError(
                f"{flag} is not used by --suite {args.suite} (each board fixes its data, tokenizer, budget "
                "and decode contexts; --data is the lm board's text); pick rows with --model, change the "
                "recipe with --set"
            )
    models = None
    if args.model:
        models = tuple(m.strip() for m in args.model.split(",") if m.strip())
        rows = {e.name for group in BOARDS.values() for b in group for e in board_entries(b)}
        for name in models:
            if name not in rows:
                model_entry(name)  # names the registered models
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()] if args.dtypes else ["float32"]
    if len(dtypes) != 1 or dtypes[0] not in DTYPES:
        raise ConfigError(f"--suite takes one dtype (--dtypes float32 or bfloat16), got {args.dtypes!r}")
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
    if args.max_iters is not None and args.max_iters < 1:
        raise ConfigError(f"--max-iters must be >= 1, got {args.max_iters}")
    quick = args.quick
    settings = SuiteSettings(
        seeds=args.seeds,
        preset=args.preset,
        max_iters=args.max_iters or (QUICK["max_iters"] if quick else None),
        data=args.data,
        dtype=dtypes[0],
        device=args.device,
        decode_steps=args.decode_steps or (QUICK["decode_steps"] if quick else 16),
        decode_repeats=1 if quick else 3,
        kan_cost=not quick,
        decode_limit=20 if quick else None,
        progress=not args.no_progress,
        overrides=(*(QUICK["overrides"] if quick else ()), *(args.set or ())),
        models=models,
    )
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or Path("bench_results") / f"suite-{args.suite}-{stamp}")
    report = run_suite(args.suite, settings, out)
    print()
    print((out / "results.md").read_text())
    print(f"seqlab bench: wrote {out / 'results.json'}, {out / 'results.md'} and one PNG per board")
    failed = [
        f"{b['name']}/{r['model']}"
        for b in report["boards"]
        for r in b["rows"]
        if r["status"] in ("refused", "error")
    ]
    if failed:
        print(f"seqlab bench: {len(failed)} model(s) refused or failed: {', '.join(failed)}")
    return 1 if failed else 0


def run_from_args(args: argparse.Namespace) -> int:
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.suite:
        return run_suite_from_args(args)
    args.preset = args.preset or "baby"
    args.dtypes = args.dtypes or "float32,bfloat16"
    models = [m.strip() for m in (args.model or "gpt").split(",") if m.strip()]
    for name in models:
        model_entry(name)  # unknown names fail here, listing the registered ones
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    if not dtypes or any(d not in DTYPES for d in dtypes):
        raise ConfigError(
            f"--dtypes takes a comma-separated subset of {', '.join(DTYPES)}; got {args.dtypes!r}"
        )
    quick = QUICK if args.quick else {}
    max_iters = args.max_iters or quick.get("max_iters", 2000)
    if max_iters < 1:
        raise ConfigError(f"--max-iters must be >= 1, got {max_iters}")
    peer = args.peer and peer_available()
    if args.peer and not peer:
        print("seqlab bench: x-transformers is not installed, so no peer runs (pip install 'seqlab[bench]')")
    settings = BenchSettings(
        data=args.data,
        tokenizer=args.tokenizer,
        max_iters=max_iters,
        max_time=args.max_time,
        device=args.device,
        decode_contexts=_int_list(args.decode_contexts or "64,256,1024", "--decode-contexts"),
        decode_steps=args.decode_steps or quick.get("decode_steps", 32),
        decode_repeats=quick.get("decode_repeats", 3),
        progress=not args.no_progress,
        peer=peer,
    )
    overrides = (*quick.get("overrides", ()), *(args.set or ()))
    cases = expand_cases(models, args.preset, dtypes, overrides, peer)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or Path("bench_results") / f"{'+'.join(models)}-{args.preset}-{stamp}")
    report = run_bench(cases, settings, out)
    print()
    print((out / "results.md").read_text())
    print(f"seqlab bench: wrote {out / 'results.json'} and {out / 'results.md'}")
    failed = [c["name"] for c in report["cases"] if c["status"] in ("refused", "error")]
    if failed:
        print(f"seqlab bench: {len(failed)} case(s) refused or failed: {', '.join(failed)}")
    return 1 if failed else 0
