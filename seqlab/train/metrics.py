"""Metrics as JSON lines and the loss-curve PNG of a run directory."""

import json
from pathlib import Path
from typing import Any

import torch

from seqlab.train.checkpoint import atomic_write_text


def _plain(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.item() if v.numel() == 1 else v.tolist()
    return v


class MetricsLog:
    def __init__(self, path: Path, keep_until_step: int | None = None):
        self.path = Path(path)
        if keep_until_step is not None and self.path.exists():
            # On resume, drop what was logged after the checkpoint: those steps run again.
            kept = [r for r in read_metrics(self.path) if r["step"] <= keep_until_step]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({k: _plain(v) for k, v in record.items()}) + "\n")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break  # a record cut short by a killed process: the steps after it run again
            raise
    return records


def plot_loss_curve(metrics_path: Path, png_path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for split, style in (("train", "-"), ("val", "o-")):
        pts = [(r["step"], r["loss"]) for r in records if r.get("split") == split and "loss" in r]
        if pts:
            ax.plot(*zip(*pts), style, label=f"{split} loss", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)


def losses(run_dir: Path, split: str = "train") -> dict[int, float]:
    """{step: loss} of one split ("train" or "val") in a run directory's metrics.jsonl."""
    return {
        r["step"]: r["loss"] for r in read_metrics(Path(run_dir) / "metrics.jsonl") if r["split"] == split
    }
