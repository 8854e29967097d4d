"""2D attention neighbourhoods of a grid model (heptapod), as PNG: where one cell looks, per head.

For a chosen query cell (default the centre of the grid) and each block application (layer l
of the unrolled stack: pass p of `iterations`, block b of num_layers), the attention weights of
that cell over every cell of the grid, one panel per head, drawn over the grid (each cell
labelled with its token id when the grid is small: the condition's for a grid-to-grid model),
the query cell outlined in red and its local window (shifted inward at the borders) dashed.
The first panels show the input grid (and the condition grid of a grid-to-grid model).

The weights come from model.forward(..., return_maps=True): ModelOutput.maps holds one dict per
block application with "attention" [b, h, gy, gx, gy, gx] (query cell, key cell) and "window".
The input is the task's first validation example, `task.example_grid(split="val")` ->
(tokens [gy, gx], condition [gy, gx] or None).

Matplotlib draws through the Agg canvas directly (no pyplot), so rendering never changes the
caller's backend or leaves figures open.
"""

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from seqlab.errors import ConfigError
from seqlab.ops.local2d import window_starts

DPI = 110
PANEL_INCHES = 2.6
MAX_LABELLED_CELLS = 400  # token ids written in the cells up to 20 x 20


def accepts(model: torch.nn.Module) -> bool:
    return bool(getattr(model, "grid_model", False))


@torch.no_grad()
def grid_attention(
    model: torch.nn.Module, grid: torch.Tensor, condition: torch.Tensor | None, cell: tuple[int, int]
) -> list[dict]:
    """Per block application: {"layer": l, "window": k or None, "weights": [h, gy, gx]} of the
    query `cell` over the grid (fp32, CPU), computed in eval mode."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        out = model(
            grid[None].to(device),
            condition=None if condition is None else condition[None].to(device),
            return_maps=True,
        )
    finally:
        model.train(was_training)
    row, col = cell
    return [
        {"layer": i, "window": entry["window"], "weights": entry["attention"][0, :, row, col].float().cpu()}
        for i, entry in enumerate(out.maps)
    ]


def _pick(indices: Sequence[int] | None, count: int, what: str) -> list[int]:
    if indices is None:
        return list(range(count))
    bad = [i for i in indices if not 0 <= i < count]
    if bad or not indices:
        raise ConfigError(f"--{what} must be indices in 0..{count - 1}, got {list(indices)}")
    return list(indices)


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _label_cells(ax, tokens: np.ndarray, color: str) -> None:
    if tokens.size > MAX_LABELLED_CELLS:
        return
    fontsize = 7 if max(tokens.shape) <= 12 else 5
    for (i, j), token in np.ndenumerate(tokens):
        ax.text(j, i, str(token), ha="center", va="center", fontsize=fontsize, color=color)


def _draw_tokens(ax, tokens: np.ndarray, title: str) -> None:
    ax.imshow(tokens, cmap="tab20", interpolation="nearest", vmin=0, vmax=max(19, int(tokens.max())))
    _label_cells(ax, tokens, "black")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def _draw_weights(ax, weights: np.ndarray, tokens: np.ndarray, cell, window: int | None, title: str) -> None:
    from matplotlib.colors import PowerNorm
    from matplotlib.patches import Rectangle

    gy, gx = weights.shape
    # sqrt scale: a global layer spreads over every cell, so linear colors would hide it.
    ax.imshow(weights, cmap="magma", norm=PowerNorm(0.5, vmin=0.0, vmax=max(float(weights.max()), 1e-9)))
    _label_cells(ax, tokens, "0.6")
    row, col = cell
    if window is not None:
        (sy, ky), (sx, kx) = window_starts(gy, window), window_starts(gx, window)
        y0, x0 = int(sy[row]), int(sx[col])
        ax.add_patch(
            Rectangle(
                (x0 - 0.5, y0 - 0.5), kx, ky, fill=False, edgecolor="cyan", linewidth=1.2, linestyle="--"
            )
        )
    ax.add_patch(Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5))
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def render_grid_maps(
    maps: list[dict],
    grid: torch.Tensor,
    condition: torch.Tensor | None,
    cell: tuple[int, int],
    out_dir: Path,
    *,
    heads: Sequence[int],
    num_layers: int,
) -> list[Path]:
    """One PNG per entry of `maps` (layer_<l>.png): the input grid(s), then one panel per head."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tokens = grid.numpy()
    # A grid-to-grid model's grid is mostly MASK: its weights are labelled with the condition.
    labels = condition.numpy() if condition is not None else tokens
    inputs = [("input grid", tokens)] + ([("condition", condition.numpy())] if condition is not None else [])
    panels = len(inputs) + len(heads)
    ncols = min(panels, 4)
    nrows = math.ceil(panels / ncols)
    paths = []
    for entry in maps:
        layer = entry["layer"]
        fig = _figure(PANEL_INCHES * ncols, PANEL_INCHES * nrows + 0.4)
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax, (title, shown) in zip(axes, inputs):
            _draw_tokens(ax, shown, title)
        for ax, head in zip(axes[len(inputs) :], heads):
            _draw_weights(ax, entry["weights"][head].numpy(), labels, cell, entry["window"], f"head {head}")
        for ax in axes[panels:]:
            ax.axis("off")
        kind = "global" if entry["window"] is None else f"window {entry['window']}"
        p, b = divmod(layer, num_layers)
        fig.suptitle(f"layer {layer} (pass {p}, block {b}, {kind}): attention of cell {cell}", fontsize=10)
        path = out_dir / f"layer_{layer}.png"
        fig.savefig(path)
        paths.append(path)
    return paths


def explain_grid(
    model: torch.nn.Module,
    task,
    cfg,
    run_dir: Path,
    out_dir: Path | None = None,
    *,
    cell: Sequence[int] | None = None,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
) -> tuple[list[Path], str | None]:
    """The attention of one cell (ROW, COL; default the centre) of the run's first validation
    grid, per layer and head, as PNG under out_dir (default run_dir/explain)."""
    if not hasattr(task, "example_grid"):
        raise ConfigError(f"explain for a grid model needs a grid task, but the run's task is {task.name!r}")
    grid, condition = task.example_grid(split="val")
    gy, gx = grid.shape
    if cell is None:
        cell = (gy // 2, gx // 2)
    if len(cell) != 2 or not (0 <= cell[0] < gy and 0 <= cell[1] < gx):
        raise ConfigError(
            f"--cell must be ROW,COL inside the {gy}x{gx} grid (0-based), got {','.join(map(str, cell))}"
        )
    cell = (int(cell[0]), int(cell[1]))
    maps = grid_attention(model, grid, condition, cell)
    chosen = _pick(layers, len(maps), "layers")
    heads = _pick(heads, maps[0]["weights"].shape[0], "heads")
    out_dir = Path(run_dir) / "explain" if out_dir is None else Path(out_dir)
    paths = render_grid_maps(
        [maps[i] for i in chosen], grid, condition, cell, out_dir, heads=heads, num_layers=len(model.blocks)
    )
    return paths, None


__all__ = ["accepts", "explain_grid", "grid_attention", "render_grid_maps"]
