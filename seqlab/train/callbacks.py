"""Training callbacks: code the loop calls at fixed points, named in the config, saved by name.

A callback sees every training step and every evaluation and may change the model while it
trains (the autonomic controller moves the RoPE base and the attention window). The protocol
has no optional methods; the base class gives no-op defaults:

    on_train_step(step, loss, model, optimizer) -> dict | None   after optimizer step `step`
    on_eval(step, result, model) -> dict | None                  after the evaluation at `step`
    on_artifacts(step, run_dir) -> None      after each evaluation, main process only: files
                                             of its own in the run directory (e.g. a plot)
    state_dict() -> dict                                         saved in every checkpoint
    load_state_dict(state) -> None                               on --resume

`loss` is the step's training loss (a float, averaged over processes); `result` the
evaluation's metrics (loss, bits_per_token, ...). A returned dict reports what the callback
did or measured: the trainer writes it to metrics.jsonl as
{"step": step, "split": "callback", "callback": name, **returned}. Values a callback changes in
the model must live in the model's state_dict (RoPE base buffer, window size) so that
checkpoints, --resume, eval and generate see them; its own counters go in state_dict().

Which callbacks a run has (names are keys of CALLBACKS):

    train.callbacks: {name: {option: value}}      --set train.callbacks.loss_ewma.alpha=0.05
    train.callbacks: [name, ...]                  --set 'train.callbacks=[loss_ewma]' (defaults)

plus the names the model's registry entry lists (ModelEntry.callbacks), which always run, with
the options the config gives for the same name. Checkpoints keep each callback's state under
its name, so an exact resume continues them; objects passed as `train(cfg, callbacks=[...])`
from Python take part the same way under their `name` (names must be unique).
"""

import math
from typing import Any

from seqlab.errors import ConfigError


class Callback:
    name: str = "callback"  # the CALLBACKS key when built by name; a Python-made one sets its own

    def on_train_step(self, step: int, loss: float, model, optimizer) -> dict[str, Any] | None:
        return None

    def on_eval(self, step: int, result: dict[str, Any], model) -> dict[str, Any] | None:
        return None

    def on_artifacts(self, step: int, run_dir) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class LossEWMA(Callback):
    """Exponential moving average of the training loss: ewma <- (1 - alpha) ewma + alpha loss.

    A smoother view of progress than the noisy per-step loss; at every evaluation it reports
    {"loss_ewma": ewma, "best_loss_ewma": the lowest ewma seen so far} to metrics.jsonl.
    """

    def __init__(self, alpha: float = 0.1):
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha <= 1:
            raise ConfigError(f"train.callbacks.loss_ewma.alpha={alpha!r} must lie in (0, 1]")
        self.alpha = float(alpha)
        self.value: float | None = None
        self.best = math.inf
        self.steps = 0

    def on_train_step(self, step, loss, model, optimizer):
        self.value = loss if self.value is None else (1 - self.alpha) * self.value + self.alpha * loss
        self.best = min(self.best, self.value)
        self.steps += 1
        return None

    def on_eval(self, step, result, model):
        if self.value is None:
            return None  # the evaluation at step 0 comes before any training loss
        return {"loss_ewma": self.value, "best_loss_ewma": self.best}

    def state_dict(self):
        return {"value": self.value, "best": self.best, "steps": self.steps}

    def load_state_dict(self, state):
        self.value, self.best, self.steps = state["value"], state["best"], state["steps"]


def _autonomic(**options) -> Callback:
    # Imported when used: seqlab.train.autonomic subclasses Callback from this module.
    from seqlab.train.autonomic import AutonomicCallback

    return AutonomicCallback(**options)


def _window_schedule(**options) -> Callback:
    from seqlab.train.autonomic import WindowSchedule

    return WindowSchedule(**options)


CALLBACKS: dict[str, type[Callback]] = {
    "loss_ewma": LossEWMA,
    "autonomic": _autonomic,  # the autonomic controller: RoPE base and window by the loss
    "window_schedule": _window_schedule,  # fixed window growth + YaRN-style RoPE rescaling
}


def normalize(callbacks: dict[str, Any] | list[str]) -> dict[str, dict[str, Any]]:
    """train.callbacks as {name: options}: a list of names gets default options."""
    if isinstance(callbacks, (list, tuple)):
        callbacks = {name: {} for name in callbacks}
    out = {}
    for name, options in callbacks.items():
        if options is not None and not isinstance(options, dict):
            raise ConfigError(
                f"train.callbacks.{name} must map option names to values (or be {{}} for the "
                f"defaults), got {options!r}"
            )
        out[str(name)] = dict(options or {})
    return out


def build_callbacks(
    configured: dict[str, dict[str, Any]], model_callbacks: tuple[str, ...] = ()
) -> list[Callback]:
    """The callbacks of a run: the model's registry entry's, then the config's, by name."""
    options = normalize(configured)
    names = list(dict.fromkeys([*model_callbacks, *options]))
    out = []
    for name in names:
        if name not in CALLBACKS:
            raise ConfigError(
                f"unknown callback {name!r} in train.callbacks; choose from: {', '.join(CALLBACKS)}"
            )
        try:
            callback = CALLBACKS[name](**options.get(name, {}))
        except TypeError as e:  # an option the callback does not take
            raise ConfigError(f"train.callbacks.{name}: {e}") from None
        callback.name = name
        out.append(callback)
    return out


__all__ = ["CALLBACKS", "Callback", "LossEWMA", "build_callbacks", "normalize"]
