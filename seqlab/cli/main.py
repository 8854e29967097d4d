"""The `seqlab` command line: train, eval, generate, models, bench, explain.

Argument parsing into the config dataclasses only; the work happens in seqlab.train,
seqlab.models, seqlab.bench and seqlab.explain.
"""

import argparse
import json
import os
import sys
from pathlib import Path

from seqlab.errors import ConfigError, SeqlabError


def _train_overrides(args) -> list[str]:
    """Turn the convenience flags into dotted overrides (applied before --set)."""
    pairs = []
    for flag, key in (
        ("model", "model.name"),
        ("preset", "model.preset"),
        ("data", "data.source"),
        ("tokenizer", "data.tokenizer"),
        ("max_iters", "train.max_iters"),
        ("max_time", "train.max_time"),
        ("dtype", "train.dtype"),
        ("device", "train.device"),
        ("batch_size", "train.batch_size"),
        ("run_dir", "run_dir"),
        ("task", "task"),
        ("seed", "train.seed"),
        ("lr", "train.lr"),
        ("parallel", "train.parallel"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            pairs.append(f"{key}={json.dumps(value) if isinstance(value, str) else value}")
    if args.compile:
        pairs.append("train.compile=true")
    if args.no_progress:
        pairs.append("train.progress=false")
    return pairs + list(args.set or [])


def cmd_train(args) -> int:
    from seqlab.train import load_run_config, train
    from seqlab.train.runs import resume_config

    overrides = _train_overrides(args)
    if args.resume:
        fixed = [
            o.split("=", 1)[0] for o in overrides if o.startswith(("model.", "data.", "run_dir=", "task="))
        ]
        if fixed or args.config:
            raise ConfigError(
                f"--resume continues the saved run as it was configured; drop {fixed or args.config} "
                f"(what may change: train.max_iters, --max-time and other train.* settings)"
            )
        cfg = resume_config(args.resume, overrides, args.checkpoint or "latest")
    else:
        if args.checkpoint:
            raise ConfigError(
                f"--checkpoint {args.checkpoint} picks the checkpoint to resume from; use it with "
                "--resume RUN_DIR"
            )
        cfg = load_run_config(args.config or [], overrides)
    train(cfg, resume=args.resume, checkpoint=args.checkpoint or "latest")
    return 0


def cmd_eval(args) -> int:
    import contextlib

    from seqlab.train.loop import evaluate
    from seqlab.train.runs import load_run

    model, task, cfg, meta = load_run(args.run, args.checkpoint, args.device or "cpu", args.data)
    if args.eval_iters is not None:
        if args.eval_iters < 1:
            raise ConfigError(f"--eval-iters must be >= 1, got {args.eval_iters}")
        cfg.train.eval_iters = args.eval_iters
    result = evaluate(model, task, cfg, next(model.parameters()).device, contextlib.nullcontext)
    result.update(step=meta.get("step"), checkpoint=args.checkpoint, data=cfg.data.source or "default data")
    print(json.dumps(result, indent=2))
    return 0


def cmd_generate(args) -> int:
    from seqlab.train.runs import load_run

    model, task, _, _ = load_run(args.run, args.checkpoint, args.device or "cpu")
    # Only what was given: the task's own defaults (from the run config) fill in the rest, and
    # a task that takes no such option (a forecast has no prompt) says so.
    options = {
        key: value
        for key, value in (
            ("prompt", args.prompt),
            ("max_new_tokens", args.max_new_tokens),
            ("temperature", args.temperature),
            ("top_k", args.top_k),
            ("top_p", args.top_p),
            ("seed", args.seed),
            ("text", args.text),
            ("beams", args.beams),
        )
        if value is not None
    }
    # The task may also write files (a PNG of generated grids) into the run directory.
    print(task.sample(model, run_dir=Path(args.run), **options))
    return 0


def cmd_models(args) -> int:
    from seqlab.models import MODELS, build_model, count_parameters

    print(f"{'model':<14} {'preset':<8} {'params':>10}  {'task':<9} description")
    for name, entry in MODELS.items():
        for preset in entry.presets:
            try:
                # Token models (lm, seq2seq) are counted at one vocabulary, so rows compare.
                sizes = {"vocab_size": args.vocab_size} if entry.task in ("lm", "seq2seq") else {}
                n = f"{count_parameters(build_model(name, preset, **sizes)) / 1e6:.2f}M"
            except ImportError as e:  # an optional peer whose extra is not installed
                n = "n/a"
                print(f"({name}: {e})", file=sys.stderr)
            print(f"{name:<14} {preset:<8} {n:>10}  {entry.task:<9} {entry.description}")
    print(f"(parameter counts with vocab_size={args.vocab_size})")
    return 0


def cmd_bench(args) -> int:
    from seqlab.bench.cli import run_from_args

    return run_from_args(args)


def cmd_explain(args) -> int:
    from seqlab.explain import explain_run

    paths, note = explain_run(
        args.run,
        args.out,
        checkpoint=args.checkpoint,
        text=args.text,
        layers=args.layers,
        heads=args.heads,
        style=args.style,
        query=args.query,
        max_tokens=args.max_tokens,
        cell=args.cell,
    )
    if note:
        print(f"seqlab explain: {note}", file=sys.stderr)
    for path in paths:
        print(path)
    return 0


def cmd_export(args) -> int:
    from seqlab.train.export import export_run

    print(export_run(args.run, args.to, args.out, checkpoint=args.checkpoint))
    return 0


def _index_list(value: str) -> list[int]:
    """argparse type for "0,2": a comma-separated list of layer or head indices."""
    try:
        return [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 0,2, got {value!r}"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="seqlab", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model (default: gpt baby on the embedded Shakespeare corpus)")
    t.add_argument("config", nargs="*", help="JSON or YAML config files, applied in order")
    t.add_argument("--model", help="registered model name (see `seqlab models`)")
    t.add_argument("--preset", help="model preset: tiny | baby | small")
    t.add_argument(
        "--data",
        help="text file, folder, or hf:<dataset>; default: embedded corpus. seq2seq (t5, kat5): cmudict "
        "(default) | copy | reverse | sort | addition, or text with task_options.objective=span_corruption",
    )
    t.add_argument("--task", help="lm | forecast | seq2seq | ... (default: the model's own task)")
    t.add_argument("--parallel", choices=["ddp", "fsdp"], help="with torchrun: replicas or FSDP2 shards")
    t.add_argument("--tokenizer", help="char | byte | bpe")
    t.add_argument("--max-iters", type=int)
    t.add_argument("--max-time", type=float, help="seconds of training, then save and stop")
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--seed", type=int)
    t.add_argument("--dtype", choices=["float32", "bfloat16"])
    t.add_argument("--device")
    t.add_argument("--compile", action="store_true", help="torch.compile the model")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("--run-dir", help="where to write the run (default runs/<model>-<preset>)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue this run exactly where it stopped")
    t.add_argument(
        "--checkpoint",
        help="with --resume: continue from this checkpoint: latest (default) | best | step_N",
    )
    t.add_argument(
        "--set", nargs="+", metavar="KEY=VALUE", help="dotted overrides, e.g. train.lr=3e-4 model.dim=64"
    )
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="validation loss of a run's checkpoint")
    e.add_argument("run", help="run directory")
    e.add_argument("--checkpoint", default="best", help="best | latest | a step folder (step_0000500)")
    e.add_argument("--data", help="evaluate on this text instead (run's tokenizer)")
    e.add_argument("--eval-iters", type=int)
    e.add_argument("--device")
    e.set_defaults(func=cmd_eval)

    g = sub.add_parser("generate", help="a sample of a run's checkpoint: text for lm, a forecast table")
    g.add_argument("run", help="run directory")
    g.add_argument(
        "--prompt",
        help='text to continue (lm; default "\\n" if in the vocabulary); grid: a text grid, rows split by '
        '"/", "?" = a cell to generate',
    )
    g.add_argument(
        "--max-new-tokens",
        type=int,
        help="tokens (lm) or forecast steps (default: the run's train.sample_tokens); grid/grid2grid: "
        "the number of grids (default 4)",
    )
    g.add_argument("--temperature", type=float, help="lm: 0 = greedy (default 0.8)")
    g.add_argument("--top-k", type=int, help="lm: keep the k most likely tokens (default 50)")
    g.add_argument("--top-p", type=float, help="lm: nucleus sampling mass")
    g.add_argument("--seed", type=int, help="lm: sampling seed (default the run's train.seed)")
    g.add_argument("--text", help="seq2seq: the source to translate, e.g. a word for grapheme-to-phoneme")
    g.add_argument("--beams", type=int, help="seq2seq: beam width (1 = greedy)")
    g.add_argument("--checkpoint", default="best", help="best | latest | a step folder (step_0000500)")
    g.add_argument("--device")
    g.set_defaults(func=cmd_generate)

    m = sub.add_parser("models", help="list registered models, presets and parameter counts")
    m.add_argument("--vocab-size", type=int, default=65)
    m.set_defaults(func=cmd_models)

    b = sub.add_parser("bench", help="throughput, MFU, memory, loss and decode latency vs a peer")
    try:
        from seqlab.bench.cli import add_arguments
    except ImportError:
        add_arguments = None
    if add_arguments is not None:
        add_arguments(b)
    b.set_defaults(func=cmd_bench)

    x = sub.add_parser(
        "explain",
        help="PNG pictures of what a run's model does: LEAP focus maps, 2D attention neighbourhoods, "
        "KAN edge functions",
    )
    x.add_argument("run", help="run directory")
    x.add_argument("--text", help="LEAP: the text to explain, e.g. 'ROMEO: hello'")
    x.add_argument("--cell", type=_index_list, help="heptapod: the query cell ROW,COL (default the centre)")
    x.add_argument("--out", help="output folder (default RUN_DIR/explain)")
    x.add_argument("--layers", type=_index_list, help="comma-separated layer indices (default all)")
    x.add_argument("--heads", type=_index_list, help="comma-separated head indices (default all)")
    x.add_argument("--style", choices=["lines", "matrix"], help="LEAP: line diagram (default) or heatmap")
    x.add_argument("--checkpoint", default="best", help="best | latest | a step folder (step_0000500)")
    x.add_argument("--query", type=int, help="highlight this query position (-1 = last token)")
    x.add_argument("--max-tokens", type=int, help="keep the last N tokens (default min(64, max_seq_len))")
    x.set_defaults(func=cmd_explain)

    ex = sub.add_parser("export", help="write a run's checkpoint in another library's format")
    ex.add_argument("run", help="run directory")
    ex.add_argument(
        "--to",
        required=True,
        choices=["hf"],
        help="hf: a Hugging Face checkpoint folder (any model; t5 as transformers' own T5)",
    )
    ex.add_argument("out", help="output folder")
    ex.add_argument("--checkpoint", default="best", help="best | latest | a step folder (step_0000500)")
    ex.set_defaults(func=cmd_export)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SeqlabError as e:
        print(f"seqlab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `seqlab models | head`): not an error; silence the flush at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
