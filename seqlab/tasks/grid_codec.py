"""Token layouts of the grid tasks: cells as token ids, 2D canvases, raster sequences.

One id space for every model kind. Cell value v is token CELL0 + v; below it six specials:

    PAD 0   no cell (outside a grid; ignored by the loss)      MASK 1  a hidden cell (masked modeling)
    BOS 2   start of a raster sequence                         SEP 3   raster grid2grid: input | output
    NL  4   end of a row (raster rows; canvas size marker)     EOS 5   end of the grid (raster; canvas marker)

so vocab_size = 6 + num_values.

2D models read grids as they are ([b, gy, gx]); a batch pads to its largest grid with PAD and
a padding mask (True = a cell). For grid2grid every grid sits at the top left of a fixed canvas
[cy, cx] (the data's largest grid) with a size marker, as HRM and TRM do: NL in the column right
of each row, EOS in the row below the grid (and its corner), PAD beyond; a grid that touches the
canvas border has no marker there. So a model that fills the whole canvas also says the
output's size (`crop_canvas` reads it back).

1D causal LMs read a grid in raster order, each row followed by NL:

    grid:       BOS r0 NL r1 NL ... r_last NL                  (NL given, cells predicted)
    grid2grid:  BOS input rows (each + NL) SEP output rows (each + NL) EOS
                (the output part predicted: its cells, NLs and EOS, which fix its size)

A causal 2D model (raster objective) reads the grid shifted by one cell in the grid's own raster
order (`shift_raster`: BOS first), so cell i is predicted from the cells before it.
"""

from __future__ import annotations

import numpy as np
import torch

PAD, MASK, BOS, SEP, NL, EOS = range(6)
CELL0 = 6
SPECIAL_NAMES = ("PAD", "MASK", "BOS", "SEP", "NL", "EOS")


def vocab_size(num_values: int) -> int:
    return CELL0 + num_values


def cells(grid: np.ndarray) -> np.ndarray:
    """Cell values -> token ids."""
    return np.asarray(grid, dtype=np.int64) + CELL0


def pad_stack(grids: list[np.ndarray], shape: tuple[int, int] | None = None, fill: int = PAD) -> np.ndarray:
    """Token grids [gy_i, gx_i] at the top left of one [b, gy, gx] array (shape: the largest)."""
    gy = shape[0] if shape else max(g.shape[0] for g in grids)
    gx = shape[1] if shape else max(g.shape[1] for g in grids)
    out = np.full((len(grids), gy, gx), fill, dtype=np.int64)
    for i, g in enumerate(grids):
        out[i, : g.shape[0], : g.shape[1]] = g
    return out


def canvas(grid: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Cell values [gy, gx] -> a token canvas `shape` with its size marker (module docstring)."""
    gy, gx = grid.shape
    cy, cx = shape
    out = np.full(shape, PAD, dtype=np.int64)
    out[:gy, :gx] = cells(grid)
    if gx < cx:
        out[:gy, gx] = NL
    if gy < cy:
        out[gy, : min(gx + 1, cx)] = EOS
    return out


def crop_canvas(tokens: np.ndarray) -> np.ndarray:
    """A predicted token canvas -> the grid of cell values it states: width = the first non-cell
    token of row 0, height = the first non-cell token of column 0 (a token that is not a cell
    inside that box becomes -1, which matches no cell)."""
    is_cell = tokens >= CELL0
    gx = int(np.argmin(is_cell[0])) if not is_cell[0].all() else tokens.shape[1]
    gy = int(np.argmin(is_cell[:, 0])) if not is_cell[:, 0].all() else tokens.shape[0]
    box = tokens[:gy, :gx]
    return np.where(box >= CELL0, box - CELL0, -1)


def raster(grid: np.ndarray) -> np.ndarray:
    """Cell values [gy, gx] -> token ids of its rows, each followed by NL: [gy * (gx + 1)]."""
    rows = np.concatenate([cells(grid), np.full((grid.shape[0], 1), NL)], axis=1)
    return rows.reshape(-1)


def raster_grid_sequence(grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) of the grid task for a 1D LM: targets are the next tokens, with the
    given structure (NL) ignored (-100), so the loss is over cells only."""
    seq = np.concatenate([[BOS], raster(grid)])
    targets = seq[1:].copy()
    targets[targets < CELL0] = -100
    return seq[:-1], targets


def raster_pair_prefix(inp: np.ndarray) -> np.ndarray:
    """BOS, the input's rows (each + NL), SEP: what a 1D LM reads before it writes the output."""
    return np.concatenate([[BOS], raster(inp), [SEP]])


def raster_pair_sequence(inp: np.ndarray, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) of grid2grid for a 1D LM: the loss covers the output part only."""
    prefix = raster_pair_prefix(inp)
    seq = np.concatenate([prefix, raster(out), [EOS]])
    targets = seq[1:].copy()
    targets[: len(prefix) - 1] = -100
    return seq[:-1], targets


def raster_pair_length(shape_in: tuple[int, int], shape_out: tuple[int, int]) -> int:
    """Length of raster_pair_sequence's inputs."""
    return 1 + shape_in[0] * (shape_in[1] + 1) + 1 + shape_out[0] * (shape_out[1] + 1)


def parse_raster(tokens: list[int]) -> list[list[int]]:
    """Generated output tokens (after SEP) -> rows of cell values, up to EOS (or the end); a
    token that is neither a cell, NL nor EOS becomes -1."""
    rows, row = [], []
    for tok in tokens:
        if tok == EOS:
            break
        if tok == NL:
            rows.append(row)
            row = []
        else:
            row.append(tok - CELL0 if tok >= CELL0 else -1)
    if row:
        rows.append(row)
    return rows


def shift_raster(tokens: np.ndarray) -> np.ndarray:
    """A token grid [gy, gx] shifted by one cell in raster order, BOS first: what a causal 2D
    model reads to predict `tokens`."""
    flat = tokens.reshape(-1)
    return np.concatenate([[BOS], flat[:-1]]).reshape(tokens.shape)


def pad_sequences(seqs: list[np.ndarray], fill: int) -> np.ndarray:
    """Right-pad 1D arrays to one [b, t] array."""
    out = np.full((len(seqs), max(len(s) for s in seqs)), fill, dtype=np.int64)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out


def compare(pred: np.ndarray | list[list[int]], target: np.ndarray) -> tuple[bool, int]:
    """(exact match, cells right) of a predicted grid (an array or ragged rows) against the
    target grid: exact = same shape and every cell; cells right counts the target's cells the
    prediction has equal at the same (row, col)."""
    rows = [list(r) for r in (pred.tolist() if isinstance(pred, np.ndarray) else pred)]
    gy, gx = target.shape
    right = 0
    for y in range(min(gy, len(rows))):
        n = min(gx, len(rows[y]))
        right += int((np.asarray(rows[y][:n]) == target[y, :n]).sum())
    exact = len(rows) == gy and all(len(r) == gx for r in rows) and right == gy * gx
    return exact, right


def to_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64))


__all__ = [
    "BOS",
    "CELL0",
    "EOS",
    "MASK",
    "NL",
    "PAD",
    "SEP",
    "canvas",
    "cells",
    "compare",
    "crop_canvas",
    "pad_sequences",
    "pad_stack",
    "parse_raster",
    "raster",
    "raster_grid_sequence",
    "raster_pair_length",
    "raster_pair_prefix",
    "raster_pair_sequence",
    "shift_raster",
    "vocab_size",
]
