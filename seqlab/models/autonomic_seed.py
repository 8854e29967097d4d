"""The Autonomic-Layer seed's public API (sine2pi/Autonomic-Layer README), as a thin facade.

    layer = AutonomicLayer(n_state, n_head, initial_params)      the seed's signature
    layer.attach(model)                                          (or AutonomicLayer(..., model=m))
    new_base = layer.adjust_base(loss)        one feedback step on the RoPE base
    new_window = layer.adjust_window(loss)    one feedback step on the hybrid-attention window
    layer.update_base(b) / layer.update_window(w)   set a value on every module of the model

The rule is seqlab.layers.autonomic.AutonomicController's (its docstring states it): an EWMA
of the loss with beta, a threshold, a factor, bounds. With the seed's meaning and without its
defects:

- ONE EWMA step per observed loss. The seed's forward called adjust_base(loss) and then
  adjust_window(loss) with the same loss, and each stepped the EWMA, so it moved twice per
  training step. Here the two calls of one step share one observation: a call observes a new
  loss unless the other method has just observed the same loss value and this one has not
  used it yet.
- The window really changes in both directions: it is kept as a float (the seed's int window
  times 1.005 fell back to itself) and applied as max(1, round(window)).
- update_base / update_window change every rotary / windowed module of the attached model IN
  PLACE (RotaryEmbedding.set_base recomputes its buffers; no new Parameters that the optimizer
  never sees, as the seed's update_base made), found by what they hold (seqlab.layers.autonomic
  .Targets): an encoder-decoder's encoder and decoder alike. Full-attention layers stay global.
- adjust_* stay within bounds (base_bounds, window_bounds: default a factor 10 around the start
  values), so the base cannot drift as factor^n.
- The seed's print every 200 adjustments is a log record (logger "seqlab.autonomic", INFO).

Departures: AutonomicLayer is a plain object, not an nn.Module: it has no weights, and a module
that holds the model it adjusts would contain itself. The values it sets live in the model's
state (buffers), so they are saved with the model; the layer's own counters are in
state_dict(). `best_loss` is the lowest loss observed (the seed overwrote it with the latest).
n_state, n_head, max_rel_dist and checkpointing are accepted and kept as attributes (the seed
used none of them here); `initial_params` is kept as `params`, `alpha` as `alpha` (unused in
the seed too). The seed's `forward(x)` called a `main_model` it never defined; a training loop
calls adjust_base / adjust_window with the loss instead (or uses the `autonomic` callback of
seqlab.train.autonomic, which does the same for seqlab's trainer).

This is a model-side facade: it imports the controller from seqlab.layers (models may not
import seqlab.train).
"""

import logging
import math

from torch import nn

from seqlab.layers.autonomic import AutonomicController, Targets

log = logging.getLogger("seqlab.autonomic")


class AutonomicLayer:
    def __init__(
        self,
        n_state: int,
        n_head: int,
        initial_params=None,
        max_rel_dist: int = 1,
        checkpointing: bool = False,
        alpha: float = 0.001,
        beta: float = 0.9,
        *,
        model: nn.Module | None = None,
        base: float = 10000.0,
        window_size: float = 40,
        threshold: float = 0.01,
        factor: float = 1.005,
        base_bounds: tuple[float, float] | None = None,
        window_bounds: tuple[float, float] | None = None,
        log_every: int = 200,
    ):
        self.n_state, self.n_head, self.params = n_state, n_head, initial_params
        self.max_rel_dist, self.checkpointing, self.alpha = max_rel_dist, checkpointing, alpha
        self.controller = AutonomicController(
            base=base,
            window_size=window_size,
            beta=beta,
            threshold=threshold,
            factor=factor,
            base_bounds=base_bounds,
            window_bounds=window_bounds,
        )
        self.adjust_counter = 0
        self.best_loss = math.inf
        self.log_every = log_every
        self.targets: Targets | None = None
        self._round: dict | None = None  # the observation the current adjust_* pair shares
        if model is not None:
            self.attach(model)

    @property
    def beta(self) -> float:
        return self.controller.beta

    @property
    def base(self) -> float:
        return self.controller.base

    @property
    def window_size(self) -> int:
        """The window as applied to the model."""
        return self.controller.window

    @property
    def running_loss(self) -> float | None:
        """The EWMA of the observed losses (None before the first)."""
        return self.controller.ewma

    def attach(self, model: nn.Module) -> "AutonomicLayer":
        """Drive `model`: its rotary and windowed modules take this layer's base and window now."""
        self.targets = Targets.of(model)
        if not self.targets.bases and not self.targets.windows:
            raise ValueError(
                f"{type(model).__name__} has no rotary embedding and no windowed attention for an "
                f"AutonomicLayer to adjust"
            )
        self.targets.apply(base=self.base, window=self.window_size)
        return self

    def update_base(self, new_base: float) -> None:
        """Set the RoPE base of every rotary module of the attached model, in place."""
        if not new_base > 1:
            raise ValueError(f"RoPE base must be > 1, got {new_base}")
        self.controller.base = float(new_base)
        if self.targets is not None:
            self.targets.apply(base=self.controller.base)

    def update_window(self, new_window: float) -> None:
        """Set the window of every windowed attention module of the attached model."""
        if not new_window > 0:
            raise ValueError(f"attention window must be > 0, got {new_window}")
        self.controller.window_value = float(new_window)
        if self.targets is not None:
            self.targets.apply(window=self.controller.window)

    def _direction(self, loss: float, which: str) -> int:
        r = self._round
        if r is None or which in r["used"] or r["loss"] != loss:
            direction, _ = self.controller.signal(loss, self.controller.observations + 1)
            r = self._round = {"loss": loss, "used": set(), "direction": direction}
            self.best_loss = min(self.best_loss, loss)
        r["used"].add(which)
        return r["direction"]

    def _count(self, what: str, loss: float) -> None:
        self.adjust_counter += 1
        if self.log_every and self.adjust_counter % self.log_every == 0:
            log.info(
                "iteration %d: adjusted %s; base %.6g, window %d, loss %.6g",
                self.adjust_counter,
                what,
                self.base,
                self.window_size,
                loss,
            )

    def adjust_base(self, loss: float, factor: float = 1.005) -> float:
        """One feedback step on the base (EWMA rule; shares the step's observation with
        adjust_window); returns the new base."""
        loss = float(loss)
        direction = self._direction(loss, "base")
        if direction:
            self.controller.move(direction, ("base",), factor)
        self.update_base(self.controller.base)
        self._count("base", loss)
        return self.base

    def adjust_window(self, loss: float, factor: float = 1.005) -> int:
        """One feedback step on the window; returns the window applied to the model."""
        loss = float(loss)
        direction = self._direction(loss, "window")
        if direction:
            self.controller.move(direction, ("window",), factor)
        self.update_window(self.controller.window_value)
        self._count("window", loss)
        return self.window_size

    def state_dict(self) -> dict:
        return {
            "controller": self.controller.state_dict(),
            "adjust_counter": self.adjust_counter,
            "best_loss": self.best_loss,
            "round": None if self._round is None else {**self._round, "used": sorted(self._round["used"])},
        }

    def load_state_dict(self, state: dict) -> None:
        self.controller.load_state_dict(state["controller"])
        self.adjust_counter, self.best_loss = state["adjust_counter"], state["best_loss"]
        r = state["round"]
        self._round = None if r is None else {**r, "used": set(r["used"])}
        if self.targets is not None:
            self.targets.apply(base=self.base, window=self.window_size)


__all__ = ["AutonomicLayer"]
