"""Training with the autonomic controller (sine2pi/Autonomic-Layer): two callbacks and a plot.

`autonomic` (AutonomicCallback): after every optimizer step the trainer's training loss goes
to seqlab.layers.autonomic.AutonomicController (re-exported here), and the base and window it
returns are applied to every module of the model that keeps them as saved state (RoPE tables:
set_base + base_value buffer; windowed attention: set_window + window_size buffer). It works
for any model built from those layers: gpt with model.window set, hybrid, stack, the
encoder-decoder host. Full-attention layers stay global. Select it with

    --set train.autonomic=true                                   (the defaults)
    --set train.callbacks.autonomic.factor=1.01 train.callbacks.autonomic.patience=5

Options are the controller's (beta, threshold, factor, base_bounds, window_bounds,
warmup_steps, every_n_steps, patience, cooldown, adjust, rule) plus yarn (bool: YaRN
temperature on base changes, for layers with a logit scale). The start values are the
model's own (model.rope_base, model.window); the default window bounds are [1, the model's
max_seq_len]. A model without a window has only its base moved, and vice versa.

`window_schedule` (WindowSchedule): the fixed schedule the controller is compared with, after
modded-nanogpt: the window grows linearly from `start` (default the model's) to `end` (default
max_seq_len) in `stages` equal increments, the last at step `steps`; with yarn=true (default)
each growth by s = window / start window also sets the NTK-aware base
base_0 * s^(d / (d - 2)) and YaRN's logit temperature (0.1 ln s + 1)^2 (seqlab.layers.autonomic
states the formulas). modded-nanogpt interpolates per frequency (YaRN's "NTK-by-parts") and
multiplies its logit scale by 0.2 ln s + 1 per growth; seqlab's rotary keeps one base, so the
base form of the scaling is used, and the temperature is YaRN's, of the total growth.

Both report every change of their values to metrics.jsonl (split "callback": rope_base,
window, logit_scale, reason, loss_ewma) and at the first step their start values; after each
evaluation they draw RUN_DIR/<name>.png: the training loss, the RoPE base and the window
against the step (`plot_trajectory`). Their state (start values, the controller's EWMA,
streaks and values) is in every checkpoint, so --resume continues the same trajectory; the
values themselves are model buffers, so eval and generate use what training reached.
Cost: no host sync beyond the loss read the trainer does anyway (the targets are found once).
"""

from pathlib import Path
from typing import Any

from seqlab.errors import ConfigError
from seqlab.layers.autonomic import (
    RULES,
    VALUES,
    Adjustment,
    AutonomicController,
    Targets,
    ntk_base,
    ntk_context_scale,
    yarn_logit_scale,
)
from seqlab.train.callbacks import Callback
from seqlab.train.metrics import read_metrics


def _context(model) -> int | None:
    return getattr(model, "max_seq_len", None) or getattr(getattr(model, "config", None), "max_seq_len", None)


def _check_yarn(name: str, targets: Targets) -> None:
    if not targets.logit_scales:
        raise ConfigError(
            f"train.callbacks.{name}.yarn=true needs attention layers with a logit scale (the hybrid "
            f"mixer); this model has none: set yarn=false"
        )
    if not targets.bases or (targets.head_dim or 0) <= 2:
        raise ConfigError(f"train.callbacks.{name}.yarn=true needs rotary positions with a head dim > 2")


class AutonomicCallback(Callback):
    """The `autonomic` callback: the controller drives the model's RoPE base and window."""

    name = "autonomic"

    def __init__(
        self,
        beta: float = 0.9,
        threshold: float = 0.01,
        factor: float = 1.005,
        base_bounds: list[float] | None = None,
        window_bounds: list[float] | None = None,
        warmup_steps: int = 0,
        every_n_steps: int = 1,
        patience: int = 0,
        cooldown: int = 0,
        adjust: list[str] | tuple[str, ...] = VALUES,
        rule: str = "ewma",
        yarn: bool = False,
    ):
        self.options = dict(
            beta=beta,
            threshold=threshold,
            factor=factor,
            base_bounds=base_bounds,
            window_bounds=window_bounds,
            warmup_steps=warmup_steps,
            every_n_steps=every_n_steps,
            patience=patience,
            cooldown=cooldown,
            rule=rule,
        )
        adjust = (adjust,) if isinstance(adjust, str) else tuple(adjust)
        if not adjust or any(a not in VALUES for a in adjust):
            raise ConfigError(f"train.callbacks.autonomic.adjust={list(adjust)!r}: name base and/or window")
        if rule not in RULES:
            raise ConfigError(f"train.callbacks.autonomic.rule={rule!r} must be one of {', '.join(RULES)}")
        if not isinstance(yarn, bool):
            raise ConfigError(f"train.callbacks.autonomic.yarn={yarn!r} must be true or false")
        self.adjust, self.yarn = adjust, yarn
        # Check every option now (a config error at load time, not at the first step).
        AutonomicController(**self._controller_options(10000.0, 16.0, None))
        self.controller: AutonomicController | None = None
        self.targets: Targets | None = None
        self.start: tuple[float, float] | None = None  # (base, window) the run started from
        self._pending: dict[str, Any] | None = None  # a loaded state, applied at the first step

    def _controller_options(self, base: float, window: float, context: int | None) -> dict[str, Any]:
        options = dict(self.options)
        if options["window_bounds"] is None and context is not None:
            options["window_bounds"] = (1, max(context, window))
        if options["base_bounds"] is None:
            options["base_bounds"] = (base / 10, base * 10)
        return dict(options, base=base, window_size=window, adjust=self.adjust)

    def _setup(self, model) -> None:
        targets = Targets.of(model)
        adjust = tuple(
            a for a in self.adjust if (a == "base" and targets.bases) or (a == "window" and targets.windows)
        )
        if not adjust:
            missing = " and no ".join(
                "rotary positions" if a == "base" else "windowed attention layer" for a in self.adjust
            )
            raise ConfigError(
                f"the autonomic callback has nothing to move: this model has no {missing} "
                "(give it model.window, or drop train.autonomic)"
            )
        if self.yarn:
            _check_yarn(self.name, targets)
        if self._pending is not None:
            start = tuple(self._pending["start"])
        else:
            start = (targets.base or 10000.0, float(targets.window or 1))
        self.adjust, self.targets, self.start = adjust, targets, start
        self.controller = AutonomicController(**self._controller_options(*start, _context(model)))
        if self._pending is not None:
            self.controller.load_state_dict(self._pending["controller"])
            self._pending = None

    def _logit_scale(self, base: float) -> float:
        return yarn_logit_scale(ntk_context_scale(base, self.start[0], self.targets.head_dim))

    def on_eval(self, step, result, model):
        # The evaluation at step 0 comes before the first checkpoint: a model this callback
        # cannot drive is refused before the run leaves anything to resume.
        if self.controller is None:
            self._setup(model)
        return None

    def on_train_step(self, step, loss, model, optimizer):
        if self.controller is None:
            self._setup(model)
        adj: Adjustment = self.controller.observe(loss, step)
        if adj.changed:
            self.targets.apply(
                base=adj.base if "base" in self.adjust else None,
                window=adj.window if "window" in self.adjust else None,
                logit_scale=self._logit_scale(adj.base) if self.yarn else None,
            )
        if not adj.changed and adj.reason != "first":
            return None
        record = {"reason": adj.reason, "loss_ewma": self.controller.ewma}
        if "base" in self.adjust:
            record["rope_base"] = adj.base
        if "window" in self.adjust:
            record["window"] = adj.window
        if self.yarn:
            record["logit_scale"] = self._logit_scale(adj.base)
        return record

    def on_artifacts(self, step, run_dir):
        plot_trajectory(run_dir / "metrics.jsonl", run_dir / f"{self.name}.png", self.name)

    def state_dict(self):
        if self.controller is None:
            return dict(self._pending) if self._pending is not None else {}
        return {"start": list(self.start), "controller": self.controller.state_dict()}

    def load_state_dict(self, state):
        if state:
            self._pending = dict(state)
            self.controller = None  # rebuilt from the saved start values at the next step


class WindowSchedule(Callback):
    """The `window_schedule` callback: a fixed window growth with YaRN-style RoPE rescaling."""

    name = "window_schedule"

    def __init__(
        self,
        steps: int | None = None,
        start: int | None = None,
        end: int | None = None,
        stages: int = 4,
        yarn: bool = True,
    ):
        for key, value in (("steps", steps), ("stages", stages), ("start", start), ("end", end)):
            if value is None and key in ("start", "end"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                hint = " (the step by which the window reaches `end`, e.g. train.max_iters)"
                raise ConfigError(
                    f"train.callbacks.window_schedule.{key}={value!r} must be an int >= 1"
                    f"{hint if key == 'steps' else ''}"
                )
        if not isinstance(yarn, bool):
            raise ConfigError(f"train.callbacks.window_schedule.yarn={yarn!r} must be true or false")
        self.steps, self.stages, self.yarn = steps, stages, yarn
        self.options = (start, end)
        self.targets: Targets | None = None
        self.start: tuple[float, int, int] | None = None  # (base, start window, end window)
        self.window: int | None = None

    def window_at(self, step: int) -> int:
        _, w0, w1 = self.start
        stage = min(self.stages, step * self.stages // self.steps)
        return round(w0 + (w1 - w0) * stage / self.stages)

    def _setup(self, model) -> None:
        targets = Targets.of(model)
        if not targets.windows:
            raise ConfigError(
                "the window_schedule callback needs windowed attention layers (model.window); "
                "this model has none"
            )
        if self.yarn:
            _check_yarn(self.name, targets)
        self.targets = targets
        if self.start is None:  # not resumed: from the model and the options
            w0 = self.options[0] or targets.window
            w1 = self.options[1] or _context(model) or w0
            self.start = (targets.base or 10000.0, w0, w1)

    def on_eval(self, step, result, model):
        if self.targets is None:  # refuse a model it cannot drive before the first checkpoint
            self._setup(model)
        return None

    def on_train_step(self, step, loss, model, optimizer):
        if self.targets is None:
            self._setup(model)
        window = self.window_at(step)
        if window == self.window:
            return None
        first = self.window is None
        self.window = window
        base0, w0, _ = self.start
        scale = window / w0
        base = ntk_base(base0, scale, self.targets.head_dim) if self.yarn else None
        logit = yarn_logit_scale(scale) if self.yarn else None
        self.targets.apply(base=base, window=window, logit_scale=logit)
        record = {"reason": "start" if first else "schedule", "window": window}
        if self.yarn:
            record.update(rope_base=base, logit_scale=logit)
        return record

    def on_artifacts(self, step, run_dir):
        plot_trajectory(run_dir / "metrics.jsonl", run_dir / f"{self.name}.png", self.name)

    def state_dict(self):
        return {"start": list(self.start) if self.start else None, "window": self.window}

    def load_state_dict(self, state):
        if state.get("start") is not None:
            base, w0, w1 = state["start"]
            self.start = (float(base), int(w0), int(w1))
        self.window = state.get("window")
        self.targets = None


def plot_trajectory(metrics_path: Path, png_path: Path, callback: str = "autonomic", title: str = "") -> bool:
    """Training loss, RoPE base and window against the step, from a run's metrics.jsonl: the
    callback's records are the values from their step on. Returns False when there is
    nothing to draw yet."""
    records = read_metrics(metrics_path)
    moves = [r for r in records if r.get("split") == "callback" and r.get("callback") == callback]
    train = [(r["step"], r["loss"]) for r in records if r.get("split") == "train" and "loss" in r]
    if not moves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    last = max([r["step"] for r in records] or [1])
    panels = [("loss", "training loss")] + [
        (key, label) for key, label in (("rope_base", "RoPE base"), ("window", "window")) if key in moves[0]
    ]
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.2 * len(panels) + 0.6), sharex=True, squeeze=False)
    axes = axes[:, 0]
    for ax, (key, label) in zip(axes, panels):
        if key == "loss":
            if train:
                ax.plot(*zip(*train), "-", color="tab:gray", linewidth=0.8, label="train loss")
            ewma = [(r["step"], r["loss_ewma"]) for r in moves if r.get("loss_ewma") is not None]
            if ewma:
                ax.plot(*zip(*ewma), "-", color="tab:blue", linewidth=1.2, label="EWMA at each move")
            ax.legend(fontsize=8)
        else:
            pts = [(r["step"], r[key]) for r in moves if r.get(key) is not None]
            pts.append((last, pts[-1][1]))
            ax.step(*zip(*pts), where="post", color="tab:orange" if key == "window" else "tab:green")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("step")
    axes[0].set_title(title or f"{callback}: loss, RoPE base and window")
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return True


__all__ = [
    "Adjustment",
    "AutonomicCallback",
    "AutonomicController",
    "WindowSchedule",
    "plot_trajectory",
]
