"""Cost of a KAN layer against a parameter-matched MLP: `python -m seqlab.bench.kan`.

One table. For each width c and dtype (fp32, bf16 autocast): forward + backward over N tokens
(default 4096) of

    mlp             GELU MLP c -> h -> c, h = (KAN parameters) / (2 c): the baseline (10 c^2
                    parameters for G = 5, k = 3, as the KANLinear)
    kan recompute   KANLinear c -> c, closed-form local bases, backward recomputes them
                    (seqlab's default: saves only x)
    kan dense       the same forward; autograd keeps the dense basis [N, c (G + k + 1)]
    kan reference   Cox-de Boor recursion into the full basis + matmul (efficient-kan's scheme)
    pykan           pykan's KANLayer at the same in/out/grid (the `bench` extra), when its
                    [N, c, c] activations fit under --peer-max-gb; otherwise reported as skipped

with, per row: the median time of `--repeats` steps (cases interleaved round-robin so they
share the machine's moment), its ratio to the MLP measured in the same run, the bytes saved
for backward (torch.autograd.graph.saved_tensors_hooks, parameters excluded: the activation
memory), the peak memory of one step (seqlab.bench.memory.PeakMemory: CUDA allocator peak, or
peak RSS on Linux CPU, parameters and their gradients allocated beforehand) and both as ratios
to the MLP, and the max abs difference of outputs and gradients (input and every parameter)
from the reference row (for bf16: from the fp32 reference, i.e. bf16 round-off included).
Every KAN row shares the reference row's weights. Before timing anything, the fp32 fast rows
must match the reference (the run stops otherwise).

    python -m seqlab.bench.kan                       # c = 128 and 384, fp32 and bf16, 1 thread
    python -m seqlab.bench.kan --dims 128 --dtypes float32 --repeats 3 --out runs/bench_kan
"""

import argparse
import json
import math
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from seqlab.bench.memory import PeakMemory
from seqlab.bench.peak import sync
from seqlab.bench.report import command_line, device_name, git_commit
from seqlab.layers.kan import KANLinear, kan_linear_params
from seqlab.layers.mlp import MLP

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
ROWS = ("mlp", "kan recompute", "kan dense", "kan reference", "pykan")
TARGET_TIME, TARGET_MEMORY = 1.25, 1.0
# The fast rows must match the reference to this (fp32, relative to the largest magnitude).
CHECK_RTOL = 1e-4


class PykanRow(torch.nn.Module):
    """pykan's KANLayer as a [N, c] -> [N, c] module (it returns y and three [N, out, in] tensors)."""

    def __init__(self, dim: int, grid_size: int, spline_order: int, device):
        super().__init__()
        try:
            from kan.KANLayer import KANLayer
        except ImportError:
            raise ImportError("pykan is not installed: pip install 'seqlab[bench]'") from None
        self.layer = KANLayer(in_dim=dim, out_dim=dim, num=grid_size, k=spline_order, device=str(device))

    def forward(self, x):
        return self.layer(x)[0]


def pykan_bytes(tokens: int, dim: int) -> int:
    # KANLayer keeps about a dozen [N, out, in] float32 tensors alive through backward
    # (preacts, postspline, postacts, the scaled branches and their sum, the mask product).
    return 12 * tokens * dim * dim * 4


def build_rows(dim: int, grid_size: int, spline_order: int, device, peer_max_gb: float, tokens: int):
    torch.manual_seed(0)
    params = kan_linear_params(dim, dim, grid_size, spline_order)
    rows = {"mlp": MLP(dim, round(params / (2 * dim)))}
    reference = KANLinear(dim, dim, grid_size, spline_order, impl="reference")
    with torch.no_grad():
        # Splines of the size of the base branch, so the spline path is really exercised.
        reference.spline_weight.normal_(std=1 / math.sqrt(dim))
    for impl in ("recompute", "dense"):
        layer = KANLinear(dim, dim, grid_size, spline_order, impl=impl)
        layer.load_state_dict(reference.state_dict())
        rows[f"kan {impl}"] = layer
    rows["kan reference"] = reference
    skipped = {}
    need = pykan_bytes(tokens, dim)
    if need > peer_max_gb * 2**30:
        skipped["pykan"] = f"not run: needs ~{need / 2**30:.0f} GiB for [N, c, c] activations (--peer-max-gb)"
    else:
        try:
            rows["pykan"] = PykanRow(dim, grid_size, spline_order, device)
        except ImportError as e:
            skipped["pykan"] = f"not run: {e}"
    return {name: module.to(device) for name, module in rows.items()}, skipped


def _autocast(device, dtype):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def step(module, x, probe, dtype):
    """One forward + backward; returns (y, dx, parameter gradients) as float32."""
    module.zero_grad(set_to_none=False)
    xi = x.detach().clone().requires_grad_()
    with _autocast(x.device, dtype):
        y = module(xi)
    (y.float() * probe).sum().backward()
    return y.detach().float(), xi.grad, [p.grad.clone() for p in module.parameters() if p.requires_grad]


def max_diffs(got, expected) -> dict:
    y, dx, grads = got
    ey, edx, egrads = expected
    return {
        "output": (y - ey).abs().max().item(),
        "grad_input": (dx - edx).abs().max().item(),
        "grad_params": max((a - b).abs().max().item() for a, b in zip(grads, egrads, strict=True)),
    }


def saved_bytes(module, x, probe, dtype) -> int:
    """Bytes autograd saves for backward in one forward, parameters (and views of them) excluded."""
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    seen, total = set(), 0

    def pack(t):
        nonlocal total
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in params and key not in seen:
            seen.add(key)
            total += storage.nbytes()
        return t

    xi = x.detach().clone().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _autocast(x.device, dtype):
        y = module(xi)
    (y.float() * probe).sum().backward()
    return total


def peak_bytes(module, x, probe, dtype) -> int | None:
    step(module, x, probe, dtype)  # gradients allocated before the measured step
    with PeakMemory(x.device) as mem:
        step(module, x, probe, dtype)
    return mem.peak_bytes


def run(args) -> dict:
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    results = []
    for dim in args.dims:
        rows, skipped = build_rows(
            dim, args.grid_size, args.spline_order, device, args.peer_max_gb, args.tokens
        )
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(args.tokens, dim, generator=gen).to(device)
        probe = torch.randn(args.tokens, dim, generator=gen).to(device)
        exact = step(rows["kan reference"], x, probe, torch.float32)
        for fast in ("kan recompute", "kan dense"):
            diffs = max_diffs(step(rows[fast], x, probe, torch.float32), exact)
            scale = max(exact[0].abs().max().item(), exact[1].abs().max().item(), 1.0)
            if max(diffs.values()) > CHECK_RTOL * scale:
                raise SystemExit(f"{fast} does not match the reference at c={dim}: {diffs}")
        for dtype_name in args.dtypes:
            dtype = DTYPES[dtype_name]
            log(f"c={dim} {dtype_name}: checking and measuring memory")
            entries = {}
            for name, module in rows.items():
                entry = {"dim": dim, "dtype": dtype_name, "row": name}
                entry["params"] = sum(p.numel() for p in module.parameters() if p.requires_grad)
                if name.startswith("kan"):
                    entry["max_abs_diff"] = max_diffs(step(module, x, probe, dtype), exact)
                entry["saved_bytes"] = saved_bytes(module, x, probe, dtype)
                entry["peak_bytes"] = peak_bytes(module, x, probe, dtype)
                entries[name] = entry
            log(f"c={dim} {dtype_name}: timing {args.repeats} rounds of {', '.join(rows)}")
            times = {name: [] for name in rows}
            for module in rows.values():  # warmup
                step(module, x, probe, dtype)
            for _ in range(args.repeats):
                for name, module in rows.items():
                    sync(device)
                    start = time.perf_counter()
                    step(module, x, probe, dtype)
                    sync(device)
                    times[name].append(time.perf_counter() - start)
            base = entries["mlp"]
            base["seconds"] = statistics.median(times["mlp"])
            for name, entry in entries.items():
                entry["seconds"] = statistics.median(times[name])
                entry["all_seconds"] = times[name]
                entry["time_ratio"] = entry["seconds"] / base["seconds"]
                entry["saved_ratio"] = entry["saved_bytes"] / base["saved_bytes"]
                peak = entry["peak_bytes"]
                entry["peak_ratio"] = peak / base["peak_bytes"] if peak and base["peak_bytes"] else None
                results.append(entry)
            for name, why in skipped.items():
                results.append({"dim": dim, "dtype": dtype_name, "row": name, "skipped": why})
    return {
        "environment": {
            "device": device_name(device),
            "threads": torch.get_num_threads(),
            "torch_version": torch.__version__,
            "commit": git_commit(),
            "command": "python -m seqlab.bench.kan " + shlex.join(sys.argv[1:])
            if sys.argv[0].endswith("kan.py")
            else command_line(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "memory_method": PeakMemory(device).method
            or ("CUDA allocator peak" if device.type == "cuda" else "peak RSS (VmHWM)"),
        },
        "settings": {
            "tokens": args.tokens,
            "grid_size": args.grid_size,
            "spline_order": args.spline_order,
            "repeats": args.repeats,
        },
        "results": results,
    }


def _mb(n) -> str:
    return "-" if n is None else f"{n / 2**20:.1f}"


def _ratio(r) -> str:
    return "-" if r is None else f"{r:.2f}x"


def markdown(report: dict) -> str:
    env, settings = report["environment"], report["settings"]
    lines = [
        f"KAN layer vs parameter-matched GELU MLP, forward + backward, {settings['tokens']} tokens, "
        f"G={settings['grid_size']}, k={settings['spline_order']}; {env['device']}, {env['threads']} "
        f"thread(s), torch {env['torch_version']}, commit {env['commit']}, {env['date']}",
        f"command: `{env['command']}`; median of {settings['repeats']} interleaved steps; peak memory: "
        f"{env['memory_method']}; targets: time <= {TARGET_TIME}x, memory <= {TARGET_MEMORY}x",
        "",
        "| c | dtype | row | params | ms | time vs mlp | saved MiB | saved vs mlp | peak MiB "
        "| peak vs mlp | max abs diff out / d_in / d_params (vs fp32 reference) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["results"]:
        if "skipped" in r:
            lines.append(f"| {r['dim']} | {r['dtype']} | {r['row']} | | {r['skipped']} | | | | | | |")
            continue
        diff = r.get("max_abs_diff")
        diff_text = "-" if diff is None else " / ".join(f"{diff[k]:.1e}" for k in diff)
        lines.append(
            f"| {r['dim']} | {r['dtype']} | {r['row']} | {r['params']} | {1000 * r['seconds']:.1f} "
            f"| {_ratio(r['time_ratio'])} | {_mb(r['saved_bytes'])} | {_ratio(r['saved_ratio'])} "
            f"| {_mb(r['peak_bytes'])} | {_ratio(r['peak_ratio'])} | {diff_text} |"
        )
    return "\n".join(lines) + "\n"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m seqlab.bench.kan", description=__doc__.split("\n")[0])
    p.add_argument("--dims", type=int, nargs="+", default=[128, 384])
    p.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["float32", "bfloat16"])
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--grid-size", type=int, default=5)
    p.add_argument("--spline-order", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--peer-max-gb", type=float, default=6.0, help="skip pykan above this activation memory")
    p.add_argument("--out", type=Path, default=None, help="write results.json and results.md here")
    args = p.parse_args(argv)
    report = run(args)
    text = markdown(report)
    print(text, end="")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / "results.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
