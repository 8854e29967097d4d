"""The controller drives a transformers.Trainer run: offline, a tiny hybrid model, CPU."""

import pytest
import torch

from seqlab.models import build_model

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

VOCAB, LENGTH = 23, 24


def rows(n=32):
    g = torch.Generator().manual_seed(0)
    # Repeated rows, so the loss falls quickly and the controller sees a trend.
    base = [torch.randint(0, VOCAB, (LENGTH,), generator=g) for _ in range(4)]
    return [{"input_ids": base[i % 4], "labels": base[i % 4]} for i in range(n)]


def run_trainer(tmp_path, callback, steps=12):
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(0)
    model = build_model("hybrid", "tiny", vocab_size=VOCAB)
    args = TrainingArguments(
        output_dir=str(tmp_path / "hf"),
        per_device_train_batch_size=8,
        max_steps=steps,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows(), callbacks=[callback])
    trainer.train()
    return trainer, model


def test_the_controller_moves_the_models_base_and_window_under_trainer(tmp_path):
    from seqlab.train.autonomic_hf import AutonomicTrainerCallback

    callback = AutonomicTrainerCallback(factor=1.05, threshold=0.0)
    trainer, model = run_trainer(tmp_path, callback)
    history = callback.history
    assert history[0]["step"] == 1 and history[0]["reason"] == "first" and history[0]["window"] == 8
    assert len({r["rope_base"] for r in history}) > 3
    assert model.rotary.base == history[-1]["rope_base"] != 10000.0
    assert {b.mixer.window for b in model.blocks} == {history[-1]["window"]}
    # One observation per optimizer step (logging_steps=1), each one the logged loss.
    assert callback.inner.controller.observations == 12
    logged = [e for e in trainer.state.log_history if "autonomic/rope_base" in e]
    assert [e["autonomic/rope_base"] for e in logged] == [r["rope_base"] for r in history]


def test_its_state_restores_the_way_trainer_restores_callbacks(tmp_path):
    from seqlab.train.autonomic_hf import AutonomicTrainerCallback

    callback = AutonomicTrainerCallback(factor=1.05, threshold=0.0, patience=1)
    run_trainer(tmp_path, callback, steps=6)
    saved = callback.state()
    # What Trainer._load_callback_state does with trainer_state.json's stateful_callbacks.
    restored = AutonomicTrainerCallback(**saved["args"])
    for name, value in saved["attributes"].items():
        setattr(restored, name, value)
    model = build_model("hybrid", "tiny", vocab_size=VOCAB)

    class State:
        global_step = 6
        log_history: list = []

    restored.on_train_begin(None, State, None, model=model)
    assert restored.inner.controller.state_dict() == callback.inner.controller.state_dict()
    assert restored.inner.start == callback.inner.start and restored.history == callback.history


def test_a_model_without_rotary_or_window_is_refused_at_train_begin(tmp_path):
    from seqlab.errors import ConfigError
    from seqlab.train.autonomic_hf import AutonomicTrainerCallback

    callback = AutonomicTrainerCallback()
    with pytest.raises(ConfigError, match="nothing to move"):
        callback.on_train_begin(None, type("S", (), {"global_step": 0}), None, model=torch.nn.Linear(2, 2))
