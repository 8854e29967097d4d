"""The trainer: learning on real text, exact resume, NaN stop, checkpoints that are safe to load."""

import json
import pickle

import numpy as np
import pytest
import torch

from seqlab.data import build_tokenizer, encode_corpus, load_corpus, split_ids
from seqlab.errors import CheckpointError, ConfigError, DataError, TrainingDiverged
from seqlab.models import build_model
from seqlab.train import checkpoint as ckpt
from seqlab.train import train
from seqlab.train.callbacks import Callback
from seqlab.train.metrics import losses, read_metrics
from seqlab.train.runs import load_run, resume_config


def test_short_run_on_real_text_falls_well_below_unigram_entropy(tiny_cfg):
    text = load_corpus()
    ids = encode_corpus(text, build_tokenizer("char", text))
    train_ids, _ = split_ids(ids)
    p = np.bincount(train_ids) / len(train_ids)
    unigram = float(-(p[p > 0] * np.log(p[p > 0])).sum())  # nats/char, about 3.3
    cfg = tiny_cfg(
        "train.max_iters=300",
        "train.batch_size=32",
        "train.lr=3e-3",
        "train.eval_interval=300",
        "train.eval_iters=10",
        "model.dim=64",
        "model.num_heads=4",
    )
    result = train(cfg)
    assert result.val_loss < unigram - 0.6, (result.val_loss, unigram)
    assert (result.run_dir / "loss_curve.png").stat().st_size > 1000
    assert "step 300" in (result.run_dir / "samples.txt").read_text()


def test_interrupted_and_resumed_run_reproduces_the_uninterrupted_losses(stop_at, tiny_cfg, tmp_path):
    full = train(tiny_cfg("model.dropout=0.1", run_dir=tmp_path / "full"))
    cfg = tiny_cfg("model.dropout=0.1", run_dir=tmp_path / "cut")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, callbacks=[stop_at(7)])
    assert ckpt.read_meta(ckpt.find_checkpoint(tmp_path / "cut"))["step"] == 7
    resumed = train(resume_config(tmp_path / "cut"), resume=tmp_path / "cut")
    a, b = losses(full.run_dir), losses(resumed.run_dir)
    assert sorted(a) == sorted(b) == list(range(1, 13))
    assert a == b  # bitwise equal floats
    assert resumed.val_loss == full.val_loss


class InterruptDuringStep:
    """A task whose loss raises KeyboardInterrupt inside training step `at` (batch already drawn)."""

    def __init__(self, task, at):
        self.task, self.at, self.calls = task, at, 0

    def __getattr__(self, name):
        return getattr(self.task, name)

    def loss(self, model, batch):
        self.calls += model.training  # evaluation batches run in eval mode and do not count
        if model.training and self.calls == self.at:
            raise KeyboardInterrupt
        return self.task.loss(model, batch)


def test_interrupt_inside_a_step_saves_nothing_and_keeps_the_evaluated_checkpoint(
    tiny_cfg, tmp_path, monkeypatch
):
    from seqlab.train import loop

    real = loop.build_task
    monkeypatch.setattr(loop, "build_task", lambda *a, **k: InterruptDuringStep(real(*a, **k), at=5))
    with pytest.raises(KeyboardInterrupt):
        train(tiny_cfg(run_dir=tmp_path / "mid"))
    meta = ckpt.read_meta(ckpt.find_checkpoint(tmp_path / "mid", "best"))
    assert meta["step"] == 4 and meta["val_loss"] is not None  # the step-4 evaluation, untouched
    monkeypatch.setattr(loop, "build_task", real)
    full = train(tiny_cfg(run_dir=tmp_path / "full"))
    resumed = train(resume_config(tmp_path / "mid"), resume=tmp_path / "mid")
    assert losses(resumed.run_dir) == losses(full.run_dir)


def test_ctrl_c_stops_at_the_next_step_boundary_and_saves(tiny_cfg, tmp_path):
    import os
    import signal

    class SendSigint(Callback):
        name = "send_sigint"

        def on_train_step(self, step, loss, model, optimizer):
            if step == 6:
                os.kill(os.getpid(), signal.SIGINT)  # handled: the step finishes, then the loop stops

    # The handler in place before the run (Python's default, or SIG_IGN when the suite runs in
    # the background under nohup) is the one restored after it.
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_cfg(run_dir=tmp_path / "sig"), callbacks=[SendSigint()])
    assert ckpt.read_meta(ckpt.find_checkpoint(tmp_path / "sig"))["step"] == 6
    assert signal.getsignal(signal.SIGINT) is before  # handler restored


def test_sigterm_stops_at_the_next_step_boundary_and_saves(tiny_cfg, tmp_path):
    import os
    import signal

    class SendSigterm(Callback):
        name = "send_sigterm"

        def on_train_step(self, step, loss, model, optimizer):
            if step == 5:
                os.kill(os.getpid(), signal.SIGTERM)  # what a scheduler sends before it kills

    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_cfg(run_dir=tmp_path / "term"), callbacks=[SendSigterm()])
    assert ckpt.read_meta(ckpt.find_checkpoint(tmp_path / "term"))["step"] == 5
    assert signal.getsignal(signal.SIGTERM) == previous  # handler restored


def test_checkpoint_names_that_do_not_exist_list_the_ones_that_do(tiny_cfg, tmp_path, capsys):
    from seqlab.cli.main import main

    run = train(tiny_cfg(run_dir=tmp_path / "n")).run_dir
    assert ckpt.find_checkpoint(run, "step_0000012").name == "step_0000012"
    for which in ("garbage", "step_99"):
        with pytest.raises(CheckpointError, match=rf"no checkpoint '{which}'.*latest, best, step_0000012"):
            ckpt.find_checkpoint(run, which)
    (run / "checkpoints" / "latest").write_text("step_0000099")
    with pytest.raises(CheckpointError, match="points at 'step_0000099', which does not exist"):
        ckpt.find_checkpoint(run, "latest")
    assert ckpt.find_checkpoint(run, "best").name == "step_0000012"
    # eval needs the weights only: a checkpoint without trainer.pt still evaluates.
    (ckpt.find_checkpoint(run, "best") / "trainer.pt").unlink()
    capsys.readouterr()
    assert main(["eval", str(run), "--eval-iters", "1"]) == 0
    assert main(["eval", str(run), "--checkpoint", "garbage"]) == 2
    assert "no checkpoint 'garbage'" in capsys.readouterr().err


def test_resume_can_extend_a_finished_run(tiny_cfg, tmp_path):
    train(tiny_cfg(run_dir=tmp_path / "r"))
    longer = train(resume_config(tmp_path / "r", ["train.max_iters=16"]), resume=tmp_path / "r")
    assert longer.step == 16


class PoisonAt(Callback):
    """Sets a weight to NaN after a step, as a diverging run would."""

    name = "poison_at"

    def __init__(self, step):
        self.step = step

    def on_train_step(self, step, loss, model, optimizer):
        if step == self.step:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tiny_cfg, tmp_path):
    cfg = tiny_cfg(run_dir=tmp_path / "nan")
    with pytest.raises(TrainingDiverged, match=r"became nan at step 6.*last good checkpoint"):
        train(cfg, callbacks=[PoisonAt(5)])
    good = ckpt.find_checkpoint(tmp_path / "nan")
    assert ckpt.read_meta(good)["step"] == 4
    model, *_ = load_run(tmp_path / "nan", "latest")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_truncated_or_corrupt_checkpoint_is_reported(tiny_cfg, tmp_path):
    train(tiny_cfg(run_dir=tmp_path / "c"))
    weights = ckpt.find_checkpoint(tmp_path / "c") / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_run(tmp_path / "c", "latest")
    weights.write_bytes(data[:-8] + b"\x00" * 8)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_run(tmp_path / "c", "latest")
    (weights.parent / "meta.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="meta.json is corrupt"):
        load_run(tmp_path / "c", "latest")


def test_checkpoint_of_another_model_is_rejected(tiny_cfg, tmp_path):
    train(tiny_cfg(run_dir=tmp_path / "o"))
    other = build_model("gpt", "tiny", vocab_size=78, dim=48)
    with pytest.raises(CheckpointError, match="does not fit this GPT"):
        ckpt.load_weights(other, ckpt.find_checkpoint(tmp_path / "o"))


class _Exploit:
    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.target}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_loading_trainer_state_never_executes_pickled_code(tmp_path):
    bad = tmp_path / "step"
    bad.mkdir()
    pwned = tmp_path / "pwned"
    with open(bad / "trainer.pt", "wb") as f:
        pickle.dump({"x": _Exploit(pwned)}, f)
    with pytest.raises(CheckpointError, match="cannot read trainer state") as error:
        ckpt.load_trainer_state(bad)
    assert not pwned.exists()
    assert "weights_only" not in str(error.value)  # never the advice to load it unsafely


def test_missing_and_too_short_data_are_clear(tiny_cfg, tmp_path):
    with pytest.raises(DataError, match="nope.txt"):
        train(tiny_cfg(f"data.source={tmp_path / 'nope.txt'}"))
    short = tmp_path / "short.txt"
    short.write_text("to be or not to be, " * 3)
    with pytest.raises(DataError, match="context"):
        train(tiny_cfg(f"data.source={short}"))


def test_run_directory_holds_config_metrics_curve_and_checkpoints(tiny_cfg, tmp_path):
    result = train(tiny_cfg(run_dir=tmp_path / "d"))
    saved = json.loads((result.run_dir / "config.json").read_text())
    assert saved["model"]["name"] == "gpt" and saved["model"]["dim"] == 32  # fully resolved
    best = ckpt.find_checkpoint(result.run_dir, "best")
    meta = ckpt.read_meta(best)
    assert meta["val_loss"] == min(
        r["loss"] for r in read_metrics(result.run_dir / "metrics.jsonl") if r["split"] == "val"
    )
    assert {p.name for p in best.iterdir()} == {"model.safetensors", "trainer.pt", "meta.json"}
    assert not [p for p in (result.run_dir / "checkpoints").iterdir() if p.name.startswith(".tmp")]


class _AuxModel(torch.nn.Module):
    """A toy LM that reports an auxiliary loss of exactly 50 and a metric, like an MoE would."""

    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.inner = build_model("gpt", None, **vars(cfg))

    def forward(self, input_ids, targets=None, cache=None):
        out = self.inner(input_ids, targets=targets)
        out.aux_losses["toy_penalty"] = out.logits.sum() * 0 + 50.0
        out.metrics["toy_metric"] = torch.tensor(7.0)
        return out


def test_aux_losses_are_added_and_metrics_logged_without_model_specific_code(tiny_cfg, tmp_path, monkeypatch):
    from seqlab import models
    from seqlab.models.gpt import GPTConfig

    entry = models.ModelEntry(GPTConfig, _AuxModel, models.MODELS["gpt"].presets, "lm", "toy")
    monkeypatch.setitem(models.MODELS, "toy_aux", entry)
    result = train(tiny_cfg("model.name=toy_aux", run_dir=tmp_path / "aux"))
    plain = train(tiny_cfg(run_dir=tmp_path / "plain"))
    records = read_metrics(result.run_dir / "metrics.jsonl")
    train_rec = [r for r in records if r["split"] == "train"][0]
    val_rec = [r for r in records if r["split"] == "val"][0]
    assert train_rec["toy_metric"] == 7.0 and val_rec["toy_metric"] == 7.0
    assert train_rec["toy_penalty"] == 50.0
    # The logged training loss is the total: the same model's primary loss + 50 (the penalty has
    # no gradient, so the first step is identical to the plain run's).
    first_plain = losses(plain.run_dir)[1]
    assert train_rec["loss"] == pytest.approx(first_plain + 50.0, rel=1e-6)


def test_max_time_saves_a_checkpoint_and_the_run_can_resume(tiny_cfg, tmp_path):
    result = train(tiny_cfg("train.max_time=1e-9", run_dir=tmp_path / "t"))
    assert result.stopped == "max_time" and result.step == 1
    assert ckpt.read_meta(ckpt.find_checkpoint(tmp_path / "t"))["step"] == 1
    # max_time is a budget per invocation: the saved one applies again unless overridden.
    again = train(resume_config(tmp_path / "t"), resume=tmp_path / "t")
    assert again.step == 2
    resumed = train(resume_config(tmp_path / "t", ["train.max_time=null"]), resume=tmp_path / "t")
    assert resumed.step == 12


def test_bf16_autocast_trains(tiny_cfg, tmp_path):
    result = train(tiny_cfg("train.dtype=bfloat16", run_dir=tmp_path / "bf16"))
    train_losses = losses(result.run_dir)
    assert all(np.isfinite(v) for v in train_losses.values())
    assert train_losses[12] < train_losses[1]


@pytest.mark.slow
def test_torch_compile_matches_eager(tiny_cfg, tmp_path):
    eager = train(tiny_cfg(run_dir=tmp_path / "eager"))
    compiled = train(tiny_cfg("train.compile=true", run_dir=tmp_path / "compiled"))
    a, b = losses(eager.run_dir), losses(compiled.run_dir)
    for k in a:
        assert abs(a[k] - b[k]) < 1e-3 * abs(a[k])


def test_a_new_run_never_overwrites_an_earlier_one(tiny_cfg, tmp_path, monkeypatch):
    train(tiny_cfg(run_dir=tmp_path / "taken"))
    with pytest.raises(ConfigError, match="already holds a run; continue it with --resume"):
        train(tiny_cfg(run_dir=tmp_path / "taken"))
    # Without an explicit run_dir the default name moves on to the first free one.
    monkeypatch.chdir(tmp_path)
    first = train(tiny_cfg("run_dir=null"))
    second = train(tiny_cfg("run_dir=null"))
    assert (first.run_dir.name, second.run_dir.name) == ("gpt-tiny", "gpt-tiny-2")


def test_metrics_log_survives_a_record_cut_short_by_a_kill(tmp_path):
    from seqlab.train.metrics import MetricsLog, read_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.9}\n{"step": 3, "lo')
    assert [r["step"] for r in read_metrics(path)] == [1, 2]
    MetricsLog(path, keep_until_step=1)  # what a resume from step 1 does
    assert path.read_text() == '{"step": 1, "loss": 2.0}\n'
