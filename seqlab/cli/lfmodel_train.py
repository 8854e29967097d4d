"""The seed's `lfmodel_train` command (LFM_Entropy, seed 000): train LFModel on a real time series.

    lfmodel_train                                    hyperparameters.json + training.json from the
                                                     working directory, the sunspots series
    lfmodel_train --data co2                         weekly CO2 (a built-in series)
    lfmodel_train --data prices.csv --column close   any CSV column(s)
    lfmodel_train --hyperparameters a.json --training b.json

run_lfmodel_train is the seed's whole path, wired from the package's parts: the series split by
time (seqlab.tasks.forecast.ForecastTask: 80/10/10, standardized with train statistics), at most
num_samples train windows of sequence_length points, the lfm_series model (LFMForecaster:
features -> token_dim -> LFModel -> features) trained with the seed's loop
(seqlab.models.lfm_compat.train_model), then the one-step forecast metrics on val and test
against the naive and seasonal-naive forecasts, in original units, with the gate entropies.
main() parses the arguments and prints: one train-loss line per epoch, then those errors for
LFModel, the naive (last value) and the seasonal-naive forecasts, and the MoE gate entropies.
Errors (a bad file or key, missing data, a loss that became NaN) print one line and exit with
status 2.
"""

import argparse
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from seqlab.data.series import BUILTIN_SERIES, NAN_POLICIES, read_series
from seqlab.errors import SeqlabError
from seqlab.models import count_parameters
from seqlab.models.lfm_compat import (
    LFMHyperparameters,
    LFMTraining,
    load_seed_config,
    seed_forecaster,
    train_model,
)
from seqlab.tasks.forecast import ForecastTask
from seqlab.train.distributed import resolve_device


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
    device = resolve_device(device, key="--device")
    model = seed_forecaster(h, t.sequence_length, task.num_features).to(device)
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lfmodel_train", description=__doc__.splitlines()[0])
    p.add_argument(
        "--hyperparameters", default="hyperparameters.json", metavar="PATH", help="default: %(default)s"
    )
    p.add_argument("--training", default="training.json", metavar="PATH", help="default: %(default)s")
    p.add_argument(
        "--data",
        default="sunspots",
        help=f"a built-in series ({', '.join(BUILTIN_SERIES)}) or a CSV file (default: sunspots)",
    )
    p.add_argument("--column", help="column name(s) or 0-based index(es), comma-separated")
    p.add_argument("--season", type=int, help="seasonal-naive period (default: the dataset's; 0 = none)")
    p.add_argument(
        "--nan", choices=NAN_POLICIES, default="interpolate", help="missing values (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def format_summary(result: dict) -> str:
    val, test = result["val"], result["test"]
    rows = [("LFModel", "")]
    rows.append(("naive (last value)", "naive_"))
    if "seasonal_mse" in test:
        rows.append((f"seasonal naive ({result['season']})", "seasonal_"))
    n_train, n_val, n = result["split_points"]
    lines = [
        f"one-step forecasts of {result['series']} ({', '.join(result['columns'])}), original units; "
        f"val {n_val - n_train} points, test {n - n_val} points:",
        f"  {'forecast':<22} {'val MSE':>12} {'test MSE':>12} {'test MAE':>12}",
    ]
    for label, prefix in rows:
        mse, test_mse, test_mae = val[prefix + "mse"], test[prefix + "mse"], test[prefix + "mae"]
        lines.append(f"  {label:<22} {mse:>12.5g} {test_mse:>12.5g} {test_mae:>12.5g}")
    ratio = f"test MSE LFModel / naive {test['mse_vs_naive']:.3f}"
    if "mse_vs_seasonal" in test:
        ratio += f", / seasonal naive {test['mse_vs_seasonal']:.3f}"
    lines.append(ratio)
    gates = sorted({k.split("/")[0] for k in test if k.startswith("moe") and "/h_" in k})
    for gate in gates:
        loads = [test[k] for k in sorted(test) if k.startswith(f"{gate}/load")]
        lines.append(
            f"{gate} gate on test: H_sample {test[f'{gate}/h_sample']:.3f} bits, "
            f"H_usage {test[f'{gate}/h_usage']:.3f} bits, expert loads " + " ".join(f"{v:.2f}" for v in loads)
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        hyperparameters = load_seed_config(args.hyperparameters, LFMHyperparameters)
        training = load_seed_config(args.training, LFMTraining)
        result = run_lfmodel_train(
            hyperparameters,
            training,
            args.data,
            args.column,
            season=args.season,
            nan=args.nan,
            seed=args.seed,
            device=args.device,
            progress=not args.no_progress,
        )
    except SeqlabError as e:
        print(f"lfmodel_train: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    print(format_summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
