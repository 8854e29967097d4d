"""Benchmark results as JSON (every raw number plus the environment) and a markdown table.

results.json: {"environment", "settings", "cases", "comparisons"}; results.md: the same
numbers as two tables (one row per case; one row per seqlab/peer pair), headed by the
device, dtypes, torch version, commit, date and the exact command line. A decode context
past a model's fixed context reads "n/a (max_seq_len N)" (its JSON row has "status": "n/a").

Comparison ratios are oriented so that > 1 means seqlab is better: tokens/s and MFU are
seqlab / peer, memory and decode latency are peer / seqlab; the loss difference is
seqlab - peer (negative: seqlab reached a lower validation loss).
"""

import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

import seqlab
from seqlab.bench.peak import matmul_peak_flops


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def git_commit() -> str:
    """Short commit of the seqlab source tree, with "-dirty" if it has uncommitted changes."""
    root = Path(seqlab.__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def command_line() -> str:
    argv = list(sys.argv)
    if argv and Path(argv[0]).name in ("seqlab", "__main__.py"):
        argv[0] = "seqlab"
    return shlex.join(argv)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(device: torch.device, dtypes: list[str], peak_sizes=None, command: str | None = None) -> dict:
    return {
        "device": device_name(device),
        "device_type": device.type,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "dtypes": list(dtypes),
        "matmul_peak_flops": {d: matmul_peak_flops(d, device, peak_sizes) for d in dtypes},
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "torch_version": torch.__version__,
        "seqlab_version": seqlab.__version__,
        "x_transformers_version": _version("x-transformers"),
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "commit": git_commit(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command if command is not None else command_line(),
    }


def write_report(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "results.json", out_dir / "results.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(markdown(report))
    return json_path, md_path


def _num(value, fmt: str, missing: str = "-") -> str:
    return missing if value is None else format(value, fmt)


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.1f}%" if fraction >= 0.01 else f"{100 * fraction:.2g}%"


def _decode_cell(d: dict[str, Any]) -> str:
    """ms/token of one decode row; "n/a (reason)" for a context the model cannot hold."""
    if d.get("status") == "n/a":
        return f"n/a ({d['reason']})"
    cell = _num(d.get("ms_per_token"), ".2f")
    return cell + ("" if d.get("mode", "kv-cache") == "kv-cache" else " (no cache)")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def markdown(report: dict[str, Any]) -> str:
    env, settings = report["environment"], report["settings"]
    contexts = settings["decode_contexts"]
    peaks = ", ".join(f"{d} {v / 1e9:,.0f} GFLOP/s" for d, v in env["matmul_peak_flops"].items())
    budget = f"{settings['max_iters']} steps" + (
        f" or {settings['max_time']:g} s" if settings.get("max_time") is not None else ""
    )
    lines = [
        "# seqlab bench",
        "",
        f"- device: {env['device']} ({env['device_type']}, {env['torch_threads']} torch threads, "
        f"{env['cpu_count']} CPUs)",
        f"- dtypes: {', '.join(env['dtypes'])} (bfloat16 = autocast); measured matmul peak: {peaks}",
        f"- torch {env['torch_version']}, seqlab {env['seqlab_version']}, "
        f"x-transformers {env['x_transformers_version'] or 'not installed'}, "
        f"commit {env['commit']}, {env['date']}",
        f"- budget: {budget}; recipe: {', '.join(settings['recipe'])}",
    ]
    override_sets = {tuple(r["overrides"]) for r in report["cases"]}
    shared = override_sets.pop() if len(override_sets) == 1 else ()
    if shared:
        lines.append(f"- overrides: {' '.join(shared)}")
    lines += [f"- command: `{env['command']}`", ""]
    header = ["case", "params", "val loss", "tokens/s", "MFU", "peak mem MB"]
    header += [f"decode ms/tok @{c}" for c in contexts] + ["status"]
    rows = []
    for r in report["cases"]:
        if r["status"] != "ok":
            rows.append([r["name"], *["-"] * (len(header) - 2), f"{r['status']}: {r['reason']}"])
            continue
        t = r["train"]
        decode = {d["context"]: d for d in r["decode"]}
        mem = r["memory"]["peak_bytes"]
        rows.append(
            [
                r["name"] + (f" ({' '.join(r['overrides'])})" if r["overrides"] and not shared else ""),
                f"{r['params'] / 1e6:.2f}M",
                _num(t["val_loss"], ".4f"),
                f"{t['tokens_per_s']:,.0f}" + ("*" if t["throughput_source"] != "steady" else ""),
                _percent(r["mfu"]),
                _num(mem / 2**20 if mem is not None else None, ".1f"),
                *(_decode_cell(decode.get(c, {})) for c in contexts),
                "ok" if t["stopped"] == "finished" else f"ok ({t['stopped']} at step {t['steps']})",
            ]
        )
    lines += _table(header, rows)
    if any(r["status"] == "ok" and r["train"]["throughput_source"] != "steady" for r in report["cases"]):
        lines += [
            "",
            "\\* run too short for a clean log window: average over the whole run, evaluations included",
        ]
    if report["comparisons"]:
        lines += ["", "## seqlab vs peer (x-transformers, same config, same process)", ""]
        lines += [
            "Ratios > 1 mean seqlab is better: tokens/s and MFU are seqlab / peer, memory and decode "
            "latency peer / seqlab; val loss diff is seqlab - peer.",
            "",
        ]
        header = ["model", "preset", "dtype", "tokens/s", "MFU", "memory", "val loss diff"]
        header += [f"decode @{c}" for c in contexts]
        rows = [
            [
                c["model"],
                c["preset"],
                c["dtype"],
                f"{c['tokens_per_s_ratio']:.2f}x",
                f"{c['mfu_ratio']:.2f}x",
                _num(c["memory_ratio"], ".2f") + ("x" if c["memory_ratio"] is not None else ""),
                _num(c["val_loss_diff"], "+.4f"),
                *(
                    _num(c["decode_speedup"].get(str(ctx)), ".2f")
                    + ("x" if str(ctx) in c["decode_speedup"] else "")
                    for ctx in contexts
                ),
            ]
            for c in report["comparisons"]
        ]
        lines += _table(header, rows)
    return "\n".join(lines) + "\n"
