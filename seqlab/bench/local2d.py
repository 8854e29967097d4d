"""Local 2D (neighbourhood) attention: time and memory against the alternatives, one table.

    python -m seqlab.bench.local2d                        # grids 16, 32, 64, 128; window 7
    python -m seqlab.bench.local2d --grids 16,32 --out local2d.json

q, k, v [b=1, h=4, gy, gx, d=64] (c = 256 = 4 heads x 64), fp32, one CPU thread. For each
square grid, every implementation is first checked against the reference (the dense-mask fp32
eager attention of seqlab.ops.local2d, computed in query chunks on large grids): output and
(up to --grad-max) q/k/v gradients; then timed, forward and forward + backward (sum of the
output), the best of --repeats interleaved rounds (two for a case slower than 2 s; the fast impl
runs --fast-repeats times per round), so that machine noise hits all cases alike. Speeds are
ratios against the fast impl measured in the same process at the same time.

Implementations: "tiled" (the default fast impl), "gather" (neighbour gather), "dense" (the
dense [n, n] mask handed to torch SDPA), "loop" (the original's per-cell Python loop restated,
only up to --loop-max), and "flex" (torch.nn.attention.flex_attention with a neighbourhood
mask_mod and block mask, under torch.compile; its compile time is reported apart; if it does
not run here, the error line is reported instead). Peak memory: RSS high-water mark of one
forward + backward (seqlab.bench.memory; an upper bound of the tensors' memory).

Then the claims, each PASS or MISS from this run: time linear in area (4x area within 4.5x time,
fast impl), at 32x32 >= 100x faster than the per-cell loop, faster than dense masked SDPA at
64x64 and beyond.
"""

import argparse
import json
import math
import time
from pathlib import Path

import torch

from seqlab.bench.memory import PeakMemory
from seqlab.bench.report import device_name, git_commit
from seqlab.ops.attention import attention
from seqlab.ops.local2d import local2d_attention, local2d_attention_loop, neighbourhood_mask

FAST = "tiled"
QUERY_CHUNK = 1024  # queries per chunk of the reference on large grids
SLOW_MS = 2000.0


def reference(q, k, v, window: int) -> torch.Tensor:
    """The dense-mask fp32 reference, in chunks of query cells (the full score matrix of a
    128 x 128 grid would take 4 GiB)."""
    b, h, gy, gx, d = q.shape
    mask = neighbourhood_mask(gy, gx, window)
    qf, kf, vf = (t.reshape(b, h, gy * gx, d) for t in (q, k, v))
    chunks = [
        attention(
            qf[:, :, i : i + QUERY_CHUNK], kf, vf, mask=mask[None, None, i : i + QUERY_CHUNK], impl="eager"
        )
        for i in range(0, gy * gx, QUERY_CHUNK)
    ]
    return torch.cat(chunks, dim=2).reshape(q.shape)


def flex_impl(g: int, window: int):
    """fn(q, k, v) -> out: compiled FlexAttention with the neighbourhood mask of a g x g grid."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    r = window // 2
    span = min(window, g)

    def neighbourhood(b, h, q_idx, kv_idx):
        qy, qx, ky, kx = q_idx // g, q_idx % g, kv_idx // g, kv_idx % g
        y0, x0 = (qy - r).clamp(0, g - span), (qx - r).clamp(0, g - span)
        return (ky >= y0) & (ky < y0 + span) & (kx >= x0) & (kx < x0 + span)

    # A fresh compile per grid: past torch's recompile limit it would silently run the unfused
    # eager FlexAttention (a dense O(n^2) computation) instead.
    torch.compiler.reset()
    block_mask = create_block_mask(neighbourhood, None, None, g * g, g * g, device="cpu")
    compiled = torch.compile(flex_attention)

    def fn(q, k, v):
        b, h, gy, gx, d = q.shape
        flat = [t.reshape(b, h, gy * gx, d) for t in (q, k, v)]
        return compiled(*flat, block_mask=block_mask).reshape(q.shape)

    return fn


def timed(fn) -> float:
    """Wall time of one fn() in ms."""
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def fwd_bwd(fn, q, k, v):
    leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]

    def run():
        for leaf in leaves:
            leaf.grad = None
        fn(*leaves).sum().backward()
        return [leaf.grad for leaf in leaves]

    return run


def grads_of(fn, q, k, v, upstream):
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    (fn(*leaves) * upstream).sum().backward()
    return [leaf.grad for leaf in leaves]


def bench_grid(g: int, args, flex_state: dict) -> list[dict]:
    torch.manual_seed(g)
    shape = (1, args.heads, g, g, args.head_dim)
    q, k, v = (torch.randn(shape) for _ in range(3))
    window = args.window
    impls = {
        "tiled": lambda q, k, v: local2d_attention(q, k, v, window=window, impl="tiled"),
        "gather": lambda q, k, v: local2d_attention(q, k, v, window=window, impl="gather"),
    }
    if g <= args.dense_max:
        impls["dense"] = lambda q, k, v: local2d_attention(q, k, v, window=window, impl="dense")
    if g <= args.loop_max:
        impls["loop"] = lambda q, k, v: local2d_attention_loop(q, k, v, window=window)
    rows = {name: {"grid": g, "impl": name} for name in impls}
    if not args.no_flex and flex_state.get("error") is None:
        try:
            start = time.perf_counter()
            fn = flex_impl(g, window)
            fn(q, k, v)  # compiles
            impls["flex"] = fn
            rows["flex"] = {"grid": g, "impl": "flex", "compile_s": time.perf_counter() - start}
        except Exception as e:  # noqa: BLE001 - any failure of an optional peer is reported, not fatal
            flex_state["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"

    # Correctness first: outputs (and gradients on grids up to --grad-max) against the reference.
    ref = reference(q, k, v, window)
    upstream = torch.randn(shape)
    ref_grads = grads_of(lambda *t: reference(*t, window), q, k, v, upstream) if g <= args.grad_max else None
    for name, fn in list(impls.items()):
        with torch.no_grad():
            rows[name]["out_diff"] = float((fn(q, k, v) - ref).abs().max())
        if ref_grads is not None:
            try:
                got = grads_of(fn, q, k, v, upstream)
                rows[name]["grad_diff"] = max(float((a - b).abs().max()) for a, b in zip(got, ref_grads))
            except Exception as e:  # noqa: BLE001 - e.g. a backward flex cannot compile on CPU
                rows[name]["error"] = f"backward: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
        if rows[name]["out_diff"] > args.tolerance or rows[name].get("grad_diff", 0.0) > args.tolerance:
            rows[name]["error"] = f"differs from the reference by {rows[name]['out_diff']:.2e}: not timed"
            del impls[name]

    # Timing, interleaved: round r times every impl once (forward, then forward + backward).
    fwd = {name: math.inf for name in impls}
    both = {name: math.inf for name in impls}
    backward_ok = {name: "error" not in rows[name] for name in impls}
    for round_ in range(args.repeats):
        for name, fn in impls.items():
            if round_ >= 2 and fwd[name] > SLOW_MS:
                continue  # a case slower than SLOW_MS is timed twice, not `repeats` times
            # The fast impl is cheap and every ratio and the scaling claim divide by it: it runs
            # --fast-repeats times per round, so a burst of machine load cannot inflate it.
            inner = args.fast_repeats if name == FAST else 1
            with torch.no_grad():
                fwd[name] = min([fwd[name]] + [timed(lambda fn=fn: fn(q, k, v)) for _ in range(inner)])
            if backward_ok[name]:
                try:
                    both[name] = min([both[name]] + [timed(fwd_bwd(fn, q, k, v)) for _ in range(inner)])
                except Exception as e:  # noqa: BLE001 - e.g. FlexAttention has no CPU backward
                    rows[name]["error"] = f"backward: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
                    backward_ok[name] = False
    for name, fn in impls.items():
        rows[name]["fwd_ms"] = fwd[name]
        rows[name]["fwd_bwd_ms"] = both[name] if backward_ok[name] else None
        if name in ("tiled", "gather", "dense") and backward_ok[name]:
            with PeakMemory("cpu") as mem:
                fwd_bwd(fn, q, k, v)()
            rows[name]["peak_mib"] = None if mem.peak_bytes is None else mem.peak_bytes / 2**20
    for name in rows:
        for key in ("fwd", "fwd_bwd"):
            t, t_fast = rows[name].get(f"{key}_ms"), rows[FAST].get(f"{key}_ms")
            rows[name][f"{key}_x"] = t / t_fast if t and t_fast else None
    return list(rows.values())


def _cell(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table(rows: list[dict]) -> str:
    header = ["grid", "impl", "fwd ms", "x fast", "fwd+bwd ms", "x fast", "peak MiB"]
    header += ["max abs d out", "max abs d grad", "note"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        note = r.get("error", "")
        if "compile_s" in r:
            note = (note + "; " if note else "") + f"compile {r['compile_s']:.1f} s"
        cells = [
            f"{r['grid']}x{r['grid']}",
            r["impl"],
            _cell(r.get("fwd_ms"), ".2f"),
            _cell(r.get("fwd_x"), ".2f"),
            _cell(r.get("fwd_bwd_ms"), ".2f"),
            _cell(r.get("fwd_bwd_x"), ".2f"),
            _cell(r.get("peak_mib"), ".0f"),
            _cell(r.get("out_diff"), ".1e"),
            _cell(r.get("grad_diff"), ".1e"),
            note,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def claims(rows: list[dict]) -> list[str]:
    by = {(r["grid"], r["impl"]): r for r in rows}
    grids = sorted({r["grid"] for r in rows})
    lines = []
    for a, b in zip(grids, grids[1:]):
        area = (b / a) ** 2
        for key, label in (("fwd_ms", "forward"), ("fwd_bwd_ms", "forward+backward")):
            ta, tb = by[(a, FAST)].get(key), by[(b, FAST)].get(key)
            if ta and tb:
                verdict = "PASS" if tb / ta <= 4.5 * area / 4 else "MISS"
                lines.append(
                    f"{verdict} linear in area ({label}): {a}x{a} -> {b}x{b} ({area:.0f}x area) "
                    f"takes {tb / ta:.2f}x the time (target <= {4.5 * area / 4:.1f}x)"
                )
    loop = by.get((32, "loop"))
    if loop and loop.get("fwd_x"):
        for key, label in (("fwd_x", "forward"), ("fwd_bwd_x", "forward+backward")):
            if loop.get(key):
                verdict = "PASS" if loop[key] >= 100 else "MISS"
                lines.append(
                    f"{verdict} 32x32: the per-cell loop takes {loop[key]:.0f}x "
                    f"the fast impl's time ({label}; target >= 100x)"
                )
    for g in grids:
        dense = by.get((g, "dense"))
        if g >= 64 and dense and dense.get("fwd_x"):
            for key, label in (("fwd_x", "forward"), ("fwd_bwd_x", "forward+backward")):
                if dense.get(key):
                    lines.append(
                        f"{'PASS' if dense[key] > 1 else 'MISS'} {g}x{g}: dense masked SDPA takes "
                        f"{dense[key]:.1f}x the fast impl's time ({label}; target > 1x)"
                    )
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m seqlab.bench.local2d", description=__doc__.splitlines()[0])
    p.add_argument("--grids", default="16,32,64,128", help="square grid sides, comma-separated")
    p.add_argument("--window", type=int, default=7)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds; each case's best counts")
    p.add_argument("--fast-repeats", type=int, default=4, help="runs of the fast impl per round")
    p.add_argument("--loop-max", type=int, default=32, help="largest grid the per-cell loop runs on")
    p.add_argument("--dense-max", type=int, default=128, help="largest grid dense masked SDPA runs on")
    p.add_argument("--grad-max", type=int, default=64, help="largest grid whose gradients are checked")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max abs difference from the reference")
    p.add_argument("--no-flex", action="store_true", help="skip FlexAttention")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="also write the rows and claims as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    grids = [int(g) for g in args.grids.split(",")]
    flex_state: dict = {}
    rows = []
    for g in grids:
        rows += bench_grid(g, args, flex_state)
        print(f"... {g}x{g} done", flush=True)
    print(
        f"\nlocal 2D attention, window {args.window}, q/k/v [1, {args.heads}, g, g, {args.head_dim}] fp32, "
        f"{args.threads} thread(s), {device_name(torch.device('cpu'))}, torch {torch.__version__}, "
        f"commit {git_commit()}; best of {args.repeats} rounds "
        f"({FAST}: {args.repeats * args.fast_repeats} runs); "
        f"'x fast' = time / the {FAST} impl's time\n"
    )
    print(table(rows))
    if flex_state.get("error"):
        print(f"\nflex: did not run here: {flex_state['error']}")
    results = claims(rows)
    print("\n" + "\n".join(results))
    if args.out:
        Path(args.out).write_text(
            json.dumps({"rows": rows, "claims": results, "flex_error": flex_state.get("error")}, indent=1)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
