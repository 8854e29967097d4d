"""The LFM seed's own interface (LFM_Entropy, seed 000): its config files and its training loop.

    hyperparameters.json  -> LFMHyperparameters   the seed's six keys, then LFModel's options
    training.json         -> LFMTraining          the seed's five keys
    train_model(model, dataloader, num_epochs, learning_rate) -> mean loss of each epoch
        for each epoch, for (x, y) in dataloader:
            loss = entropy_regularization_loss(model, mse(model(x), y))   MSE + the MoE terms
            Adam step (gradient norm clipped at 1); a NaN or infinite loss stops it
    seed_forecaster(hyperparameters, sequence_length, num_features) -> the "lfm_series" model

`lfmodel_train` (seqlab.cli.lfmodel_train) reads the two files, trains the forecaster with
train_model on a real series and measures it against the naive forecasts. This module is the
seed compatibility layer of the LFM models, so seqlab.train keeps knowing no model.

hyperparameters.json also accepts LFModel's keyword arguments (num_layers, num_heads, gate,
top_k, entropy_mode, load_balance_coef, z_loss_coef, rank, generator); any other key is an
error naming it. Departures from the seed: its num_samples was the number of random tensors it
made up; here the data is a real series and num_samples caps the train windows (the most
recent ones are kept). token_dim is the model width, not the number of series features: the
features are projected to token_dim and back (LFMForecaster), and the model predicts the change
from the last value, so it starts as the naive forecast. The seed trained on through a NaN
loss; train_model stops with a TrainingDiverged error naming the epoch and batch.

Shapes: x, y [b, t, f] (t = sequence_length, f = series features).
"""

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from seqlab.config import from_dict, load_file, to_dict
from seqlab.errors import ConfigError, DataError, TrainingDiverged
from seqlab.models.lfm import LFMForecaster, LFMSeriesConfig
from seqlab.ops.entropy import entropy_regularization_loss


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


def seed_forecaster(h: LFMHyperparameters, sequence_length: int, num_features: int) -> LFMForecaster:
    """The registered forecaster ("lfm_series") built from the seed's hyperparameters, so
    lfmodel_train and `seqlab train --model lfm_series` train the same model; the seed's
    token_dim is its width. Bad values are ConfigErrors that name hyperparameters.json."""
    try:
        config = LFMSeriesConfig(
            dim=h.token_dim,
            channel_dim=h.channel_dim,
            expert_dim=h.expert_dim,
            adapt_dim=h.adapt_dim,
            num_experts=h.num_experts,
            lambda_entropy=h.lambda_entropy,
            num_layers=h.num_layers,
            max_seq_len=sequence_length,
            num_heads=h.num_heads,
            gate=h.gate,
            top_k=h.top_k,
            entropy_mode=h.entropy_mode,
            load_balance_coef=h.load_balance_coef,
            z_loss_coef=h.z_loss_coef,
            rank=h.rank,
            generator=h.generator,
            num_features=num_features,
        )
        return LFMForecaster(config)
    except ValueError as error:  # the config's and the layers' own checks
        raise ConfigError(f"hyperparameters.json: {error}") from None


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
    """Train on (x, y) batches with MSE + the model's auxiliary losses; the mean loss per epoch.

    Works with any model mapping x to a tensor shaped like y (the seed's LFModel, whose MoE terms
    entropy_regularization_loss adds) or to a ModelOutput (whose aux_losses are added); a model
    without MoE layers trains on the MSE alone. `log` gets one line per epoch (None: silent);
    `progress` shows a tqdm bar. A NaN or infinite loss raises TrainingDiverged.
    """
    device = next(model.parameters()).device
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    model.train()
    losses = []
    bar = tqdm(total=num_epochs * len(dataloader), disable=not progress, dynamic_ncols=True, desc="train")
    try:
        for epoch in range(num_epochs):
            total = mse_total = 0.0
            batches = 0
            for x, y in dataloader:
                x, y = x.to(device), y.to(device)
                out = model(x)
                if isinstance(out, torch.Tensor):
                    mse = F.mse_loss(out.float(), y.float())
                    loss = entropy_regularization_loss(model, mse)
                else:
                    mse = F.mse_loss(out.logits.float(), y.float())
                    loss = mse + sum(out.aux_losses.values()) if out.aux_losses else mse
                value, mse_value = torch.stack([loss.detach(), mse.detach()]).tolist()  # one host sync
                if not math.isfinite(value):
                    raise TrainingDiverged(
                        f"the loss became {value} at epoch {epoch + 1}, batch {batches + 1}: lower "
                        f"learning_rate (now {learning_rate}) or check the data for NaN/inf values"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                optimizer.step()
                total, mse_total, batches = total + value, mse_total + mse_value, batches + 1
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{value:.4f}")
            if batches == 0:
                raise DataError("the dataloader gave no batches; give it at least one (x, y) pair")
            losses.append(total / batches)
            if log is not None:
                mean, mean_mse = total / batches, mse_total / batches
                log(f"epoch {epoch + 1}/{num_epochs}: train loss {mean:.4f} (mse {mean_mse:.4f})")
    finally:
        bar.close()
    return losses


__all__ = [
    "LFMHyperparameters",
    "LFMTraining",
    "load_seed_config",
    "seed_forecaster",
    "train_model",
]
