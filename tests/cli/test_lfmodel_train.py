"""The seed's interface: `lfmodel_train` with hyperparameters.json / training.json, and train_model
(seqlab.models.lfm_compat), which stops on a NaN loss."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from seqlab.cli.lfmodel_train import main
from seqlab.errors import TrainingDiverged
from seqlab.layers.series import SeriesModel
from seqlab.models.lfm import LFModel
from seqlab.models.lfm_compat import train_model

# The seed's two files with its keys, at CPU-test sizes.
HYPERPARAMETERS = {
    "token_dim": 16,
    "channel_dim": 16,
    "expert_dim": 16,
    "adapt_dim": 8,
    "num_experts": 4,
    "lambda_entropy": 0.01,
}
TRAINING = {
    "batch_size": 16,
    "sequence_length": 10,
    "num_samples": 64,
    "num_epochs": 2,
    "learning_rate": 0.001,
}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    (tmp_path / "hyperparameters.json").write_text(json.dumps(HYPERPARAMETERS))
    (tmp_path / "training.json").write_text(json.dumps(TRAINING))
    k = np.arange(300)
    (tmp_path / "series.csv").write_text(
        "month,visitors\n" + "\n".join(f"{i},{100 + 10 * np.sin(2 * np.pi * i / 12):.3f}" for i in k) + "\n"
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_end_to_end_on_a_csv(workdir, capsys):
    assert main(["--data", "series.csv", "--column", "visitors", "--season", "12", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "series.csv (visitors): 300 points, train/val/test 240/30/30" in out
    assert "64 train windows (num_samples 64)" in out
    assert "epoch 1/2: train loss" in out and "epoch 2/2: train loss" in out
    for row in ("LFModel", "naive (last value)", "seasonal naive (12)", "test MSE LFModel / naive"):
        assert row in out
    assert "moe0 gate on test: H_sample" in out and "expert loads" in out


def test_end_to_end_on_sunspots_with_given_paths(workdir, capsys, monkeypatch, tmp_path_factory):
    pytest.importorskip("statsmodels")
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    monkeypatch.chdir(elsewhere)
    args = [
        "--hyperparameters",
        str(workdir / "hyperparameters.json"),
        "--training",
        str(workdir / "training.json"),
    ]
    assert main([*args, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "sunspots (SUNACTIVITY): 309 points" in out and "seasonal naive (11)" in out


def test_unknown_key_is_one_line_naming_it(workdir, capsys):
    (workdir / "hyperparameters.json").write_text(json.dumps({**HYPERPARAMETERS, "num_expert": 2}))
    assert main(["--data", "series.csv"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "unknown key 'num_expert' in hyperparameters.json. Did you mean 'num_experts'?" in err


def test_wrong_type_and_bad_values(workdir, capsys):
    (workdir / "training.json").write_text(json.dumps({**TRAINING, "batch_size": "big"}))
    assert main(["--data", "series.csv"]) == 2
    assert "training.json.batch_size: expected int, got 'big'" in capsys.readouterr().err
    (workdir / "training.json").write_text(json.dumps({**TRAINING, "num_epochs": 0}))
    assert main(["--data", "series.csv"]) == 2
    assert "num_epochs must be >= 1" in capsys.readouterr().err
    (workdir / "training.json").write_text(json.dumps(TRAINING))
    (workdir / "hyperparameters.json").write_text(json.dumps({**HYPERPARAMETERS, "gate": "coin"}))
    assert main(["--data", "series.csv"]) == 2
    assert "hyperparameters.json: lfm gate 'coin' is not one of" in capsys.readouterr().err


def test_missing_files_and_data(workdir, capsys):
    (workdir / "training.json").unlink()
    assert main(["--data", "series.csv"]) == 2
    err = capsys.readouterr().err
    assert "training.json not found at 'training.json'" in err and "--training PATH" in err
    assert '"sequence_length": 10' in err  # the seed's file, to copy
    (workdir / "training.json").write_text(json.dumps(TRAINING))
    assert main(["--data", "missing.csv"]) == 2
    assert "'missing.csv' is neither a built-in dataset" in capsys.readouterr().err
    assert main(["--data", "series.csv", "--column", "sales"]) == 2
    assert "no column 'sales'; its columns are: month, visitors" in capsys.readouterr().err


def test_console_script_is_declared():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["lfmodel_train"] == "seqlab.cli.lfmodel_train:main"


def test_train_model_reduces_the_loss_on_a_toy_dataloader():
    torch.manual_seed(0)
    t = torch.linspace(0, 12, 200)
    series = torch.stack([torch.sin(t), torch.cos(t)], -1)  # [200, 2]
    windows = series.unfold(0, 9, 1).transpose(1, 2)  # [192, 9, 2]
    loader = DataLoader(TensorDataset(windows[:, :-1], windows[:, 1:]), batch_size=32, shuffle=True)
    # LFModel's width is 16; the 2 features are projected in and out (a width-2 LayerNorm would
    # keep little more than the signs).
    model = SeriesModel(LFModel(16, 16, 16, 8, 2, lambda_entropy=0.01, max_seq_len=8), 2, 16, residual=False)
    losses = train_model(model, loader, 4, 1e-2, progress=False, log=None)
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0]


def test_train_model_stops_on_a_nan_loss():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(()))

        def forward(self, x):
            return x * self.w * float("nan")

    x = torch.randn(8, 4, 1)
    loader = DataLoader(TensorDataset(x, x), batch_size=4)
    with pytest.raises(TrainingDiverged, match="loss became nan at epoch 1, batch 1: lower learning_rate"):
        train_model(Broken(), loader, 2, 1e-3, progress=False, log=None)


def test_nan_loss_is_one_line_and_exit_status_2(workdir, capsys):
    # A learning rate this large sends the weights to inf within a few steps (the seed trained on).
    (workdir / "training.json").write_text(json.dumps({**TRAINING, "learning_rate": 1e30}))
    assert main(["--data", "series.csv", "--column", "visitors", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("lfmodel_train: error: the loss became") and "lower learning_rate" in err


def test_binary_or_undecodable_csv_and_a_missing_device_are_one_line(tmp_path, capsys):
    from seqlab.cli.lfmodel_train import main as lfmodel_main

    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"a,b\n1,\x00\x01\n")
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"a,b\n1,\xe9\n")
    examples = Path(__file__).resolve().parents[2] / "examples" / "lfm"
    base = [
        "--hyperparameters",
        str(examples / "hyperparameters.json"),
        "--training",
        str(examples / "training.json"),
    ]
    for extra, message in (
        (["--data", str(binary)], "is binary"),
        (["--data", str(latin)], "is not UTF-8 text"),
        (["--device", "cuda:7"], "no such device"),
    ):
        assert lfmodel_main(base + extra + ["--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err
