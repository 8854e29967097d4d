"""Metrics as JSON lines (also sent to the run's experiment trackers) and the loss-curve PNG
of a run directory."""

import contextlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from seqlab.train.checkpoint import atomic_write_text
from seqlab.train.tracking import Tracker


def _plain(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.item() if v.numel() == 1 else v.tolist()
    return v


class MetricsLog:
    """Appends metrics records to a JSON-lines file and hands each to the run's trackers
    (seqlab.train.tracking), so they receive exactly what the file holds.

    `keep_until_step`: drop the records after this step first (a resume: those steps run
    again; -1 drops all). A context manager: leaving it closes the trackers, so their last
    events are written whether the run finishes, is interrupted or fails.
    """

    def __init__(self, path: Path, keep_until_step: int | None = None, trackers: Sequence[Tracker] = ()):
        self.path = Path(path)
        self.trackers = list(trackers)
        if keep_until_step is not None and self.path.exists():
            kept = [r for r in read_metrics(self.path) if r["step"] <= keep_until_step]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict[str, Any]) -> None:
        record = {k: _plain(v) for k, v in record.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for tracker in list(self.trackers):
            try:
                tracker.log(record)
            except Exception as e:  # noqa: BLE001 - metrics.jsonl is the record; a tracker is extra
                self.trackers.remove(tracker)
                print(
                    f"seqlab: {type(tracker).__name__} failed ({type(e).__name__}: {e}); it gets no more "
                    f"records, metrics.jsonl keeps them all"
                )
                with contextlib.suppress(Exception):
                    tracker.close()

    def close(self) -> None:
        """Close every tracker (each one, even when another's close raises)."""
        trackers, self.trackers = self.trackers, []
        with contextlib.ExitStack() as closing:
            for tracker in trackers:
                closing.callback(tracker.close)

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
