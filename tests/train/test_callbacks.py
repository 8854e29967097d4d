"""Callbacks by name: configured, from the model's registry entry, reported, and resumed exactly."""

import json

import pytest
import torch

from seqlab.cli.main import main
from seqlab.errors import ConfigError
from seqlab.layers.rotary import RotaryEmbedding
from seqlab.models import MODELS, ModelEntry
from seqlab.train import checkpoint as ckpt
from seqlab.train import train
from seqlab.train.callbacks import CALLBACKS, Callback, LossEWMA, build_callbacks
from seqlab.train.metrics import losses, read_metrics
from seqlab.train.runs import load_run, resume_config


def _records(run_dir, split):
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if r["split"] == split]


def test_loss_ewma_by_hand():
    cb = LossEWMA(alpha=0.5)
    assert cb.on_eval(0, {"loss": 4.0}, None) is None  # nothing seen yet
    for step, loss in enumerate([4.0, 2.0, 3.0], 1):
        cb.on_train_step(step, loss, None, None)
    assert cb.value == pytest.approx(0.5 * (0.5 * 4.0 + 0.5 * 2.0) + 0.5 * 3.0)  # 3.0
    assert cb.best == pytest.approx(3.0) and cb.steps == 3
    other = LossEWMA(alpha=0.5)
    other.load_state_dict(cb.state_dict())
    assert other.on_eval(3, {}, None) == {"loss_ewma": cb.value, "best_loss_ewma": cb.best}


def test_config_names_callbacks_as_a_mapping_or_a_list(tiny_cfg):
    assert tiny_cfg("train.callbacks=[loss_ewma]").train.callbacks == {"loss_ewma": {}}
    cfg = tiny_cfg("train.callbacks.loss_ewma.alpha=0.25")
    assert cfg.train.callbacks == {"loss_ewma": {"alpha": 0.25}}
    (built,) = build_callbacks(cfg.train.callbacks)
    assert built.name == "loss_ewma" and built.alpha == 0.25
    with pytest.raises(ConfigError, match="unknown callback 'loss_emwa'.*loss_ewma"):
        tiny_cfg("train.callbacks=[loss_emwa]")
    with pytest.raises(ConfigError, match="train.callbacks.loss_ewma: .*unexpected keyword argument 'beta'"):
        tiny_cfg("train.callbacks.loss_ewma.beta=1")
    with pytest.raises(ConfigError, match=r"train.callbacks.loss_ewma.alpha=2 must lie in \(0, 1\]"):
        tiny_cfg("train.callbacks.loss_ewma.alpha=2")


def test_resumed_run_continues_the_callbacks_bit_for_bit(stop_at, tiny_cfg, tmp_path):
    ewma = "train.callbacks.loss_ewma.alpha=0.3"
    full = train(tiny_cfg("model.dropout=0.1", ewma, run_dir=tmp_path / "full"))
    with pytest.raises(KeyboardInterrupt):
        train(tiny_cfg("model.dropout=0.1", ewma, run_dir=tmp_path / "cut"), callbacks=[stop_at(6)])
    saved = ckpt.load_trainer_state(ckpt.find_checkpoint(tmp_path / "cut"))
    assert saved["step"] == 6 and set(saved["callbacks"]) == {"loss_ewma", "stop_at"}  # by name
    assert saved["callbacks"]["loss_ewma"]["steps"] == 6
    resumed = train(resume_config(tmp_path / "cut"), resume=tmp_path / "cut")
    assert losses(resumed.run_dir) == losses(full.run_dir)  # bitwise equal floats
    final = [
        ckpt.load_trainer_state(ckpt.find_checkpoint(r, "latest"))["callbacks"]
        for r in (full.run_dir, resumed.run_dir)
    ]
    assert final[0]["loss_ewma"] == final[1]["loss_ewma"]
    # What the callback reports goes to metrics.jsonl, once per evaluation after training began.
    reports = [(r["step"], r["loss_ewma"]) for r in _records(full.run_dir, "callback")]
    assert [s for s, _ in reports] == [4, 8, 12]
    assert reports == [(r["step"], r["loss_ewma"]) for r in _records(resumed.run_dir, "callback")]
    assert reports[-1][1] == final[0]["loss_ewma"]["value"]


class CountSteps(Callback):
    """A model's own callback (as the autonomic controller will be for its model)."""

    def __init__(self, every: int = 4):
        self.every, self.count = every, 0

    def on_train_step(self, step, loss, model, optimizer):
        self.count += 1
        return {"count": self.count} if step % self.every == 0 else None

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]


def test_the_models_registry_entry_names_callbacks_that_always_run(tiny_cfg, tmp_path, monkeypatch):
    monkeypatch.setitem(CALLBACKS, "count_steps", CountSteps)
    gpt = MODELS["gpt"]
    entry = ModelEntry(gpt.config, gpt.model, gpt.presets, "lm", "gpt + a callback", ("count_steps",))
    monkeypatch.setitem(MODELS, "gpt_counted", entry)
    # Options for the model's own callback come from the config, under its name.
    result = train(tiny_cfg("model.name=gpt_counted", "train.callbacks.count_steps.every=6"))
    assert [(r["step"], r["count"]) for r in _records(result.run_dir, "callback")] == [(6, 6), (12, 12)]


class MoveRopeBase(Callback):
    """Changes the RoPE base and the attention window mid-run, as the autonomic controller will."""

    def on_train_step(self, step, loss, model, optimizer):
        if step == 5:
            model.set_base(2500.0)
            model.set_window(8)
            return {"rope_base": 2500.0, "window": 8}
        return None


def test_values_a_callback_changes_in_the_model_survive_resume_eval_and_generate(
    stop_at, tiny_cfg, tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(CALLBACKS, "move_rope_base", MoveRopeBase)
    run = tmp_path / "base"
    with pytest.raises(KeyboardInterrupt):
        train(tiny_cfg("train.callbacks=[move_rope_base]", run_dir=run), callbacks=[stop_at(7)])
    model, *_ = load_run(run, "latest")
    assert model.rotary.base == 2500.0
    assert [block.mixer.window for block in model.blocks] == [8, 8]
    resumed = train(resume_config(run), resume=run)
    assert resumed.step == 12
    model, task, cfg, meta = load_run(run, "latest")
    assert model.rotary.base == 2500.0 and meta["step"] == 12
    assert json.loads((run / "config.json").read_text())["model"]["rope_base"] == 10000.0  # the start
    # eval with a model rebuilt at the changed base gives the loss the trainer measured at the end
    capsys.readouterr()
    assert main(["eval", str(run), "--checkpoint", "latest", "--eval-iters", "2"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    last_val = _records(run, "val")[-1]
    assert last_val["step"] == 12
    assert evaluated["loss"] == pytest.approx(last_val["loss"], rel=1e-5)
    assert main(["generate", str(run), "--checkpoint", "latest", "--max-new-tokens", "5"]) == 0
    # The loaded model's rotary tables are rebuilt at the saved base, not the config's.
    positions = torch.arange(cfg.model["max_seq_len"])
    head_dim = cfg.model["dim"] // cfg.model["num_heads"]
    for base, same in ((2500.0, True), (10000.0, False)):
        expected = RotaryEmbedding(head_dim, positions.numel(), base)(positions, torch.float32)
        got = model.rotary(positions, torch.float32)
        if same:
            torch.testing.assert_close(got, expected)
        else:
            assert (got[0] - expected[0]).abs().max() > 0.1
