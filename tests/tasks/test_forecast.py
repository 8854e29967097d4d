"""ForecastTask: windows and targets, train-only normalization, naive baselines by hand, the trainer.

The toy series is s_j = j^2 for j = 0..19 with context 4: train = points 0..15, val = 16..17,
test = 18..19, so every expected number below can be checked with pencil and paper.
"""

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from seqlab.errors import ConfigError, DataError
from seqlab.models import MODELS, ModelEntry, build_model
from seqlab.models.output import ModelOutput
from seqlab.tasks.forecast import ForecastTask
from seqlab.train import load_run_config, train
from seqlab.train.runs import build_task, load_run, resume_config

SQUARES = np.arange(20.0) ** 2


class Scale(nn.Module):
    """pred = w * inputs: w = 1 is the naive forecast, w = 0 predicts the train mean."""

    def __init__(self, w: float):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w))

    def forward(self, x):
        return ModelOutput(logits=self.w * x)


def toy_task(series=SQUARES, season=2):
    return ForecastTask(series, context=4, season=season, name="squares")


def original(task, z):
    return z * task.std + task.mean


def assert_values(task, z, expected):
    """Standardized float32 values z are the original values `expected`."""
    np.testing.assert_allclose(original(task, z), expected, rtol=1e-5, atol=1e-4)


def test_split_points_and_window_alignment():
    task = toy_task()
    assert (task.train_end, task.val_end) == (16, 18)
    assert task.starts == {"train": (0, 11), "val": (12, 13), "test": (14, 15)}
    train = task.windows("train")
    assert train["inputs"].shape == (12, 4, 1) and train["weight"].eq(1).all()
    for i in range(12):
        assert_values(task, train["inputs"][i, :, 0], SQUARES[i : i + 4])
        assert_values(task, train["targets"][i, :, 0], SQUARES[i + 1 : i + 5])
    assert original(task, train["targets"][-1, -1, 0]) == pytest.approx(SQUARES[15])  # never a val point
    for split, last_targets in (("val", [16, 17]), ("test", [18, 19])):
        batch = task.windows(split)
        assert_values(task, batch["targets"][:, -1, 0], SQUARES[last_targets])
        assert_values(task, batch["inputs"][:, -1, 0], SQUARES[[j - 1 for j in last_targets]])
        assert_values(task, batch["seasonal"][:, 0], SQUARES[[j - 2 for j in last_targets]])
        assert batch["weight"].tolist() == [[0, 0, 0, 1]] * 2  # only the one-step forecast counts
    gen = torch.Generator().manual_seed(0)
    starts = task.batch("val", 64, gen)["targets"][:, -1, 0]
    assert set(original(task, starts).round().tolist()) == {256.0, 289.0}


def test_normalization_uses_the_train_part_only():
    task = toy_task()
    assert task.mean.item() == pytest.approx(SQUARES[:16].mean())
    assert task.std.item() == pytest.approx(SQUARES[:16].std(), rel=1e-6)
    changed = SQUARES.copy()
    changed[16:] *= -100  # only val and test change
    other = toy_task(changed)
    torch.testing.assert_close(other.mean, task.mean)
    torch.testing.assert_close(other.std, task.std)
    torch.testing.assert_close(other.windows("train")["inputs"], task.windows("train")["inputs"])


def test_naive_and_seasonal_metrics_by_hand():
    task = toy_task()
    naive = task.evaluate(Scale(1.0), "test")
    # test targets 18^2 = 324 and 19^2 = 361; last values 289, 324; values two steps back 256, 289
    assert naive["naive_mse"] == pytest.approx((35**2 + 37**2) / 2, rel=1e-5)  # 1297
    assert naive["naive_mae"] == pytest.approx(36, rel=1e-5)
    assert naive["seasonal_mse"] == pytest.approx((68**2 + 72**2) / 2, rel=1e-5)  # 4904
    assert naive["seasonal_mae"] == pytest.approx(70, rel=1e-5)
    assert naive["mse"] == pytest.approx(1297, rel=1e-5) and naive["mse_vs_naive"] == pytest.approx(
        1, rel=1e-5
    )
    assert naive["mse_vs_seasonal"] == pytest.approx(1297 / 4904, rel=1e-5)
    assert naive["windows"] == 2
    mean = task.evaluate(Scale(0.0), "test")  # predicts the train mean, 1240 / 16 = 77.5
    assert mean["mse"] == pytest.approx((246.5**2 + 283.5**2) / 2, rel=1e-5)
    assert mean["mae"] == pytest.approx(265, rel=1e-5)
    assert mean["mse_loss"] == pytest.approx(mean["mse"] / task.std.item() ** 2, rel=1e-5)


def test_loss_metrics_per_batch_and_eval_summary():
    task = toy_task()
    loss, metrics = task.loss(Scale(1.0), task.windows("test"))
    assert metrics["mse"].item() == pytest.approx(1297, rel=1e-5)
    assert metrics["naive_mse"].item() == pytest.approx(1297, rel=1e-5)
    assert metrics["seasonal_mse"].item() == pytest.approx(4904, rel=1e-5)
    assert loss.item() == pytest.approx(1297 / task.std.item() ** 2, rel=1e-5)
    # train: every position counts, teacher forced: mean over windows and positions of (s_{k+1} - s_k)^2
    train_loss, _ = task.loss(Scale(1.0), task.windows("train"))
    diffs = [(SQUARES[k + 1] - SQUARES[k]) ** 2 for i in range(12) for k in range(i, i + 4)]
    assert train_loss.item() == pytest.approx(np.mean(diffs) / task.std.item() ** 2, rel=1e-5)
    # val naive: targets 256, 289 from 225, 256
    val_naive = (31**2 + 33**2) / 2 / task.std.item() ** 2
    assert task.eval_summary(2 * val_naive)["mse_vs_naive"] == pytest.approx(2, rel=1e-5)


def test_aux_losses_of_the_registered_forecaster_are_added():
    task = toy_task()
    torch.manual_seed(0)
    model = build_model("lfm_series", "tiny", num_features=1, max_seq_len=4, lambda_entropy=0.05)
    batch = task.windows("train")
    total, metrics = task.loss(model, batch)
    aux = model(batch["inputs"]).aux_losses
    assert aux, "the LFM forecaster reports its MoE entropy term"
    torch.testing.assert_close(total.detach(), metrics["mse_loss"] + sum(v.detach() for v in aux.values()))
    assert set(aux) <= set(metrics)
    total.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)

    class WithAux(Scale):
        def forward(self, x):
            out = super().forward(x)
            out.aux_losses["extra"] = torch.tensor(0.5)
            return out

    total, metrics = task.loss(WithAux(1.0), task.windows("test"))
    assert total.item() == pytest.approx(metrics["mse_loss"].item() + 0.5)
    assert "iterated forecast of the first 2 test points" in task.sample(model)


def test_errors():
    with pytest.raises(DataError, match="too short.*shorter context"):
        ForecastTask(np.arange(10.0), context=8)
    with pytest.raises(DataError, match="NaN"):
        ForecastTask(np.array([1.0, np.nan] * 20), context=4)
    with pytest.raises(DataError, match=r"forecasting needs \[batch, time, 1 series features\]"):
        toy_task().loss(lambda x: ModelOutput(x[..., :0]), toy_task().windows("test"))
    with pytest.raises(DataError, match="must return seqlab.models.output.ModelOutput"):
        toy_task().loss(lambda x: x, toy_task().windows("test"))
    with pytest.raises(ConfigError, match="season"):
        ForecastTask(SQUARES, context=4, season=-1)
    with pytest.raises(ConfigError, match="samples take no prompt, temperature; they take: max_new_tokens"):
        toy_task().sample(Scale(1.0), prompt="x", temperature=0.5)
    with pytest.raises(ConfigError, match="max_new_tokens"):
        toy_task().sample(Scale(1.0), max_new_tokens=-5)


def test_protocol_pieces_and_saved_statistics():
    task = toy_task()
    assert task.model_requirements() == {"num_features": 1}
    assert task.count_tokens(task.batch("train", 3, torch.Generator().manual_seed(0))) == 3 * 4
    state = task.state_dict()
    # A reopened run standardizes with its own train statistics, even on another series.
    other = ForecastTask(SQUARES * 3, context=4, stats=(state["mean"], state["std"]))
    torch.testing.assert_close(other.mean, task.mean)
    torch.testing.assert_close(other.std, task.std)
    with pytest.raises(DataError, match="trained on 1"):
        ForecastTask(np.stack([SQUARES, SQUARES], 1), context=4, stats=(state["mean"], state["std"]))


@dataclass
class ToySeriesConfig:
    num_features: int = 1
    dim: int = 8
    max_seq_len: int = 8


class ToySeriesModel(nn.Module):
    """What a registered forecasting model looks like: config in, ModelOutput out (here a
    per-position MLP on the change from the last value, with a toy aux loss and metric)."""

    def __init__(self, cfg: ToySeriesConfig):
        super().__init__()
        self.config = cfg
        self.net = nn.Sequential(
            nn.Linear(cfg.num_features, cfg.dim), nn.GELU(), nn.Linear(cfg.dim, cfg.num_features)
        )

    def forward(self, x, targets=None):
        pred = x + self.net(x)
        aux = {"toy_penalty": 1e-3 * self.net[0].weight.square().mean()}
        return ModelOutput(logits=pred, aux_losses=aux, metrics={"toy_metric": torch.tensor(3.0)})


@pytest.fixture
def series_csv(tmp_path):
    t = np.arange(240)
    rows = [f"{k},{np.sin(k / 5):.5f},{np.cos(k / 7) + 0.01 * k:.5f}" for k in t]
    path = tmp_path / "waves.csv"
    path.write_text("day,a,b\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture
def toy_series_model(monkeypatch):
    entry = ModelEntry(ToySeriesConfig, ToySeriesModel, {"tiny": {}}, "forecast")
    monkeypatch.setitem(MODELS, "toy_series", entry)


def test_trainer_runs_and_resumes_a_forecast_task(tmp_path, series_csv, toy_series_model):
    run = tmp_path / "run"
    common = [
        "task=forecast",
        "model.name=toy_series",
        "model.preset=tiny",
        f"data.source={series_csv}",
        "task_options.column=a,b",
        "task_options.season=35",
        "train.batch_size=8",
        "train.eval_interval=3",
        "train.eval_iters=2",
        "train.warmup_iters=1",
        "train.progress=false",
        "train.sample_tokens=3",
        f"run_dir={run}",
    ]
    result = train(load_run_config(overrides=[*common, "train.max_iters=6"]))
    assert result.step == 6 and np.isfinite(result.val_loss)
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["num_features"] == 2  # from the task's model_requirements()
    assert json.loads((run / "task.json").read_text())["task"] == "forecast"
    val_rows = [
        r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == "val"
    ]
    assert {"mse_vs_naive", "mse_vs_seasonal", "naive_mse", "seasonal_mae", "toy_metric"} <= val_rows[
        -1
    ].keys()
    assert "iterated forecast of the first 3 test points" in (run / "samples.txt").read_text()
    resumed = train(resume_config(run, ["train.max_iters=8"]), resume=run)
    assert resumed.step == 8
    model, task, _, _ = load_run(run, "latest")
    assert task.columns == ["a", "b"] and task.evaluate(model, "test")["windows"] > 0

    with pytest.raises(ConfigError, match="does not match the data"):
        cfg = load_run_config(overrides=[*common, "model.num_features=3", f"run_dir={run}-other"])
        train(cfg)


def test_task_options_and_model_task_are_checked(series_csv, toy_series_model):
    model = ["model.name=toy_series", "model.preset=tiny"]
    cfg = load_run_config(
        overrides=[*model, "task=forecast", f"data.source={series_csv}", "task_options.column=1"]
    )
    task = build_task(cfg)
    assert task.columns == ["a"] and task.num_features == 1 and task.season is None
    assert task.context == 8  # the model's max_seq_len
    cfg.task_options["context"] = 5
    assert build_task(cfg).context == 5
    cfg.task_options["context"] = 9
    with pytest.raises(ConfigError, match="context=9 is longer than the model's max_seq_len=8"):
        build_task(cfg)
    with pytest.raises(ConfigError, match="task_options.season=-2"):
        load_run_config(overrides=[*model, "task_options.season=-2"])
    with pytest.raises(ConfigError, match="task_options.nan='fill'"):
        load_run_config(overrides=[*model, "task_options.nan=fill"])
    with pytest.raises(ConfigError, match="unknown key 'colum' in task_options of task 'forecast'.*'column'"):
        load_run_config(overrides=[*model, "task=forecast", "task_options.colum=a"])
    with pytest.raises(ConfigError, match="unknown key 'column' in task_options of task 'lm'"):
        load_run_config(overrides=["task_options.column=a"])
    with pytest.raises(
        ConfigError, match="model 'gpt' is made for task 'lm' or 'grid' or 'grid2grid', not 'forecast'"
    ):
        load_run_config(overrides=["task=forecast"])
    with pytest.raises(ConfigError, match="model 'toy_series' is made for task 'forecast', not 'lm'"):
        load_run_config(overrides=[*model, "task=lm"])
    assert load_run_config(overrides=model).task == "forecast"  # the model's own task by default
