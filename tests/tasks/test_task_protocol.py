"""The task interface is all the trainer, eval and generate know: a new task of another shape
(here: regress the sum of a vector, no tokens, no context) trains, resumes, evaluates and
samples through them with no change to seqlab.train."""

import contextlib
import json
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from seqlab.cli.main import main
from seqlab.errors import ConfigError
from seqlab.models import MODELS, ModelEntry
from seqlab.models.output import ModelOutput
from seqlab.tasks import TASKS
from seqlab.tasks.base import Task, reject_unknown_sample_options
from seqlab.train import load_run_config, train
from seqlab.train.metrics import read_metrics
from seqlab.train.runs import load_run, resume_config


class SumTask(Task):
    """y = scale * sum(x) for x ~ N(0, 1)^n; the scale is drawn once and saved as task state."""

    name = "sum"
    primary_loss_key = "mse"

    @dataclass
    class Options:
        size: int = 4

        def __post_init__(self):
            if self.size < 1:
                raise ConfigError(f"task_options.size={self.size} must be >= 1")

    def __init__(self, size: int, scale: float):
        self.size, self.scale = size, scale

    @classmethod
    def from_config(cls, cfg, model_config, state=None):
        options = cls.parse_options(cfg.task_options)
        scale = state["scale"] if state is not None else 0.5 + cfg.train.seed % 3
        return cls(options.size, scale)

    def model_requirements(self):
        return {"num_inputs": self.size}

    def batch(self, split, batch_size, generator):
        x = torch.randn(batch_size, self.size, generator=generator)
        return {"x": x, "y": self.scale * x.sum(-1, keepdim=True)}

    def loss(self, model, batch):
        out = model(batch["x"])
        mse = (out.logits - batch["y"]).square().mean()
        return mse, {"mse": mse.detach()}

    def count_tokens(self, batch):
        return batch["x"].shape[0]

    def eval_summary(self, mean_loss):
        return {"rmse": mean_loss**0.5}

    def decode_metrics(self, model, split, limit):
        # The sign of the prediction, on a fixed set of `limit` examples.
        x = torch.randn(limit, self.size, generator=torch.Generator().manual_seed(7))
        right = (model(x).logits.sign() == x.sum(-1, keepdim=True).sign()).float().mean()
        return {"sign_accuracy": float(right), "decoded": limit}

    def sample(self, model, run_dir=None, **options):
        reject_unknown_sample_options(self.name, options, ())
        x = torch.ones(1, self.size)
        text = f"sum of ones: {model(x).logits.item():.2f} (truth {self.scale * self.size:.2f})"
        if run_dir is not None:
            (run_dir / "sum_sample.json").write_text(json.dumps({"x": x.tolist()}))
        return text

    def state_dict(self):
        return {"scale": self.scale}


@dataclass
class SumConfig:
    num_inputs: int = 1
    hidden: int = 16


class SumModel(nn.Module):
    def __init__(self, cfg: SumConfig):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(cfg.num_inputs, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, 1))

    def forward(self, x):
        return ModelOutput(logits=self.net(x))


@pytest.fixture
def sum_task(monkeypatch):
    monkeypatch.setitem(TASKS, "sum", SumTask)
    monkeypatch.setitem(MODELS, "sum_mlp", ModelEntry(SumConfig, SumModel, {"tiny": {}}, "sum", "toy"))


def test_a_new_task_trains_resumes_evaluates_and_samples_without_trainer_changes(sum_task, tmp_path, capsys):
    run = tmp_path / "sum"
    overrides = [
        "model.name=sum_mlp",
        "model.preset=tiny",
        "task_options.size=3",
        "train.batch_size=16",
        "train.max_iters=40",
        "train.eval_interval=20",
        "train.eval_iters=4",
        "train.log_interval=10",
        "train.lr=1e-2",
        "train.warmup_iters=0",
        "train.progress=false",
        f"run_dir={run}",
    ]
    first = train(load_run_config(overrides=[*overrides, "train.max_iters=20"]))
    assert first.step == 20
    assert json.loads((run / "task.json").read_text()) == {"task": "sum", "state": {"scale": 0.5 + 1337 % 3}}
    assert json.loads((run / "config.json").read_text())["model"]["num_inputs"] == 3  # the requirement
    result = train(resume_config(run, ["train.max_iters=40"]), resume=run)
    val = [r for r in read_metrics(run / "metrics.jsonl") if r["split"] == "val"]
    assert result.step == 40 and val[-1]["loss"] < val[0]["loss"] and "rmse" in val[-1]
    # decode_metrics: on train.eval_decode (default 200) examples, at every evaluation.
    assert val[-1]["decoded"] == 200 and 0 <= val[-1]["sign_accuracy"] <= 1
    train_rows = [r for r in read_metrics(run / "metrics.jsonl") if r["split"] == "train"]
    assert train_rows[-1]["tokens_per_s"] > 0  # counted by the task: 16 per step
    assert (run / "sum_sample.json").is_file() and "sum of ones" in (run / "samples.txt").read_text()
    model, task, _, _ = load_run(run, "latest")
    assert task.scale == 0.5 + 1337 % 3 and isinstance(model, SumModel)
    capsys.readouterr()
    assert main(["eval", str(run), "--checkpoint", "latest"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["loss"] == pytest.approx(val[-1]["loss"], rel=1e-5)
    assert evaluated["sign_accuracy"] == pytest.approx(val[-1]["sign_accuracy"])
    assert main(["generate", str(run), "--checkpoint", "latest"]) == 0
    assert "sum of ones" in capsys.readouterr().out


def test_eval_decode_zero_skips_the_decoding_metrics(sum_task, tmp_path):
    from seqlab.train.loop import evaluate

    cfg = load_run_config(
        overrides=[
            "model.name=sum_mlp",
            "model.preset=tiny",
            "train.eval_iters=2",
            "train.eval_decode=0",
            f"run_dir={tmp_path}",
        ]
    )
    task = SumTask(3, 1.0)
    result = evaluate(
        SumModel(SumConfig(num_inputs=3)), task, cfg, torch.device("cpu"), contextlib.nullcontext
    )
    assert "loss" in result and "sign_accuracy" not in result


def test_every_method_of_the_protocol_is_required():
    class Incomplete(Task):
        name = "incomplete"

        def batch(self, split, batch_size, generator):
            return {}

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()
    for task in TASKS.values():
        assert not task.__abstractmethods__  # the registered ones implement everything
