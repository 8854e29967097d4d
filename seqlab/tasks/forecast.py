"""Forecasting: one-step-ahead prediction of a real time series, measured against naive forecasts.

The series [n, f] (seqlab.data.series: sunspots, co2, ... or a CSV) is split by time, never
shuffled: train = the first 80% of the points, val = the next 10%, test = the last 10%
(val_fraction and test_fraction). Every feature is standardized with the mean and standard
deviation of the TRAIN part only, so nothing about val or test leaks into the inputs.

A window is context + 1 consecutive points; like the causal LM, the model maps the first
context points to a prediction of the next point at every position (teacher forcing):

    inputs  = z[i : i + context]            [b, t, f]   z: the standardized series
    targets = z[i + 1 : i + context + 1]    [b, t, f]   the model output must have this shape

Train windows lie inside the train part and every position counts in the loss. A val or test
window ENDS at a point of its part (its context may reach back into earlier parts: that past is
known when the forecast is made) and only its last position counts: the one-step forecast from a
full context, one per val/test point. So "mse_loss" (the primary loss, standardized units) is
the teacher-forced MSE on train and the one-step forecast MSE on val/test.

Metrics, in the series' original units, on the last position of each window (one-step-ahead,
h = 1; features averaged): mse / mae of the model, naive_mse / naive_mae of the last-value
forecast z[j - 1], seasonal_mse / seasonal_mae of the seasonal-naive forecast z[j - season]
(the season per dataset: sunspots 11 years, co2 52 weeks, elnino 12 months; taken from the
whole series, so it may lie before the window), and over whole splits (evaluate, eval_summary)
mse_vs_naive / mse_vs_seasonal: the model's MSE over the baseline's, in standardized units
(the same ratio as in original units for one feature; scale-free for several).

Built from the run config: data.source (a built-in series or a CSV file; default sunspots),
data.val_fraction (the size of val and of test) and task_options: column, season (None = the
dataset's own, 0 = none), nan (missing-value policy) and context (points per window; default
the model's max_seq_len). The model must take num_features = the number of series columns
(model_requirements). A reopened run (saved state) standardizes with the saved train
statistics, so a run evaluated on another series sees the inputs it was trained on.

The model: anything mapping inputs [b, t, f] to a seqlab ModelOutput whose logits are the
prediction [b, t, f] and whose aux_losses are added to the loss (metrics are logged).
`SeriesModel` wraps a [b, t, c] backbone with projections from and to the f series features,
predicting the change from the last value. Samples: an iterated forecast table.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from seqlab.data.series import NAN_POLICIES, read_series
from seqlab.errors import CheckpointError, ConfigError, DataError
from seqlab.layers.series import SeriesModel
from seqlab.models.output import ModelOutput
from seqlab.tasks.base import (
    Task,
    check_context,
    detach_metrics,
    reject_unknown_sample_options,
    sequence_context,
)

SPLITS = ("train", "val", "test")
SAMPLE_OPTIONS = ("max_new_tokens",)


def predict(model: nn.Module, inputs: Tensor) -> tuple[Tensor, dict[str, Tensor], dict[str, Any]]:
    """(prediction [b, t, f], aux losses to add, metrics to log) of a model returning ModelOutput."""
    out = model(inputs)
    if not isinstance(out, ModelOutput):
        raise DataError(
            f"a forecasting model must return seqlab.models.output.ModelOutput (logits = the "
            f"prediction [batch, time, features]), got {type(out).__name__}; wrap its result in "
            "ModelOutput(logits=..., aux_losses=...)"
        )
    pred, aux, metrics = out.logits, out.aux_losses, out.metrics
    if pred.shape != inputs.shape:
        raise DataError(
            f"the model maps inputs {tuple(inputs.shape)} to {tuple(pred.shape)}; forecasting needs "
            f"[batch, time, {inputs.shape[-1]} series features] back: build it with that many features "
            "(e.g. wrap the backbone in seqlab.layers.series.SeriesModel)"
        )
    return pred, aux, metrics


class ForecastTask(Task):
    name = "forecast"
    primary_loss_key = "mse_loss"

    @dataclass
    class Options:
        """task_options of the forecast task (`seqlab train --set task_options.column=...`)."""

        column: str | int | list | None = None  # None = every numeric column (built-ins: their own)
        season: int | None = None  # seasonal-naive period; None = the dataset's own, 0 = none
        nan: str = "interpolate"  # missing values: interpolate | drop | error
        context: int | None = None  # points per window; None = the model's max_seq_len

        def __post_init__(self):
            check_context(self.context)
            if self.season is not None and self.season < 0:
                raise ConfigError(
                    f"task_options.season={self.season} must be >= 0 (0 = none) or null (the dataset's own)"
                )
            if self.nan not in NAN_POLICIES:
                raise ConfigError(f"task_options.nan={self.nan!r} must be one of {NAN_POLICIES}")

    def __init__(
        self,
        series: np.ndarray,
        context: int,
        *,
        season: int | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        name: str = "series",
        columns: list[str] | None = None,
        stats: tuple[list[float], list[float]] | None = None,
        sample_steps: int = 12,
    ):
        """stats: (mean, std) per feature to standardize with (a reopened run's); None = the
        train part's."""
        values = np.asarray(series, dtype=np.float64)
        values = values[:, None] if values.ndim == 1 else values
        if values.ndim != 2 or not np.isfinite(values).all():
            raise DataError(
                f"series {name!r} must be a finite [time, features] array, got shape {values.shape}"
                + ("" if values.ndim != 2 else f" with {int((~np.isfinite(values)).sum())} NaN/inf values")
            )
        if not isinstance(context, int) or context < 1:
            raise ConfigError(f"forecast context must be a positive int (the window length), got {context!r}")
        if season is not None and (not isinstance(season, int) or season < 0):
            raise ConfigError(f"forecast season must be a positive int, 0 or null (none), got {season!r}")
        if not (val_fraction > 0 and test_fraction > 0 and val_fraction + test_fraction < 1):
            raise ConfigError(
                f"val_fraction={val_fraction} and test_fraction={test_fraction} must be > 0 with a sum < 1"
            )
        n, self.num_features = values.shape
        self.series_name, self.columns = name, list(columns or [str(i) for i in range(self.num_features)])
        self.context = context
        self.season = season or None
        self.train_end = round(n * (1 - val_fraction - test_fraction))
        self.val_end = round(n * (1 - test_fraction))
        if self.train_end < context + 1 or self.val_end == self.train_end or self.val_end == n:
            raise DataError(
                f"series {name!r} is too short: {n} points split {self.train_end}/"
                f"{self.val_end - self.train_end}/{n - self.val_end} (train/val/test) cannot give one train "
                f"window of context + 1 = {context + 1} points and non-empty val and test parts; use a "
                "shorter context (sequence_length / max_seq_len) or a longer series"
            )
        if stats is None:
            train = values[: self.train_end]
            mean, std = train.mean(0), train.std(0)
            std = np.where(std > 0, std, 1.0)  # a constant feature: centered, not scaled
        else:
            mean, std = (np.asarray(v, dtype=np.float64) for v in stats)
            if mean.shape != (self.num_features,) or std.shape != (self.num_features,):
                raise DataError(
                    f"series {name!r} has {self.num_features} features but the run was trained on "
                    f"{mean.size}; pick the same columns (task_options.column)"
                )
        self.sample_steps = sample_steps
        self.mean = torch.from_numpy(mean).float()  # [f]
        self.std = torch.from_numpy(std).float()  # [f]
        self.data = torch.from_numpy((values - mean) / std).float()  # [n, f] standardized
        # Window start ranges (inclusive); a window's last target is z[start + context].
        self.starts = {
            "train": (0, self.train_end - context - 1),
            "val": (self.train_end - context, self.val_end - context - 1),
            "test": (self.val_end - context, n - context - 1),
        }
        self._baselines: dict[str, dict[str, float]] = {}

    @classmethod
    def from_config(cls, cfg, model_config, state: dict[str, Any] | None = None) -> "ForecastTask":
        """The series of data.source (None = sunspots) with val and test parts of
        data.val_fraction each; `state` (a reopened run's) gives the standardization."""
        options = cls.parse_options(cfg.task_options)
        if state is not None and not {"mean", "std"} <= set(state):
            raise CheckpointError(
                "the run's task.json holds no train statistics (mean, std) for the forecast task; "
                "the run directory is incomplete or was edited: retrain"
            )
        data = read_series(cfg.data.source or "sunspots", options.column, nan=options.nan)
        return cls(
            data.values,
            sequence_context(model_config, options.context),
            season=data.season if options.season is None else options.season,
            val_fraction=cfg.data.val_fraction,
            test_fraction=cfg.data.val_fraction,
            name=data.name,
            columns=data.columns,
            stats=None if state is None else (state["mean"], state["std"]),
            sample_steps=cfg.train.sample_tokens,
        )

    def model_requirements(self) -> dict[str, Any]:
        """Model config values the data fixes: the number of series features."""
        return {"num_features": self.num_features}

    def num_windows(self, split: str) -> int:
        lo, hi = self._range(split)
        return hi - lo + 1

    def _range(self, split: str) -> tuple[int, int]:
        if split not in self.starts:
            raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
        return self.starts[split]

    def windows(self, split: str, starts: Tensor | None = None) -> dict[str, Tensor]:
        """The batch of the windows starting at `starts` (default: every window of the split, in order).

        inputs, targets [b, t, f]; weight [b, t] (which positions count in the loss);
        seasonal [b, f] the seasonal-naive forecast of the last target and seasonal_ok [b].
        """
        lo, hi = self._range(split)
        if starts is None:
            starts = torch.arange(lo, hi + 1)
        window = self.data[starts[:, None] + torch.arange(self.context + 1)]  # [b, t + 1, f]
        weight = torch.ones(len(starts), self.context)
        if split != "train":
            weight[:, :-1] = 0
        batch = {"inputs": window[:, :-1], "targets": window[:, 1:], "weight": weight}
        if self.season:
            source = starts + self.context - self.season
            batch["seasonal"] = self.data[source.clamp_min(0)]
            batch["seasonal_ok"] = source >= 0
        return batch

    def batch(self, split: str, batch_size: int, generator: torch.Generator) -> dict[str, Tensor]:
        lo, hi = self._range(split)
        return self.windows(split, torch.randint(lo, hi + 1, (batch_size,), generator=generator))

    def count_tokens(self, batch: dict[str, Tensor]) -> int:
        """Time steps the model reads (batch x context); a step holds num_features values."""
        return batch["inputs"].shape[0] * batch["inputs"].shape[1]

    def _last_errors(self, pred: Tensor, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Standardized errors of the last position's forecasts: model, naive, seasonal [rows, f]."""
        target = batch["targets"][:, -1].float()
        errors = {"": pred[:, -1].float() - target, "naive_": batch["inputs"][:, -1].float() - target}
        if "seasonal" in batch:
            ok = batch["seasonal_ok"]
            errors["seasonal_"] = batch["seasonal"].float()[ok] - target[ok]
            errors["model_seasonal_rows"] = errors[""][ok]
        return errors

    def _unit_metrics(self, errors: dict[str, Tensor]) -> dict[str, Tensor]:
        std = self.std.to(errors[""].device)
        out = {}
        for prefix in ("", "naive_", "seasonal_"):
            if prefix in errors and len(errors[prefix]):
                e = errors[prefix] * std  # original units
                out[f"{prefix}mse"], out[f"{prefix}mae"] = e.square().mean(), e.abs().mean()
        return out

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Any]]:
        pred, aux, model_metrics = predict(model, batch["inputs"])
        squared = (pred.float() - batch["targets"].float()).square().mean(-1)  # [b, t]
        weight = batch["weight"]
        mse = (squared * weight).sum() / weight.sum()
        total = mse + sum(aux.values()) if aux else mse
        metrics: dict[str, Any] = {"mse_loss": mse.detach()}
        metrics.update({k: v.detach() for k, v in aux.items()})
        metrics.update(detach_metrics(model_metrics))
        with torch.no_grad():
            metrics.update(self._unit_metrics(self._last_errors(pred.detach(), batch)))
        return total, metrics

    def baselines(self, split: str = "val") -> dict[str, float]:
        """Standardized MSE of the naive and seasonal-naive forecasts over every window of a split."""
        if split not in self._baselines:
            batch = self.windows(split)
            errors = self._last_errors(batch["inputs"], batch)  # the prediction is unused here
            self._baselines[split] = {
                k + "mse": float(errors[k].square().mean()) for k in ("naive_", "seasonal_") if k in errors
            }
        return self._baselines[split]

    def eval_summary(self, mean_loss: float) -> dict[str, float]:
        """Ratios of the validation loss (one-step MSE, standardized) to the naive baselines' on val."""
        base = self.baselines("val")
        out = {"mse_vs_naive": mean_loss / max(base["naive_mse"], 1e-12)}
        if "seasonal_mse" in base:
            out["mse_vs_seasonal"] = mean_loss / max(base["seasonal_mse"], 1e-12)
        return out

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str = "test", batch_size: int = 256) -> dict[str, float]:
        """Exact one-step metrics over every window of `split` (see the module docstring)."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        lo, hi = self._range(split)
        parts: dict[str, list[Tensor]] = {}
        model_metrics: dict[str, float] = {}
        for first in range(lo, hi + 1, batch_size):
            starts = torch.arange(first, min(first + batch_size, hi + 1))
            batch = {k: v.to(device) for k, v in self.windows(split, starts).items()}
            pred, _, metrics = predict(model, batch["inputs"])
            for k, v in self._last_errors(pred, batch).items():
                parts.setdefault(k, []).append(v.cpu())
            for k, v in metrics.items():
                if isinstance(v, Tensor) and v.numel() == 1:
                    model_metrics[k] = model_metrics.get(k, 0.0) + float(v) * len(starts)
        model.train(was_training)
        errors = {k: torch.cat(v) for k, v in parts.items()}
        n = hi - lo + 1
        out = {"windows": float(n), "mse_loss": float(errors[""].square().mean())}
        out.update({k: float(v) for k, v in self._unit_metrics(errors).items()})
        out["mse_vs_naive"] = out["mse_loss"] / max(float(errors["naive_"].square().mean()), 1e-12)
        if len(errors.get("seasonal_", [])):
            model_rows = float(errors["model_seasonal_rows"].square().mean())
            out["mse_vs_seasonal"] = model_rows / max(float(errors["seasonal_"].square().mean()), 1e-12)
        out.update({k: v / n for k, v in model_metrics.items()})
        return out

    @torch.no_grad()
    def decode_metrics(self, model, split: str, limit: int) -> dict[str, float]:
        return {}  # the loss says it all (no decoding metric)

    def sample(self, model: nn.Module, run_dir: Path | None = None, **options) -> str:
        """An iterated forecast of the first test points from the context before them, vs the truth.

        Each step feeds the forecast back as the newest input (multi-step, unlike the one-step
        metrics). Options: max_new_tokens, the number of steps (default train.sample_tokens,
        at most the test part). Writes no files.
        """
        reject_unknown_sample_options(self.name, options, SAMPLE_OPTIONS)
        max_new_tokens = options.get("max_new_tokens", self.sample_steps)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ConfigError(f"max_new_tokens (forecast steps) must be an int >= 0, got {max_new_tokens!r}")
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        steps = min(max_new_tokens, len(self.data) - self.val_end)
        window = self.data[self.val_end - self.context : self.val_end].to(device)[None]  # [1, t, f]
        lines = [f"{self.series_name}: iterated forecast of the first {steps} test points (original units)"]
        lines.append(f"{'step':>4}  {'forecast':>24}  {'actual':>24}")
        for step in range(steps):
            pred, _, _ = predict(model, window)
            nxt = pred[:, -1:]  # [1, 1, f]
            window = torch.cat([window[:, 1:], nxt], 1)
            forecast = nxt[0, 0].cpu() * self.std + self.mean
            actual = self.data[self.val_end + step] * self.std + self.mean
            fmt = lambda v: ", ".join(f"{x:.4g}" for x in v.tolist())
            lines.append(f"{step + 1:>4}  {fmt(forecast):>24}  {fmt(actual):>24}")
        model.train(was_training)
        return "\n".join(lines)

    def state_dict(self) -> dict[str, Any]:
        """What the run directory records: the series, its split points and the train statistics."""
        return {
            "series": self.series_name,
            "columns": self.columns,
            "context": self.context,
            "season": self.season,
            "split_points": [self.train_end, self.val_end, len(self.data)],
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
        }


__all__ = ["SPLITS", "ForecastTask", "SeriesModel", "predict"]
