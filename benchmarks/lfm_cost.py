"""Cost of LFM's layers: AdaptiveLinear and top-k MixtureOfExperts vs plain layers of the same active size.

    python benchmarks/lfm_cost.py                 # both parts
    python benchmarks/lfm_cost.py linear --dims 128,384 --seq-lens 64,256 --ranks 4,16,64
    python benchmarks/lfm_cost.py moe --experts 4,8 --top-ks 1,2

Everything is timed as forward + backward (gradients for the inputs, the adapt input and the
parameters, as inside a model; no optimizer step), the median of --repeats after --warmup
calls, in one process at --threads threads (default 1), float32, on random inputs (cost does
not depend on the values). tokens/s = batch * seq_len / median seconds; "x ... time" is the
ratio of median times (2.0 = twice as slow as the baseline); "spread" = (max - min) / median
of the timed repeats, a noise gauge (the machine may be shared).

- linear: nn.Linear(c, c) vs AdaptiveLinear(c, c, adapt_dim) with the low-rank generator at
  each rank and with the seed's full generator, for a per-sample adapt input [b, a] (one
  effective weight per sequence) and a per-token one [b, t, a] (one per position: what the
  causal lfm model uses). The full generator materializes one [c, c] weight per sample or per
  token; a case whose weights would pass --max-full-mb is skipped and says so.
- moe: MixtureOfExperts(c, E, token gate, top-k, impl "fast"), every expert an adaptive MLP
  c -> h -> c (h = --expert-hidden, default c), with a per-token adapt input, vs
  (1) a plain MLP Linear(c, k h) -> GELU -> Linear(k h, c): the weights of the k experts a token
      is routed to (the same active parameters, less the low-rank adapters and the router),
  (2) the adaptive MLP ChannelMixing(c, hidden k h): the same, adapters included,
  (3) the same MoE with dense routing (all E experts on every token).

Before anything is timed, the layers are checked in float64 on small inputs: AdaptiveLinear
(both generators, both adapt layouts) equals the explicit per-sample / per-token loop
y = x (W + DeltaW(a))^T + bias, on outputs and gradients; the top-k MoE equals an explicit
per-token loop over the router's renormalized top-k and equals impl="reference"; the
dense-routing MoE equals sum_e g_e expert_e. A failed check stops the script, nothing timed.
Results print as markdown tables and go to JSON (--out).
"""

import argparse
import copy
import functools
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from seqlab.bench.report import git_commit
from seqlab.layers.adaptive import AdaptiveLinear
from seqlab.layers.block import Context
from seqlab.layers.mixing import ChannelMixing
from seqlab.layers.moe import MixtureOfExperts


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def grads_of(out: torch.Tensor, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=out.dtype)
    return torch.autograd.grad(out, inputs, grad_out, allow_unused=True)


def assert_same(what: str, got: torch.Tensor, want: torch.Tensor, inputs: list[torch.Tensor]) -> None:
    """Outputs and gradients (w.r.t. every tensor in inputs) of two computations agree."""
    try:
        torch.testing.assert_close(got, want)
        for g, w in zip(grads_of(got, inputs), grads_of(want, inputs)):
            torch.testing.assert_close(g, w)
    except AssertionError as error:
        raise SystemExit(f"check failed, nothing timed: {what}\n{error}") from None


def explicit_adaptive_linear(layer: AdaptiveLinear, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """The seed's definition, one effective weight per sample (a [b, a]) or per token (a [b, t, a])."""

    def weight(a_vec):
        if layer.generator == "lowrank":
            delta = layer.u @ torch.diag(layer.gate(a_vec)) @ layer.v
        else:
            delta = layer.delta(a_vec).view(layer.out_features, layer.in_features)
        return layer.weight + delta

    rows = []
    for i in range(x.shape[0]):
        if a.dim() == 2:
            rows.append(x[i] @ weight(a[i]).T + layer.bias)
        else:
            rows.append(torch.stack([x[i, j] @ weight(a[i, j]).T + layer.bias for j in range(x.shape[1])]))
    return torch.stack(rows)


def explicit_moe(moe: MixtureOfExperts, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Token gate, per token: top-k of softmax(router(x_t)) (or all experts), renormalized, summed."""
    b, t, _ = x.shape
    # The layer computes its gate weights in at least float32 (router precision; float64 stays
    # float64): so does this. Casting to float32 here made the float64 check fail at ~1e-7.
    probs = moe.router(x).softmax(-1, dtype=torch.promote_types(x.dtype, torch.float32))  # [b, t, e]
    rows = []
    for i in range(b):
        for j in range(t):
            p = probs[i, j]
            if moe.top_k is None:
                weights, index = p, torch.arange(len(p))
            else:
                weights, index = p.topk(moe.top_k)
                weights = weights / weights.sum()
            weights = weights.to(x.dtype)
            y = sum(
                w * moe.experts[int(e)](x[i, j][None], Context(adapt=a[i, j][None]))[0]
                for w, e in zip(weights, index)
            )
            rows.append(y)
    return torch.stack(rows).view(b, t, -1)


def check(adapt_dim: int) -> None:
    torch.manual_seed(0)
    b, t, c_in, c_out = 3, 5, 7, 6
    for generator in ("lowrank", "full"):
        layer = AdaptiveLinear(c_in, c_out, adapt_dim, rank=3, generator=generator).double()
        for adapt in ("sample", "token"):
            x = torch.randn(b, t, c_in, dtype=torch.float64, requires_grad=True)
            a = torch.randn(b, adapt_dim, dtype=torch.float64) if adapt == "sample" else None
            a = a if a is not None else torch.randn(b, t, adapt_dim, dtype=torch.float64)
            a.requires_grad_(True)
            inputs = [x, a, *layer.parameters()]
            assert_same(
                f"AdaptiveLinear {generator} per-{adapt} vs the explicit loop",
                layer(x, a),
                explicit_adaptive_linear(layer, x, a),
                inputs,
            )
    c, e = 8, 4
    for k in (1, 2, None):
        expert = functools.partial(ChannelMixing, c, adapt_dim, rank=3)
        moe = MixtureOfExperts(c, e, expert, adapt_dim=adapt_dim, gate="token", top_k=k).double()
        x = torch.randn(2, 5, c, dtype=torch.float64, requires_grad=True)
        a = torch.randn(2, 5, adapt_dim, dtype=torch.float64, requires_grad=True)
        inputs = [x, a, *moe.parameters()]
        assert_same(
            f"MoE top_k={k} vs the explicit per-token loop",
            moe(x, Context(adapt=a)),
            explicit_moe(moe, x, a),
            inputs,
        )
        if k is not None:
            fast = moe(x, Context(adapt=a))
            moe.impl = "reference"  # same parameters, so the gradients are comparable
            assert_same(f"MoE top_k={k} fast vs impl='reference'", fast, moe(x, Context(adapt=a)), inputs)


def median_seconds(forward, params: list[torch.Tensor], inputs: list[torch.Tensor], warmup, repeats):
    """Wall time of forward(*inputs) + backward (fixed output gradient): (median, (max - min) / median)."""
    grad_out = None
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        out = forward(*inputs)
        if grad_out is None:
            grad_out = torch.randn_like(out)
        out.backward(grad_out)
        elapsed = time.perf_counter() - start
        for p in [*params, *inputs]:
            p.grad = None
        if i >= warmup:
            times.append(elapsed)
    median = statistics.median(times)
    return median, (max(times) - min(times)) / median


def random_inputs(b, t, c, adapt_dim, adapt):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, t, c, generator=g).requires_grad_(True)
    shape = (b, adapt_dim) if adapt == "sample" else (b, t, adapt_dim)
    return x, torch.randn(shape, generator=g).requires_grad_(True)


def run_linear(args) -> list[dict]:
    rows = []
    b = args.batch_size
    for t in args.seq_lens:
        for c in args.dims:
            torch.manual_seed(0)
            linear = nn.Linear(c, c)
            x, _ = random_inputs(b, t, c, args.adapt_dim, "sample")
            base, spread = median_seconds(linear, list(linear.parameters()), [x], args.warmup, args.repeats)
            rows.append(
                dict(t=t, c=c, adapt="-", layer="nn.Linear", params=count(linear), tokens_per_s=b * t / base)
                | {"x_linear_time": 1.0, "spread": spread}
            )
            print(rows[-1], flush=True)
            for adapt in ("sample", "token"):
                layers = [(f"lowrank r={r}", dict(rank=r, generator="lowrank")) for r in args.ranks]
                layers.append(("full", dict(generator="full")))
                for name, kwargs in layers:
                    row = dict(t=t, c=c, adapt=adapt, layer=name)
                    weights = b * (t if adapt == "token" else 1)
                    mb = weights * c * c * 4 / 2**20
                    if kwargs["generator"] == "full" and mb > args.max_full_mb:
                        rows.append(row | dict(params=None, tokens_per_s=None, x_linear_time=None))
                        rows[-1]["note"] = f"skipped: {weights} materialized weights = {mb:.0f} MB"
                        print(rows[-1], flush=True)
                        continue
                    torch.manual_seed(0)
                    layer = AdaptiveLinear(c, c, args.adapt_dim, **kwargs)
                    x, a = random_inputs(b, t, c, args.adapt_dim, adapt)
                    sec, spread = median_seconds(
                        layer, list(layer.parameters()), [x, a], args.warmup, args.repeats
                    )
                    rows.append(
                        row
                        | dict(
                            params=count(layer),
                            tokens_per_s=b * t / sec,
                            x_linear_time=sec / base,
                            spread=spread,
                        )
                    )
                    print(rows[-1], flush=True)
    return rows


def with_adapt(layer: nn.Module):
    """A feed-forward that reads its adapt input from the context, called as f(x, a)."""
    return lambda x, a: layer(x, Context(adapt=a))


def plain_mlp(c: int, hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(c, hidden), nn.GELU(), nn.Linear(hidden, c))


def expert_active_params(moe: MixtureOfExperts, k: int | None) -> int:
    """Parameters one token touches: the router plus k experts (all of them when dense)."""
    return count(moe.router) + (k or moe.num_experts) * count(moe.experts[0])


def run_moe(args) -> list[dict]:
    rows = []
    b, a_dim = args.batch_size, args.adapt_dim
    for t in args.seq_lens:
        for c in args.dims:
            h = args.expert_hidden or c
            x, a = random_inputs(b, t, c, a_dim, "token")
            baselines = {}
            for k in args.top_ks:
                torch.manual_seed(0)
                mlp, adaptive = plain_mlp(c, k * h), ChannelMixing(c, a_dim, hidden_dim=k * h, rank=args.rank)
                mlp_s, _ = median_seconds(mlp, list(mlp.parameters()), [x], args.warmup, args.repeats)
                adaptive_s, _ = median_seconds(
                    with_adapt(adaptive), list(adaptive.parameters()), [x, a], args.warmup, args.repeats
                )
                baselines[k] = dict(mlp_s=mlp_s, adaptive_s=adaptive_s, mlp_params=count(mlp))
            for e in args.experts:
                torch.manual_seed(0)
                expert = functools.partial(ChannelMixing, c, a_dim, hidden_dim=h, rank=args.rank)
                dense = MixtureOfExperts(c, e, expert, adapt_dim=a_dim, gate="token", top_k=None)
                dense_s, _ = median_seconds(
                    with_adapt(dense), list(dense.parameters()), [x, a], args.warmup, args.repeats
                )
                for k in args.top_ks:
                    if k > e:
                        continue
                    moe = copy.deepcopy(dense)
                    moe.top_k = k
                    moe_s, spread = median_seconds(
                        with_adapt(moe), list(moe.parameters()), [x, a], args.warmup, args.repeats
                    )
                    base = baselines[k]
                    rows.append(
                        dict(t=t, c=c, E=e, k=k, hidden=h)
                        | dict(
                            active_params=expert_active_params(moe, k),
                            mlp_params=base["mlp_params"],
                            topk_tokens_per_s=b * t / moe_s,
                            mlp_tokens_per_s=b * t / base["mlp_s"],
                            adaptive_mlp_tokens_per_s=b * t / base["adaptive_s"],
                            dense_moe_tokens_per_s=b * t / dense_s,
                            x_mlp_time=moe_s / base["mlp_s"],
                            x_adaptive_mlp_time=moe_s / base["adaptive_s"],
                            x_dense_moe_time=moe_s / dense_s,
                            spread=spread,
                        )
                    )
                    print(rows[-1], flush=True)
    return rows


def table(rows: list[dict], keys: list[str]) -> str:
    def cell(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:,.0f}" if v >= 1000 else f"{v:.2f}"
        return str(v)

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", nargs="?", default="all", choices=["all", "linear", "moe"])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-lens", type=ints, default=[64, 256])
    p.add_argument("--dims", type=ints, default=[128, 384])
    p.add_argument("--adapt-dim", type=int, default=32)
    p.add_argument("--ranks", type=ints, default=[4, 16, 64], help="linear: low-rank generator ranks")
    p.add_argument("--max-full-mb", type=float, default=256, help="linear: skip full generator cases above")
    p.add_argument("--experts", type=ints, default=[4, 8])
    p.add_argument("--top-ks", type=ints, default=[1, 2])
    p.add_argument("--expert-hidden", type=int, default=None, help="moe: expert hidden width; default c")
    p.add_argument("--rank", type=int, default=8, help="moe: low-rank generator rank of the experts")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="bench_results/lfm_cost.json", help="JSON output path")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    check(args.adapt_dim)
    print(
        "checks passed: AdaptiveLinear == explicit loop; top-k MoE == explicit loop == reference", flush=True
    )

    env = {
        "device": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "dtype": "float32",
        "commit": git_commit(),
        "batch_size": args.batch_size,
        "seq_lens": args.seq_lens,
        "dims": args.dims,
        "adapt_dim": args.adapt_dim,
        "warmup": args.warmup,
        "repeats": args.repeats,
    }
    out = {"env": env}
    print(f"lfm_cost: {env}", flush=True)
    if args.what in ("all", "linear"):
        out["linear"] = run_linear(args)
    if args.what in ("all", "moe"):
        env |= {
            "experts": args.experts,
            "top_ks": args.top_ks,
            "expert_hidden": args.expert_hidden,
            "rank": args.rank,
        }
        out["moe"] = run_moe(args)
    if "linear" in out:
        print("\nAdaptiveLinear(c, c) vs nn.Linear(c, c): forward + backward, median\n")
        keys = ["t", "c", "adapt", "layer", "params", "tokens_per_s", "x_linear_time", "spread", "note"]
        print(table(out["linear"], keys))
    if "moe" in out:
        h = args.expert_hidden or "c"
        print(f"\ntoken-gate top-k MoE (experts c -> {h} -> c) vs MLP(c -> k*{h} -> c): fwd + bwd, median\n")
        keys = [
            "t",
            "c",
            "E",
            "k",
            "active_params",
            "mlp_params",
            "topk_tokens_per_s",
            "mlp_tokens_per_s",
            "adaptive_mlp_tokens_per_s",
            "dense_moe_tokens_per_s",
            "x_mlp_time",
            "x_adaptive_mlp_time",
            "x_dense_moe_time",
            "spread",
        ]
        print(table(out["moe"], keys))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2))
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
