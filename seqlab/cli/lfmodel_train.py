"""The seed's `lfmodel_train` command (LFM_Entropy, seed 000): train LFModel on a real time series.

    lfmodel_train                                    hyperparameters.json + training.json from the
                                                     working directory, the sunspots series
    lfmodel_train --data co2                         weekly CO2 (a built-in series)
    lfmodel_train --data prices.csv --column close   any CSV column(s)
    lfmodel_train --hyperparameters a.json --training b.json

Argument parsing and printing only; the work is seqlab.train.simple.run_lfmodel_train. Prints
one train-loss line per epoch, then the one-step-ahead forecast errors on the val and test parts
in the series' original units for LFModel, the naive (last value) and the seasonal-naive
forecasts, and the MoE gate entropies. Errors print one line and exit with status 2.
"""

import argparse
import sys

from seqlab.data.series import BUILTIN_SERIES, NAN_POLICIES
from seqlab.errors import SeqlabError


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
        from seqlab.train.simple import (
            LFMHyperparameters,
            LFMTraining,
            load_seed_config,
            run_lfmodel_train,
        )

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
