"""The autonomic controller: a feedback rule that moves a model's RoPE base and attention window
by its training loss (sine2pi/Autonomic-Layer), and the helpers that apply those values to a
live model.

The controller is a plain object: no torch, no model. Each training step it gets one loss:

    observe(loss, step) -> Adjustment(base, window, reason, direction, changed)

Rule "ewma" (default; the seed's rule, made consistent):

    the first observation sets ewma = loss (and holds)
    delta = loss - ewma                      (ewma as it was before this observation)
    ewma <- beta * ewma + (1 - beta) * loss  (ONE step per observed loss)
    delta < -threshold: improving -> base *= factor, window *= factor
    delta > +threshold: worsening -> base /= factor, window /= factor
    otherwise hold

Rule "bold_driver" (what the seed's running code compared): delta = loss - previous loss.

Both values are clamped to their bounds (base_bounds, window_bounds; default a factor 10
around the start values, and at least 1 for the window), so neither drifts as factor^n.
The window is a float inside the controller and applied as max(1, round(window)), so small
factors still move it in both directions.

Gating, in this order, as torch's ReduceLROnPlateau has it (the EWMA steps on every
observation regardless, so it is warm when decisions start):

    step <= warmup_steps            no decision ("warmup")
    step % every_n_steps != 0       no decision ("interval")
    a decision's signal (+1 improving, -1 worsening, 0 hold) extends a streak of equal signals
    cooldown_left > 0               decrement it, forget the streak, no move ("cooldown")
    signal 0                        "hold"
    streak length <= patience       no move yet ("patience")
    otherwise move, forget the streak, cooldown_left = cooldown ("improving" / "worsening")

patience=0 and cooldown=0 (the defaults) move on every signal, as the seed does.

YaRN-style rescaling (optional, `yarn_logit_scale`): a larger RoPE base stretches every
rotary wavelength the way NTK-aware scaling does for a context s times longer,
base' = base * s^(d / (d - 2)) with d the head dim, so a base ratio r corresponds to
s = r^((d - 2) / d). YaRN (Peng et al. 2023) found that attention then needs a temperature:
its logits are multiplied by (0.1 ln s + 1)^2 (0.1 ln s + 1 on q and on k), which keeps the
attention entropy of the longer effective context near that of training. For s <= 1 (a
smaller base) YaRN defines no temperature and the scale stays 1. Only modules with a
`logit_scale` buffer (seqlab.layers.hybrid.HybridAttention) take it.

Applying values to a model (`Targets.of(model).apply(base=, window=, logit_scale=)`): every
module that keeps the value as saved state takes part, found by what it holds, not by its class:

    RoPE base    set_base(base) and a `base_value` buffer     (seqlab.layers.rotary)
    window       set_window(w) and a `window_size` buffer     (Attention, HybridAttention),
                 windowed layers only: a full-attention layer (window_size 0) stays global
    logit scale  set_logit_scale(s) and a `logit_scale` buffer (HybridAttention)

so any model built from those layers (gpt, hybrid, stack, the encoder-decoder host) can be
driven, and checkpoints, eval and generate see the values training reached.

This lives in seqlab.layers (not seqlab.train) because the seed's facade
(seqlab.models.autonomic_seed) drives models with it and models may not import train;
seqlab.train.autonomic re-exports it beside the training callback.
"""

import math
from dataclasses import dataclass

from torch import nn

from seqlab.errors import ConfigError

RULES = ("ewma", "bold_driver")
VALUES = ("base", "window")


@dataclass(frozen=True)
class Adjustment:
    """The controller's values after one observation and why they are what they are."""

    base: float
    window: int  # the applied window: max(1, round(the controller's float window))
    reason: str  # first | warmup | interval | cooldown | hold | patience | improving | worsening
    direction: int  # +1 grew, -1 shrank, 0 no move (a move clamped at a bound still counts)
    changed: bool  # the base or the applied window differ from before this observation


def _positive(name: str, value, *, above: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"autonomic controller: {name}={value!r} must be a finite number > {above}")
    if not value > above:
        raise ConfigError(f"autonomic controller: {name}={value!r} must be > {above}")
    return float(value)


def _count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"autonomic controller: {name}={value!r} must be an int >= 0")
    return value


def _bounds(name: str, bounds, start: float, default: tuple[float, float], floor: float) -> tuple:
    if bounds is None:
        bounds = default
    if not isinstance(bounds, (list, tuple)) or len(bounds) != 2:
        raise ConfigError(f"autonomic controller: {name}={bounds!r} must be [low, high] or null")
    low, high = bounds
    low, high = _positive(f"{name}[0]", low, above=floor), _positive(f"{name}[1]", high, above=floor)
    if not low <= start <= high:
        raise ConfigError(
            f"autonomic controller: {name}=[{low}, {high}] must contain the start value {start}; widen "
            f"the bounds or change the start value"
        )
    return low, high


class AutonomicController:
    """Moves (base, window) by the training loss; see the module docstring for the rule."""

    def __init__(
        self,
        base: float = 10000.0,
        window_size: float = 40,
        beta: float = 0.9,
        threshold: float = 0.01,
        factor: float = 1.005,
        base_bounds: tuple[float, float] | None = None,
        window_bounds: tuple[float, float] | None = None,
        warmup_steps: int = 0,
        every_n_steps: int = 1,
        patience: int = 0,
        cooldown: int = 0,
        adjust: tuple[str, ...] | list[str] = VALUES,
        rule: str = "ewma",
    ):
        self.start_base = _positive("base", base, above=1.0)
        self.start_window = _positive("window_size", window_size)
        self.factor = _positive("factor", factor, above=1.0)
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta < 1:
            raise ConfigError(f"autonomic controller: beta={beta!r} must lie in [0, 1)")
        self.beta = float(beta)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold >= 0:
            raise ConfigError(f"autonomic controller: threshold={threshold!r} must be a number >= 0")
        self.threshold = float(threshold)
        self.base_bounds = _bounds(
            "base_bounds", base_bounds, self.start_base, (self.start_base / 10, self.start_base * 10), 1.0
        )
        self.window_bounds = _bounds(
            "window_bounds", window_bounds, self.start_window, (1.0, self.start_window * 10), 0.0
        )
        self.warmup_steps = _count("warmup_steps", warmup_steps)
        self.every_n_steps = _count("every_n_steps", every_n_steps)
        if self.every_n_steps < 1:
            raise ConfigError("autonomic controller: every_n_steps must be >= 1")
        self.patience = _count("patience", patience)
        self.cooldown = _count("cooldown", cooldown)
        adjust = (adjust,) if isinstance(adjust, str) else tuple(adjust)
        if not adjust or any(name not in VALUES for name in adjust):
            raise ConfigError(
                f"autonomic controller: adjust={list(adjust)!r} must name one or both of {', '.join(VALUES)}"
            )
        self.adjust = adjust
        if rule not in RULES:
            raise ConfigError(f"autonomic controller: rule={rule!r} must be one of {', '.join(RULES)}")
        self.rule = rule
        self.base = self.start_base
        self.window_value = self.start_window
        self.ewma: float | None = None
        self.previous: float | None = None
        self.streak_direction = 0
        self.streak = 0
        self.cooldown_left = 0
        self.observations = 0

    @property
    def window(self) -> int:
        """The window as applied to a model."""
        return max(1, round(self.window_value))

    def _delta(self, loss: float) -> float | None:
        """loss minus the reference of the rule (None at the first observation); steps the
        reference once."""
        if self.rule == "ewma":
            reference = self.ewma
            self.ewma = loss if reference is None else self.beta * reference + (1 - self.beta) * loss
        else:
            reference = self.previous
        self.previous = loss
        return None if reference is None else loss - reference

    def signal(self, loss: float, step: int) -> tuple[int, str]:
        """(direction, reason) for this observation: +1 grow, -1 shrink, 0 no move. Steps the
        rule's reference (EWMA or previous loss) once and the patience/cooldown counters."""
        loss = float(loss)
        if not math.isfinite(loss):
            raise ValueError(f"autonomic controller: the observed loss is {loss} at step {step}")
        delta = self._delta(loss)
        self.observations += 1
        if delta is None:
            return 0, "first"
        if step <= self.warmup_steps:
            return 0, "warmup"
        if step % self.every_n_steps:
            return 0, "interval"
        direction = 1 if delta < -self.threshold else -1 if delta > self.threshold else 0
        if direction and direction == self.streak_direction:
            self.streak += 1
        else:
            self.streak_direction, self.streak = direction, 1 if direction else 0
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.streak_direction, self.streak = 0, 0
            return 0, "cooldown"
        if direction == 0:
            return 0, "hold"
        if self.streak <= self.patience:
            return 0, "patience"
        self.streak_direction, self.streak = 0, 0
        self.cooldown_left = self.cooldown
        return direction, "improving" if direction > 0 else "worsening"

    def move(
        self, direction: int, values: tuple[str, ...] | None = None, factor: float | None = None
    ) -> None:
        """Multiply (direction +1) or divide (-1) the named values by factor, within bounds."""
        factor = self.factor if factor is None else _positive("factor", factor, above=1.0)
        step = factor**direction
        for name in self.adjust if values is None else values:
            if name == "base":
                self.base = min(max(self.base * step, self.base_bounds[0]), self.base_bounds[1])
            else:
                value = min(max(self.window_value * step, self.window_bounds[0]), self.window_bounds[1])
                self.window_value = value

    def observe(self, loss: float, step: int) -> Adjustment:
        """One training loss (after optimizer step `step`) -> the values to use from now on."""
        before = (self.base, self.window)
        direction, reason = self.signal(loss, step)
        if direction:
            self.move(direction)
        return Adjustment(self.base, self.window, reason, direction, (self.base, self.window) != before)

    def state_dict(self) -> dict:
        return {
            "base": self.base,
            "window": self.window_value,
            "ewma": self.ewma,
            "previous": self.previous,
            "streak_direction": self.streak_direction,
            "streak": self.streak,
            "cooldown_left": self.cooldown_left,
            "observations": self.observations,
        }

    def load_state_dict(self, state: dict) -> None:
        self.base, self.window_value = float(state["base"]), float(state["window"])
        self.ewma, self.previous = state["ewma"], state["previous"]
        self.streak_direction, self.streak = state["streak_direction"], state["streak"]
        self.cooldown_left, self.observations = state["cooldown_left"], state["observations"]


def ntk_context_scale(base: float, start_base: float, head_dim: int) -> float:
    """The context scale s whose NTK-aware base is `base`: base = start_base * s^(d / (d - 2))."""
    if head_dim <= 2:
        raise ValueError(f"NTK-aware scaling needs a head dim > 2, got {head_dim}")
    return (base / start_base) ** ((head_dim - 2) / head_dim)


def ntk_base(start_base: float, context_scale: float, head_dim: int) -> float:
    """The RoPE base for a context `context_scale` times longer (NTK-aware scaling)."""
    if head_dim <= 2:
        raise ValueError(f"NTK-aware scaling needs a head dim > 2, got {head_dim}")
    return start_base * context_scale ** (head_dim / (head_dim - 2))


def yarn_logit_scale(context_scale: float) -> float:
    """YaRN's attention temperature as a factor on the logits: (0.1 ln s + 1)^2, 1 for s <= 1."""
    return (0.1 * math.log(context_scale) + 1.0) ** 2 if context_scale > 1 else 1.0


def _targets(model: nn.Module, method: str, buffer: str) -> list[nn.Module]:
    return [m for m in model.modules() if hasattr(m, method) and buffer in m._buffers]


def base_targets(model: nn.Module) -> list[nn.Module]:
    """Modules whose RoPE base is saved state: set_base() and a `base_value` buffer."""
    return _targets(model, "set_base", "base_value")


def window_targets(model: nn.Module) -> list[nn.Module]:
    """Windowed modules whose window is saved state: set_window() and a `window_size` buffer
    that is not 0 (0 = full attention: a global layer stays global). Reads the buffers (a
    host sync on GPU): find the targets once, not every step."""
    return [m for m in _targets(model, "set_window", "window_size") if int(m.window_size) > 0]


def logit_scale_targets(model: nn.Module) -> list[nn.Module]:
    """Modules with an attention temperature: set_logit_scale() and a `logit_scale` buffer."""
    return _targets(model, "set_logit_scale", "logit_scale")


@dataclass
class Targets:
    """The modules of one model that take each value (found once: see the module docstring)."""

    bases: list[nn.Module]
    windows: list[nn.Module]
    logit_scales: list[nn.Module]

    @classmethod
    def of(cls, model: nn.Module) -> "Targets":
        return cls(base_targets(model), window_targets(model), logit_scale_targets(model))

    @property
    def base(self) -> float | None:
        """The RoPE base of the first rotary module (None without one)."""
        return float(self.bases[0].base_value) if self.bases else None

    @property
    def window(self) -> int | None:
        """The window of the first windowed module (None without one)."""
        return int(self.windows[0].window_size) if self.windows else None

    @property
    def head_dim(self) -> int | None:
        """The rotary head dim (what NTK-aware scaling depends on)."""
        return getattr(self.bases[0], "head_dim", None) if self.bases else None

    def apply(self, base: float | None = None, window: int | None = None, logit_scale: float | None = None):
        """Set the base / window / logit scale of every module that keeps it (None: leave it)."""
        if base is not None:
            for module in self.bases:
                module.set_base(base)
        if window is not None:
            for module in self.windows:
                module.set_window(window)
        if logit_scale is not None:
            for module in self.logit_scales:
                module.set_logit_scale(logit_scale)


__all__ = [
    "RULES",
    "Adjustment",
    "AutonomicController",
    "Targets",
    "base_targets",
    "logit_scale_targets",
    "ntk_base",
    "ntk_context_scale",
    "window_targets",
    "yarn_logit_scale",
]
