"""KAN edge functions: the learned 1-D function of each (input -> output) edge of a KANLinear,
as PNG (the KAN paper's way of reading a trained KAN; for kat5 and any model with KANLinear
layers, seed 004).

A KANLinear edge computes phi_oi(x) = scale_oi sum_j C_oij B_j(x) + w_base_oi silu(x) (see
seqlab.layers.kan). `edge_curves` evaluates both branches on a line of inputs spanning the
layer's grid (each input's own knots t_0 .. t_{G+2k}, a little beyond, for the bspline basis;
grid_range widened by a quarter for the truncated-power basis) and picks the `edges` largest
edges by mean |phi| over that line; `render_edges` draws one panel per edge: phi (solid), its
spline branch (dashed) and base branch (dotted), the interior knots as ticks on the x axis.
`explain_kan` writes one PNG per chosen KANLinear layer, numbered in module order (the
layer's module name in the title); --layers picks them (default all).

Matplotlib draws through the Agg canvas directly (no pyplot). Shapes: curves [p, out, in]
over p input points.
"""

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from seqlab.errors import ConfigError
from seqlab.layers.kan import KANLinear

DEFAULT_EDGES = 16
POINTS = 200
DPI = 110


def accepts(model: torch.nn.Module) -> bool:
    return any(isinstance(m, KANLinear) for m in model.modules())


def kan_layers(model: torch.nn.Module) -> list[tuple[str, KANLinear]]:
    """(module name, layer) of every KANLinear, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, KANLinear)]


@torch.no_grad()
def edge_curves(layer: KANLinear, points: int = POINTS, edges: int = DEFAULT_EDGES) -> dict:
    """{"x": [p, in] inputs, "spline", "base": [p, out, in] the two branches, "edges": [(o, i)]
    the `edges` largest by mean |phi|, "knots": [in, K] interior knots}, float32 CPU."""
    if layer.basis == "bspline":
        grid = layer.grid.float().cpu()
        lo, hi = grid[:, 0], grid[:, -1]
        knots = grid[:, layer.spline_order : grid.shape[1] - layer.spline_order]
    else:
        a, b = layer.grid_range
        lo = torch.full((layer.in_features,), a - (b - a) / 8)
        hi = torch.full((layer.in_features,), b + (b - a) / 8)
        knots = layer.knots.detach().float().cpu()
    margin = (hi - lo) / 20
    steps = torch.linspace(0, 1, points).unsqueeze(-1)
    x = (lo - margin) + steps * (hi - lo + 2 * margin)  # [p, in]
    device = layer.base_weight.device
    spline, base = layer.edge_functions(x.to(device))
    spline, base = spline.float().cpu(), base.float().cpu()
    size = (spline + base).abs().mean(0)  # [out, in]
    count = min(edges, size.numel())
    order = size.flatten().argsort(descending=True)[:count]
    picked = [(int(k) // layer.in_features, int(k) % layer.in_features) for k in order]
    return {"x": x, "spline": spline, "base": base, "edges": picked, "knots": knots, "size": size}


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def render_edges(curves: dict, path: Path, title: str) -> Path:
    """One PNG: a panel per picked edge, phi = spline + base with both branches."""
    picked = curves["edges"]
    columns = min(4, len(picked))
    rows = math.ceil(len(picked) / columns)
    fig = _figure(3.0 * columns, 2.3 * rows + 0.6)
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat[len(picked) :]:
        ax.set_visible(False)
    for ax, (o, i) in zip(axes.flat, picked, strict=False):
        x = curves["x"][:, i].numpy()
        spline = curves["spline"][:, o, i].numpy()
        base = curves["base"][:, o, i].numpy()
        ax.plot(x, spline + base, color="black", linewidth=1.8, label="phi = spline + base")
        ax.plot(x, spline, color="tab:blue", linestyle="--", linewidth=1.1, label="spline")
        ax.plot(x, base, color="tab:orange", linestyle=":", linewidth=1.3, label="base (silu)")
        for knot in curves["knots"][i].tolist():
            ax.axvline(knot, color="0.85", linewidth=0.6, zorder=0)
        ax.axhline(0, color="0.7", linewidth=0.6, zorder=0)
        ax.set_title(f"in {i} → out {o}  (mean |phi| {curves['size'][o, i]:.3g})", fontsize=8)
        ax.tick_params(labelsize=7)
    axes.flat[0].legend(fontsize=6, loc="best")
    fig.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _select(requested: Sequence[int] | None, available: int) -> list[int]:
    if requested is None:
        return list(range(available))
    bad = [i for i in requested if not 0 <= i < available]
    if bad:
        raise ConfigError(
            f"--layers {','.join(map(str, bad))} out of range: the model has {available} KANLinear "
            f"layers (0..{available - 1})"
        )
    return list(requested)


def explain_kan(
    model: torch.nn.Module,
    task,
    cfg,
    run_dir: Path,
    out_dir: Path | None = None,
    *,
    layers: Sequence[int] | None = None,
    edges: int = DEFAULT_EDGES,
) -> tuple[list[Path], str | None]:
    """Edge-function PNGs of the run's KANLinear layers under out_dir (default run_dir/explain):
    one per layer in `layers` (KANLinear indices in module order, default all), the `edges`
    largest edges each."""
    found = kan_layers(model)
    if not found:
        raise ConfigError("explain for KAN edges needs a model with KANLinear layers (e.g. kat5)")
    if edges < 1:
        raise ConfigError(f"edges must be >= 1, got {edges}")
    out_dir = Path(run_dir) / "explain" if out_dir is None else Path(out_dir)
    name = cfg.model.get("name") if cfg is not None else type(model).__name__
    paths = []
    for index in _select(layers, len(found)):
        module_name, layer = found[index]
        curves = edge_curves(layer, edges=edges)
        title = (
            f"{name} KANLinear {index} ({module_name}): {layer.in_features} -> {layer.out_features}, "
            f"G={layer.grid_size}, k={layer.spline_order}, basis {layer.basis}; "
            f"top {len(curves['edges'])} edges by mean |phi|"
        )
        paths.append(render_edges(curves, out_dir / f"kan_layer{index}.png", title))
    return paths, None


__all__ = ["DEFAULT_EDGES", "accepts", "edge_curves", "explain_kan", "kan_layers", "render_edges"]
