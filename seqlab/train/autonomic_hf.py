"""The autonomic controller driving a Hugging Face `transformers.Trainer` run (the seed
advertises Trainer integration).

    from seqlab.train.autonomic_hf import AutonomicTrainerCallback
    trainer = Trainer(model=model, args=TrainingArguments(..., logging_steps=1),
                      callbacks=[AutonomicTrainerCallback(factor=1.01)])

The adapter wraps seqlab's `autonomic` callback (seqlab.train.autonomic.AutonomicCallback: the
same options, the same rule, the same targets: every module of the model with set_base + a
base_value buffer, or set_window + a window_size buffer). Trainer gives callbacks no per-step
loss, only its logs: the controller observes `logs["loss"]` at each training log, which is
the mean loss since the previous log, so `logging_steps=1` gives one observation per
optimizer step and a larger value one per logging_steps steps. Reading it costs no host sync
beyond Trainer's own (it computes that float for the log anyway).

What it did: `history` (one dict per change: step, rope_base, window, reason, loss_ewma), and
each change is also appended to `trainer.state.log_history` as {"step", "autonomic/...": ...}.
The values are model buffers, so they are in the model's saved weights. The controller's state
is Trainer state: the adapter is an ExportableState, saved in trainer_state.json at every
checkpoint and restored by `trainer.train(resume_from_checkpoint=...)` when
`restore_callback_states_from_checkpoint=True`.

transformers is an optional dependency: importing this module without it raises a one-line
ConfigError naming the extra.
"""

from typing import Any

from seqlab.errors import ConfigError
from seqlab.train.autonomic import AutonomicCallback

try:
    from transformers import TrainerCallback
    from transformers.trainer_callback import ExportableState
except ImportError:  # pragma: no cover - exercised only without transformers
    raise ConfigError("seqlab.train.autonomic_hf needs transformers: pip install 'seqlab[hf]'") from None


class AutonomicTrainerCallback(TrainerCallback, ExportableState):
    def __init__(self, **options: Any):
        self.options = dict(options)
        self.inner = AutonomicCallback(**options)  # checks the options now
        self.history: list[dict[str, Any]] = []
        self.inner_state: dict[str, Any] | None = None  # set by Trainer when it restores this

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.inner_state:
            self.inner.load_state_dict(self.inner_state)
            self.inner_state = None
        if model is not None and self.inner.controller is None:
            self.inner.on_eval(state.global_step, {}, model)  # finds the targets; refuses a bad model

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        if not logs or "loss" not in logs or model is None:
            return  # evaluation logs and the final summary carry no training loss
        record = self.inner.on_train_step(state.global_step, float(logs["loss"]), model, None)
        if record:
            record = {"step": state.global_step, **record}
            self.history.append(record)
            state.log_history.append(
                {"step": state.global_step, **{f"autonomic/{k}": v for k, v in record.items() if k != "step"}}
            )

    def state(self) -> dict:
        return {
            "args": self.options,
            "attributes": {"inner_state": self.inner.state_dict(), "history": list(self.history)},
        }


__all__ = ["AutonomicTrainerCallback"]
