"""LEAP focus maps: per layer and head, the token-by-token implicit attention and the gate, as PNG.

A LEAP layer averages K and V over the window of each token t with focus weights w_j. Its
implicit attention A[t, j] = w_j / S_t(1) is a distribution over the window of t (zero
outside), and the gate a_t = sigmoid(Q_t . Kbar_t / sqrt(d)) scales the row:
y_t = a_t * sum_j A[t, j] V_j. `focus_maps` reads both from
model.forward(..., return_maps=True) (ModelOutput.maps, one dict per layer) of a model whose
`supports_focus_maps` is true (every mixer reports its maps: LEAP's do; attention and
Fastformer's additive pooling do not); `render_focus_maps` draws one PNG per layer with one
panel per head:

- style "lines" (default), after the appendix of "Attention Is All You Need": the tokens in
  two columns, query t on the left and key j on the right, a line from t to j whose opacity
  and width grow with A[t, j]; the gate a_t as a number and a bar beside each query token.
- style "matrix": a heatmap of A (rows t, columns j) with the tokens on both axes and a strip
  of gate values beside the rows.

Matplotlib draws through the Agg canvas directly (no pyplot), so rendering never changes the
caller's backend or leaves figures open.

Shapes (batch element 0): attention [h, t, t], gate [t, h].
"""

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from seqlab.errors import ConfigError, DataError

STYLES = ("lines", "matrix")
DEFAULT_MAX_TOKENS = 64
LABEL_CHARS = 10  # longer tokens (BPE) are cut with an ellipsis
VISIBLE = {"\n": "↵", "\t": "⇥", " ": "␣"}
ROW_INCHES = 0.17  # height of one token row in the "lines" style
CELL_INCHES = 0.15  # side of one cell in the "matrix" style
DPI = 110


def check_explainable(model: torch.nn.Module, name: str | None = None) -> None:
    """Raise a one-line ConfigError unless `model` declares `supports_focus_maps` (LEAP)."""
    if not getattr(model, "supports_focus_maps", False):
        shown = f"{name!r} ({type(model).__name__})" if name else type(model).__name__
        raise ConfigError(
            f"explain needs a LEAP checkpoint, but the model is {shown}, whose layers report no "
            "focus maps; train one with `seqlab train --model leap`"
        )


@torch.no_grad()
def focus_maps(model: torch.nn.Module, input_ids: torch.Tensor) -> list[dict]:
    """Per layer: {"layer": i, "window": W or None (global), "attention": A [h, t, t],
    "gate": a [t, h]}, float32 CPU tensors of batch element 0, computed in eval mode."""
    check_explainable(model)
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    was_training = model.training
    model.eval()
    try:
        out = model(input_ids, return_maps=True)
    finally:
        model.train(was_training)
    return [
        {
            "layer": i,
            "window": block.mixer.window,
            "attention": layer["attention"][0].float().cpu(),
            "gate": layer["gate"][0].float().cpu(),
        }
        for i, (block, layer) in enumerate(zip(model.blocks, out.maps, strict=True))
    ]


def token_labels(tokenizer, ids: Sequence[int]) -> list[str]:
    """One printable label per token: whitespace made visible, long tokens cut."""
    labels = []
    for i in ids:
        text = "".join(VISIBLE.get(char, char) for char in tokenizer.decode([int(i)]))
        if len(text) > LABEL_CHARS:
            text = text[: LABEL_CHARS - 1] + "…"
        labels.append(text)
    return labels


def _select(requested: Sequence[int] | None, available: int, what: str) -> list[int]:
    if requested is None:
        return list(range(available))
    bad = [i for i in requested if not 0 <= i < available]
    if bad:
        raise ConfigError(f"{what} {bad} do not exist: the model has {what} 0..{available - 1}")
    return list(dict.fromkeys(requested))


def _window_name(window: int | None) -> str:
    return "global" if window is None else str(window)


def _draw_lines(ax, attention: np.ndarray, gate: np.ndarray, tokens: list[str], color, query, fontsize):
    """AIAYN-style pairwise diagram: queries left, keys right, line opacity/width ~ A[t, j]."""
    from matplotlib.collections import LineCollection
    from matplotlib.colors import to_rgb

    t = len(tokens)
    rows, cols = np.nonzero(attention > 2e-3)
    weight = attention[rows, cols]
    rgba = np.zeros((len(rows), 4))
    if query is None:
        rgba[:, :3] = to_rgb(color)
        rgba[:, 3] = np.clip(weight, 0.0, 1.0)
        widths = 0.3 + 2.2 * weight
        order = np.argsort(weight)  # strongest lines drawn last, on top
    else:
        # The chosen row scaled to its own maximum (a global row spreads over t keys); the other
        # rows stay as a faint gray context.
        chosen = rows == query
        rgba[:, :3] = 0.6
        rgba[:, 3] = 0.12 * np.clip(weight, 0.0, 1.0)
        rgba[chosen, :3] = to_rgb(color)
        rgba[chosen, 3] = weight[chosen] / weight[chosen].max()
        widths = np.where(chosen, 0.6 + 2.4 * rgba[:, 3], 0.3)
        order = np.argsort(chosen, kind="stable")
    segments = np.stack([np.zeros(len(rows)), rows, np.ones(len(rows)), cols], axis=1).reshape(-1, 2, 2)
    ax.add_collection(LineCollection(segments[order], colors=rgba[order], linewidths=widths[order]))

    bar_left, bar_width = -0.52, 0.3
    for i, label in enumerate(tokens):
        bold = "bold" if i == query else "normal"
        ax.text(-0.04, i, label, ha="right", va="center", fontsize=fontsize, weight=bold, family="monospace")
        ax.text(1.04, i, label, ha="left", va="center", fontsize=fontsize, family="monospace")
        ax.text(-0.86, i, f"{gate[i]:.2f}", ha="left", va="center", fontsize=fontsize * 0.85, color="0.25")
        ax.barh(i, bar_width, left=bar_left, height=0.6, color="0.9", linewidth=0)
        ax.barh(i, bar_width * gate[i], left=bar_left, height=0.6, color="0.35", linewidth=0)
    header = dict(ha="center", va="bottom", fontsize=fontsize * 0.9, color="0.3", style="italic")
    ax.text(bar_left + bar_width / 2, -1.0, "a_t", **header)
    ax.text(-0.04, -1.0, "query t", **{**header, "ha": "right"})
    ax.text(1.04, -1.0, "key j", **{**header, "ha": "left"})
    ax.set_xlim(-0.88, 1.4)
    ax.set_ylim(t - 0.4, -1.9)
    ax.axis("off")


def _draw_matrix(ax, gate_ax, attention, gate, tokens, query, fontsize):
    """Heatmap of A (rows t, columns j, sqrt color scale) and a gate strip beside the rows."""
    from matplotlib.colors import PowerNorm
    from matplotlib.patches import Rectangle

    t = len(tokens)
    # sqrt scale: a global row spreads over up to t keys, so linear colors would hide it.
    # aspect "auto" keeps the heatmap and its gate strip the same height; the figure size
    # makes the cells square.
    image = ax.imshow(attention, cmap="Blues", norm=PowerNorm(0.5, vmin=0.0, vmax=1.0), aspect="auto")
    rotation = 0 if max(len(label) for label in tokens) <= 2 else 90  # chars read best upright
    ax.set_xticks(range(t), tokens, rotation=rotation, fontsize=fontsize, family="monospace")
    ax.set_yticks(range(t), tokens, fontsize=fontsize, family="monospace")
    ax.tick_params(length=0, pad=1.5)
    ax.set_xlabel("key j", fontsize=fontsize + 2)
    ax.set_ylabel("query t", fontsize=fontsize + 2)
    if query is not None:
        ax.add_patch(Rectangle((-0.5, query - 0.5), t, 1, fill=False, edgecolor="crimson", linewidth=1.2))
    gate_image = gate_ax.imshow(gate[:, None], cmap="Oranges", vmin=0.0, vmax=1.0, aspect="auto")
    gate_ax.set_xticks([0], ["a_t"], fontsize=fontsize)
    gate_ax.set_yticks([])
    gate_ax.set_ylim(ax.get_ylim())
    gate_ax.tick_params(length=0)
    return image, gate_image


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _render_lines(layer, heads, tokens, query, head_colors):
    t = len(tokens)
    fontsize = 8.0 if t <= 48 else 7.0
    ncols = min(len(heads), 4)
    nrows = math.ceil(len(heads) / ncols)
    fig = _figure(max(3.2 * ncols, 4.5), nrows * ROW_INCHES * (t + 2.5) + 1.0)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, head in zip(axes, heads):
        _draw_lines(
            ax,
            layer["attention"][head].numpy(),
            layer["gate"][:, head].numpy(),
            tokens,
            head_colors(head % 10),
            query,
            fontsize,
        )
        ax.set_title(f"head {head}", fontsize=fontsize + 2)
    for ax in axes[len(heads) :]:
        ax.axis("off")
    return fig


def _render_matrix(layer, heads, tokens, query):
    t = len(tokens)
    fontsize = 8.0 if t <= 48 else 7.0
    ncols = min(len(heads), 2 if t > 24 else 4)
    nrows = math.ceil(len(heads) / ncols)
    side = CELL_INCHES * t + 0.9  # cells plus the token labels
    fig = _figure(ncols * (side + 0.5) + 0.9, nrows * (side + 0.3) + 0.9)
    grid = fig.add_gridspec(nrows, 2 * ncols, width_ratios=[t, 1.2] * ncols)
    images = []
    for k, head in enumerate(heads):
        r, c = divmod(k, ncols)
        ax = fig.add_subplot(grid[r, 2 * c])
        gate_ax = fig.add_subplot(grid[r, 2 * c + 1])
        images = _draw_matrix(
            ax,
            gate_ax,
            layer["attention"][head].numpy(),
            layer["gate"][:, head].numpy(),
            tokens,
            query,
            fontsize,
        )
        ax.set_title(f"head {head}", fontsize=fontsize + 3)
    attention_image, gate_image = images
    axes = fig.axes
    fig.colorbar(attention_image, ax=axes, shrink=0.4, pad=0.01, label="A[t, j] (sqrt scale)")
    fig.colorbar(gate_image, ax=axes, shrink=0.4, pad=0.01, label="gate a_t")
    return fig


def render_focus_maps(
    maps: list[dict],
    tokens: list[str],
    out_dir: str | Path,
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    style: str = "lines",
    query: int | None = None,
    title: str | None = None,
    note: str | None = None,
) -> list[Path]:
    """Write one PNG per layer (one panel per head) under out_dir; returns the paths.

    maps: `focus_maps` output. tokens: one label per position (`token_labels`). query: a
    position (negative counts from the end) whose row is highlighted. title and note: extra
    lines under each figure's heading (e.g. the text, a truncation notice).
    """
    import matplotlib

    if style not in STYLES:
        raise ConfigError(f"unknown style {style!r}; choose one of: {', '.join(STYLES)}")
    if not maps:
        raise ConfigError("no focus maps to render: the model has no layers")
    num_heads, t, _ = maps[0]["attention"].shape
    if len(tokens) != t:
        raise ConfigError(f"got {len(tokens)} token labels for maps over {t} positions; pass one per token")
    if query is not None:
        if not -t <= query < t:
            raise ConfigError(
                f"query {query} is outside the {t} tokens shown (use 0..{t - 1} or -1 for the last)"
            )
        query %= t
    layer_ids = _select(layers, len(maps), "layers")
    head_ids = _select(heads, num_heads, "heads")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    head_colors = matplotlib.colormaps["tab10"]
    suffix = f"_query{query}" if query is not None else ""
    paths = []
    for i in layer_ids:
        layer = maps[i]
        if style == "lines":
            fig = _render_lines(layer, head_ids, tokens, query, head_colors)
            legend = "lines t → j: focus A[t, j] · bars: gate a_t"
        else:
            fig = _render_matrix(layer, head_ids, tokens, query)
            legend = "cells: focus A[t, j] · strip: gate a_t"
        heading = f"LEAP layer {layer['layer']} · window {_window_name(layer['window'])}"
        lines = [heading, legend] + [line for line in (title, note) if line]
        fig.suptitle("\n".join(lines), fontsize=10)
        path = out_dir / f"layer{layer['layer']}_{style}{suffix}.png"
        fig.savefig(path)
        paths.append(path)
    return paths


def _shown_text(text: str, limit: int = 90) -> str:
    shown = text.replace("\n", VISIBLE["\n"]).replace("\t", VISIBLE["\t"])
    return shown if len(shown) <= limit else "…" + shown[-(limit - 1) :]


def explain_leap(
    model: torch.nn.Module,
    task,
    cfg,
    run_dir: Path,
    out_dir: Path | None = None,
    *,
    text: str | None = None,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    style: str = "lines",
    query: int | None = None,
    max_tokens: int | None = None,
) -> tuple[list[Path], str | None]:
    """Focus maps of a loaded LEAP run on `text`, as PNG under out_dir (default run_dir/explain).
    Texts longer than max_tokens (default min(64, max_seq_len)) keep their last max_tokens
    tokens. Returns (paths, note): note says what was cut, or None."""
    check_explainable(model, cfg.model.get("name"))
    if text is None:
        raise ConfigError("explain needs the text to explain for a LEAP run: pass --text 'ROMEO: hello'")
    if style not in STYLES:
        raise ConfigError(f"unknown style {style!r}; choose one of: {', '.join(STYLES)}")
    max_seq_len = model.max_seq_len
    if max_tokens is None:
        max_tokens = min(DEFAULT_MAX_TOKENS, max_seq_len)
    elif not 1 <= max_tokens <= max_seq_len:
        raise ConfigError(
            f"max_tokens must be in 1..{max_seq_len} (the model's max_seq_len), got {max_tokens}"
        )
    ids = task.tokenizer.encode(text)
    if not ids:
        raise DataError("the text to explain is empty; pass some text, e.g. --text 'ROMEO: hello'")
    note = None
    if len(ids) > max_tokens:
        note = f"(showing the last {max_tokens} of {len(ids)} tokens)"
        ids = ids[-max_tokens:]
    maps = focus_maps(model, torch.tensor([ids]))
    tokens = token_labels(task.tokenizer, ids)
    out_dir = Path(run_dir) / "explain" if out_dir is None else Path(out_dir)
    title = f'"{_shown_text(task.tokenizer.decode(ids))}"'
    paths = render_focus_maps(
        maps, tokens, out_dir, layers=layers, heads=heads, style=style, query=query, title=title, note=note
    )
    return paths, note


__all__ = [
    "DEFAULT_MAX_TOKENS",
    "STYLES",
    "check_explainable",
    "explain_leap",
    "focus_maps",
    "render_focus_maps",
    "token_labels",
]
