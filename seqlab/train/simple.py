"""The seed's plain training path (LFM_Entropy, seed 000; spec specs/lfm.md).

    train_model(model, dataloader, num_epochs, learning_rate) -> mean loss of each epoch
        for each epoch, for (x, y) in dataloader:
            loss = entropy_regularization_loss(model, mse(model(x), y))   MSE + the MoE terms
            Adam step (gradient norm clipped at 1)

    run_lfmodel_train(hyperparameters, training, data="sunspots")         what `lfmodel_train` runs
        the series split by time (seqlab.tasks.forecast.ForecastTask: 80/10/10, standardized
        with train statistics), at most num_samples train windows of sequence_length points,
        the lfm_series model (LFMForecaster): features -> token_dim -> LFModel -> features, trained with
        train_model, then the one-step forecast metrics on val and test against the naive and
        seasonal-naive forecasts, in original units, with the gate entropies.

hyperparameters.json and training.json take the seed's keys (its values are the defaults).
hyperparameters.json also accepts LFModel's keyword arguments (num_layers, num_heads, gate,
top_k, entropy_mode, load_balance_coef, z_loss_coef, rank, generator); any other key is an
error naming it. Departures from the seed: its num_samples was the number of random tensors it
made up; here the data is a real series and num_samples caps the train windows (the most
recent ones are kept). token_dim is the model width, not the number of series features: the
features are projected to token_dim and back (LFMForecaster), and the model predicts the change
from the last value, so it starts as the naive forecast.

Shapes: x, y [b, t, f] (t = sequence_length, f = series features).
"""

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from seqlab.config import from_dict, load_file, to_dict
from seqlab.data.series import read_series
from seqlab.errors import ConfigError, DataError
from seqlab.models import count_parameters
from seqlab.models.lfm import LFMForecaster, LFMSeriesConfig
from seqlab.ops.entropy import entropy_regularization_loss
from seqlab.tasks.forecast import ForecastTask


@dataclass
class LFMHyperparameters:
    """hyperparameters.json: the seed's six keys, then optional LFModel keyword arguments."""

    token_dim: int = 64
    channel_dim: int = 64
    expert_dim: int = 64
    adapt_dim: int = 32
    num_experts: int = 4
    lambda_entropy: float = 0.01
    num_layers: int = 1
    num_heads: int = 1
    gate: str = "sequence"
    top_k: int | None = None
    entropy_mode: str = "sample"
    load_balance_coef: float = 0.0
    z_loss_coef: float = 0.0
    rank: int = 8
    generator: str = "lowrank"


@dataclass
class LFMTraining:
    """training.json: the seed's five keys."""

    batch_size: int = 16
    sequence_length: int = 10
    num_samples: int = 1000  # at most this many train windows (the most recent)
    num_epochs: int = 10
    learning_rate: float = 0.001

    def __post_init__(self):
        for key in ("batch_size", "sequence_length", "num_samples", "num_epochs"):
            if getattr(self, key) < 1:
                raise ConfigError(f"training.json {key} must be >= 1, got {getattr(self, key)}")
        if not self.learning_rate > 0:
            raise ConfigError(f"training.json learning_rate must be > 0, got {self.learning_rate}")


SEED_FILES = {LFMHyperparameters: "hyperparameters.json", LFMTraining: "training.json"}


def load_seed_config(path: str | Path, cls: type):
    """Read the seed's hyperparameters.json or training.json into `cls`; errors name file and key."""
    path = Path(path)
    if not path.is_file():
        example = json.dumps({k: v for k, v in list(to_dict(cls()).items())[:6]})
        raise ConfigError(
            f"{SEED_FILES[cls]} not found at {str(path)!r}: run lfmodel_train in a folder holding it or "
            f"pass --{SEED_FILES[cls].split('.')[0]} PATH; the seed's file is {example}"
        )
    return from_dict(cls, load_file(path), where=str(path))


def train_model(
    model: torch.nn.Module,
    dataloader,
    num_epochs: int,
    learning_rate: float,
    *,
    grad_clip: float = 1.0,
    progress: bool = True,
    log: Callable[[str], None] | None = tqdm.write,
) -> list[float]:
    """Train on (x, y) batches with MSE + the model's entropy regularization; the mean loss per epoch.

    Works with any model mapping x to a tensor shaped like y; a model without MoE layers trains on
    the MSE alone. `log` gets one line per epoch (None: silent); `progress` shows a tqdm bar.
    """
    device = next(model.parameters()).device
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    model.train()
    losses = []
    bar = tqdm(total=num_epochs * len(dataloader), disable=not progress, dynamic_ncols=True, desc="train")
    for epoch in range(num_epochs):
        total = mse_total = 0.0
        batches = 0
        for x, y in dataloader:
            x, y = x.to(device), y.to(device)
            out = model(x)
            pred = out if isinstance(out, torch.Tensor) else out.logits  # a Tensor or a ModelOutput
            mse = F.mse_loss(pred.float(), y.float())
            loss = entropy_regularization_loss(model, mse)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            total, mse_total, batches = total + loss.item(), mse_total + mse.item(), batches + 1
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.4f}")
        if batches == 0:
            raise DataError("the dataloader gave no batches; give it at least one (x, y) pair")
        losses.append(total / batches)
        if log is not None:
            mean, mean_mse = total / batches, mse_total / batches
            log(f"epoch {epoch + 1}/{num_epochs}: train loss {mean:.4f} (mse {mean_mse:.4f})")
    bar.close()
    return losses


def run_lfmodel_train(
    hyperparameters: LFMHyperparameters,
    training: LFMTraining,
    data: str = "sunspots",
    column: str | None = None,
    *,
    season: int | None = None,
    nan: str = "interpolate",
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    log: Callable[[str], None] | None = tqdm.write,
) -> dict[str, Any]:
    """Train LFModel on a real series the seed's way and measure it against naive forecasts.

    Returns the series description, parameter count, per-epoch losses and the val/test metrics
    of ForecastTask.evaluate (mse, mae, naive_*, seasonal_*, mse_vs_*, gate entropies).
    """
    h, t = hyperparameters, training
    series = read_series(data, column, nan=nan)
    task = ForecastTask(
        series.values,
        t.sequence_length,
        season=series.season if season is None else season,
        name=series.name,
        columns=series.columns,
    )
    if log is not None:
        n_train, n_val, n = task.train_end, task.val_end, len(series.values)
        log(
            f"{series.name} ({', '.join(series.columns)}): {n} points, train/val/test {n_train}/"
            f"{n_val - n_train}/{n - n_val}, windows of {t.sequence_length}, season {task.season or '-'}"
        )
        for note in series.notes:
            log(f"{series.name}: {note}")
    torch.manual_seed(seed)
    # The registered forecaster ("lfm_series"), so lfmodel_train and `seqlab train --model
    # lfm_series` train the same model; the seed's token_dim is its width.
    try:
        config = LFMSeriesConfig(
            dim=h.token_dim,
            channel_dim=h.channel_dim,
            expert_dim=h.expert_dim,
            adapt_dim=h.adapt_dim,
            num_experts=h.num_experts,
            lambda_entropy=h.lambda_entropy,
            num_layers=h.num_layers,
            max_seq_len=t.sequence_length,
            num_heads=h.num_heads,
            gate=h.gate,
            top_k=h.top_k,
            entropy_mode=h.entropy_mode,
            load_balance_coef=h.load_balance_coef,
            z_loss_coef=h.z_loss_coef,
            rank=h.rank,
            generator=h.generator,
            num_features=task.num_features,
        )
        model = LFMForecaster(config).to(device)
    except ValueError as error:  # the config's and the layers' own checks
        raise ConfigError(f"hyperparameters.json: {error}") from None

    windows = task.windows("train")
    keep = slice(-t.num_samples, None)  # the most recent train windows
    x, y = windows["inputs"][keep], windows["targets"][keep]
    loader = DataLoader(
        TensorDataset(x, y),
        batch_size=t.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    if log is not None:
        log(
            f"LFModel {count_parameters(model) / 1e6:.3f}M parameters on {device}, {len(x)} train windows "
            f"(num_samples {t.num_samples}), {t.num_epochs} epochs"
        )
    losses = train_model(model, loader, t.num_epochs, t.learning_rate, progress=progress, log=log)
    return {
        "series": series.name,
        "columns": series.columns,
        "notes": series.notes,
        "points": len(series.values),
        "split_points": [task.train_end, task.val_end, len(series.values)],
        "season": task.season,
        "parameters": count_parameters(model),
        "train_windows": len(x),
        "epoch_losses": losses,
        "val": task.evaluate(model, "val"),
        "test": task.evaluate(model, "test"),
    }


__all__ = [
    "LFMHyperparameters",
    "LFMTraining",
    "load_seed_config",
    "run_lfmodel_train",
    "train_model",
]
