"""Grids as text and as PNG pictures: ARC's palette for colour grids, grey levels for digits,
maze colours, characters for text grids.

A grid here is cell values [gy, gx] (numpy ints, -1 = not a cell: an invalid prediction) or
ragged rows (a raster LM's output that is not rectangular). `grids_text` writes one character
per cell (the data's cell_chars, '?' for -1); `save_grid_png` draws panels of grids side by
side (one row of panels per example) with matplotlib's Agg canvas.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# The ARC-AGI palette (the colours of the official viewer), values 0..9.
ARC_PALETTE = (
    "#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00",
    "#AAAAAA", "#F012BE", "#FF851B", "#7FDBFF", "#870C25",
)  # fmt: skip
# wall, free, start, goal, path
MAZE_PALETTE = ("#222222", "#FFFFFF", "#2ECC40", "#FF4136", "#0074D9")
INVALID = "#FF00FF"


def as_rows(grid) -> list[list[int]]:
    return [list(map(int, r)) for r in (grid.tolist() if isinstance(grid, np.ndarray) else grid)]


def grid_text(grid, chars: str) -> list[str]:
    """One line per row, one character per cell ('?' for a value that is not a cell)."""
    return ["".join(chars[v] if 0 <= v < len(chars) else "?" for v in row) for row in as_rows(grid)]


def panels_text(rows: list[list], titles: list[str], chars: str, gap: str = "   ") -> str:
    """Examples one under the other, each example's grids side by side under their titles."""
    blocks = []
    for panel_grids in rows:
        texts = [grid_text(g, chars) for g in panel_grids]
        widths = [max([len(t) for t in lines] + [len(title)]) for lines, title in zip(texts, titles)]
        height = max(len(lines) for lines in texts)
        out = [gap.join(title.ljust(w) for title, w in zip(titles, widths)).rstrip()]
        for y in range(height):
            cells = [(lines[y] if y < len(lines) else "").ljust(w) for lines, w in zip(texts, widths)]
            out.append(gap.join(cells).rstrip())
        blocks.append("\n".join(out))
    return "\n\n".join(blocks)


def _colours(style: str, num_values: int) -> list[tuple[float, float, float]]:
    from matplotlib.colors import to_rgb

    if style == "colour":
        return [to_rgb(c) for c in ARC_PALETTE[:num_values]]
    if style == "maze":
        return [to_rgb(c) for c in MAZE_PALETTE[:num_values]]
    # grey levels (digits: 0 = white paper, the top level = black ink); text: a light ground
    top = max(num_values - 1, 1)
    return (
        [(1 - v / top,) * 3 for v in range(num_values)]
        if style == "grey"
        else [(0.97, 0.97, 0.94)] * num_values
    )


def _image(grid, colours) -> np.ndarray:
    rows = as_rows(grid)
    gy, gx = len(rows), max([len(r) for r in rows] + [1])
    from matplotlib.colors import to_rgb

    img = np.ones((max(gy, 1), gx, 3))
    bad = to_rgb(INVALID)
    for y, row in enumerate(rows):
        for x, v in enumerate(row):
            img[y, x] = colours[v] if 0 <= v < len(colours) else bad
    return img


def save_grid_png(
    path: Path,
    rows: list[list],
    titles: list[str],
    *,
    style: str,
    num_values: int,
    chars: str,
    heading: str = "",
) -> Path:
    """Draw `rows` (examples; each a list of grids, one per title) into a PNG at `path`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    colours = _colours(style, num_values)
    n_rows, n_cols = len(rows), len(titles)
    shapes = [(len(as_rows(g)), max([len(r) for r in as_rows(g)] + [1])) for r in rows for g in r]
    gy, gx = max(s[0] for s in shapes), max(s[1] for s in shapes)
    # Text needs room for a glyph per cell; other grids fit a panel of about 2 inches.
    cell = 0.14 if style == "text" else min(0.25, 2.0 / max(gy, gx))
    width = max(n_cols * (gx * cell + 0.3), 0.09 * len(heading), 2.0)
    fig = Figure(figsize=(width, n_rows * (gy * cell + 0.4) + 0.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for i, panel_grids in enumerate(rows):
        for j, grid in enumerate(panel_grids):
            ax = axes[i][j]
            ax.imshow(_image(grid, colours), interpolation="nearest")
            if style == "text":
                for y, row in enumerate(as_rows(grid)):
                    for x, v in enumerate(row):
                        ch = chars[v] if 0 <= v < len(chars) else "?"
                        if ch != " ":
                            ax.text(x, y, ch, ha="center", va="center", fontsize=7, family="monospace")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(titles[j], fontsize=9)
    if heading:
        fig.suptitle(heading, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


__all__ = ["ARC_PALETTE", "MAZE_PALETTE", "grid_text", "panels_text", "save_grid_png"]
