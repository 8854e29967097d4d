"""seqlab.explain: pictures of what a trained model looks at, behind `seqlab explain`.

One entry point, `explain_run(run_dir, out_dir, checkpoint=..., **options)`: it loads the run
and hands it to the first explainer in EXPLAINERS that accepts the model. Each explainer is
`(accepts(model) -> bool, explain(model, task, cfg, run_dir, out_dir, **options) -> (paths,
note))`; options it does not take are an error naming them (a CLI flag left unset is None and
not passed).

- leap_maps: LEAP's implicit attention A [h, t, t] and gate a [t, h] per layer for one text,
  drawn per layer and head as PNG, either as the pairwise line diagrams of the appendix of
  "Attention Is All You Need" (Vaswani et al. 2017) or as heatmaps.
- grid_maps: a grid model's (heptapod) 2D attention of one cell (--cell ROW,COL) over the grid,
  per layer and head, drawn over the task's first validation grid.
- kan_edges: the learned edge functions (spline + SiLU base) of a model's KANLinear layers
  (kat5, a stack with kan feed-forwards), the largest edges of each layer chosen by --layers.
"""

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from seqlab.errors import ConfigError
from seqlab.explain import grid_maps, kan_edges
from seqlab.explain.leap_maps import (
    check_explainable,
    explain_leap,
    focus_maps,
    render_focus_maps,
    token_labels,
)
from seqlab.train.runs import load_run

# (accepts(model), explain): the first explainer that accepts a run's model draws it. LEAP is
# last, so its one-line "explain needs a LEAP checkpoint" is the answer for a model no
# explainer takes.
EXPLAINERS: list[tuple[Callable[[Any], bool], Callable[..., tuple[list[Path], str | None]]]] = [
    (grid_maps.accepts, grid_maps.explain_grid),
    (kan_edges.accepts, kan_edges.explain_kan),
    (lambda model: True, explain_leap),
]


def explain_run(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    checkpoint: str = "best",
    **options,
) -> tuple[list[Path], str | None]:
    """PNG pictures of a run's checkpoint under out_dir (default run_dir/explain): what the
    model's explainer draws (see EXPLAINERS). Options set to None are dropped."""
    options = {k: v for k, v in options.items() if v is not None}
    model, task, cfg, _ = load_run(run_dir, checkpoint, "cpu")
    for accepts, explain in EXPLAINERS:
        if accepts(model):
            takes = [
                name
                for name, p in inspect.signature(explain).parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY
            ]
            unknown = sorted(k for k in options if k not in takes)
            if unknown:
                raise ConfigError(
                    f"explain for a {cfg.model.get('name')!r} run takes no {', '.join(unknown)}; "
                    f"it takes: {', '.join(takes)}"
                )
            return explain(
                model, task, cfg, Path(run_dir), None if out_dir is None else Path(out_dir), **options
            )
    raise ConfigError(f"no explainer draws a {cfg.model.get('name')!r} run")


__all__ = [
    "EXPLAINERS",
    "check_explainable",
    "explain_leap",
    "explain_run",
    "focus_maps",
    "render_focus_maps",
    "token_labels",
]
