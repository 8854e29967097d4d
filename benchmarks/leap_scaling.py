"""LEAP vs the baseline transformer as the context grows: decode latency, training cost, memory.

    python benchmarks/leap_scaling.py decode --contexts 128,1024,8192
    python benchmarks/leap_scaling.py train --contexts 64,256,1024,4096
    python benchmarks/leap_scaling.py memory --contexts 1024,4096,16384 --preset tiny

Both models are built at the same preset (width, depth, heads) with max_seq_len raised to
the longest context, in the same process, and checked before anything is timed: causality,
and cached decoding equal to full recomputation. Weights are random: cost does not depend on
them. Results print as a markdown table and are saved as JSON (--out).

- decode: ms per generated token after a prompt of each length (batch 1, median of repeats)
  and the size of the decoding state (KV cache for gpt, recurrent states for LEAP).
- train: tokens/s of forward + backward + AdamW step at a fixed number of tokens per step
  (batch = tokens // context), so a cost that grows only linearly in context stays flat.
- memory: peak memory of one forward + backward at batch 1 (RSS-based on CPU, see
  seqlab/bench/memory.py).
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from seqlab.bench.memory import PeakMemory
from seqlab.bench.report import device_name, git_commit
from seqlab.bench.runner import check_correctness, decode_latency
from seqlab.models import build_model, count_parameters

VOCAB = 65


def build(name: str, preset: str, max_seq_len: int, position: str):
    torch.manual_seed(0)
    extra = {"position": position} if name in ("leap", "fastformer") else {}
    return build_model(name, preset, vocab_size=VOCAB, max_seq_len=max_seq_len, dropout=0.0, **extra)


def state_bytes(obj) -> int:
    """Bytes of every tensor reachable from a cache object (KV cache or recurrent states)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (list, tuple)):
        return sum(state_bytes(o) for o in obj)
    if isinstance(obj, dict):  # Cache.extra: model-level state
        return sum(state_bytes(v) for v in obj.values())
    if hasattr(obj, "__dict__"):
        return sum(state_bytes(v) for v in vars(obj).values())
    return 0


def checked(model, max_seq_len):
    failures = check_correctness(model, VOCAB, min(max_seq_len, 64), torch.device("cpu"))
    if failures:
        raise SystemExit(f"{type(model).__name__} failed its checks, nothing timed: {failures}")
    return model


def run_decode(args):
    rows = []
    longest = max(args.contexts) + args.steps + 1
    for name in args.models:
        model = checked(build(name, args.preset, longest, args.position), longest)
        for context in args.contexts:
            result = decode_latency(model, VOCAB, context, args.steps, args.repeats, torch.device("cpu"))
            cache = model.make_cache(1, context + args.steps)
            with torch.no_grad():
                model(torch.zeros(1, context, dtype=torch.long), cache=cache)
            rows.append(
                {
                    "model": name,
                    "context": context,
                    "ms_per_token": result["ms_per_token"],
                    "prefill_ms": result["prefill_ms"],
                    "state_MB": state_bytes(cache) / 2**20,
                    "params": count_parameters(model),
                }
            )
            print(rows[-1], flush=True)
    return rows


def run_train(args):
    rows = []
    longest = max(args.contexts)
    for name in args.models:
        model = checked(build(name, args.preset, longest, args.position), longest)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        for context in args.contexts:
            batch = max(1, args.tokens // context)
            x = torch.randint(VOCAB, (batch, context + 1), generator=torch.Generator().manual_seed(0))
            times = []
            for _ in range(args.repeats + 1):
                start = time.perf_counter()
                model(x[:, :-1], targets=x[:, 1:]).total_loss().backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                times.append(time.perf_counter() - start)
            step = statistics.median(times[1:])
            rows.append(
                {
                    "model": name,
                    "context": context,
                    "batch": batch,
                    "tokens_per_s": batch * context / step,
                    "ms_per_step": step * 1e3,
                }
            )
            print(rows[-1], flush=True)
    return rows


def run_memory(args):
    rows = []
    longest = max(args.contexts)
    for name in args.models:
        model = checked(build(name, args.preset, longest, args.position), longest)
        for context in args.contexts:
            x = torch.randint(VOCAB, (1, context + 1), generator=torch.Generator().manual_seed(0))
            model(x[:, :-1], targets=x[:, 1:]).total_loss().backward()  # warm: allocator, threads
            model.zero_grad(set_to_none=True)
            with PeakMemory("cpu") as mem:
                model(x[:, :-1], targets=x[:, 1:]).total_loss().backward()
            model.zero_grad(set_to_none=True)
            peak = None if mem.peak_bytes is None else mem.peak_bytes / 2**20
            rows.append({"model": name, "context": context, "peak_MB": peak, "method": mem.method})
            print(rows[-1], flush=True)
    return rows


def table(rows, keys):
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append(
            "| " + " | ".join(f"{r[k]:.3g}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |"
        )
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["decode", "train", "memory"])
    p.add_argument("--models", default="leap,gpt", type=lambda s: s.split(","))
    p.add_argument("--preset", default="baby")
    p.add_argument("--position", default="learned", help="LEAP positions: learned | rotary | decay | none")
    p.add_argument("--contexts", default=None, type=lambda s: [int(c) for c in s.split(",")])
    p.add_argument("--steps", type=int, default=32, help="decode: timed tokens per context")
    p.add_argument("--tokens", type=int, default=4096, help="train: tokens per step")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="JSON output path")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    defaults = {"decode": [128, 1024, 8192], "train": [64, 256, 1024, 4096], "memory": [1024, 4096, 16384]}
    args.contexts = args.contexts or defaults[args.what]
    rows = {"decode": run_decode, "train": run_train, "memory": run_memory}[args.what](args)
    keys = {
        "decode": ["model", "context", "ms_per_token", "prefill_ms", "state_MB"],
        "train": ["model", "context", "batch", "tokens_per_s", "ms_per_step"],
        "memory": ["model", "context", "peak_MB"],
    }[args.what]
    env = {
        "device": device_name(torch.device("cpu")),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "dtype": "float32",
        "preset": args.preset,
        "position": args.position,
        "commit": git_commit(),
    }
    print(f"\n{args.what}: {env}\n\n{table(rows, keys)}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"env": env, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
