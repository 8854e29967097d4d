"""Axial 2D rotary positions: q(i, j) . k(i', j') depends only on (i - i', j - j'); it is a
rotation of q and k (norm-preserving, zero stays zero: not an additive angle, HeptapodLM's
defect 2); half the pairs follow the row, half the column; non-square grids."""

import pytest
import torch

from seqlab.layers.rotary import apply_rotary
from seqlab.layers.rotary2d import Rotary2D

D = 16


def rotated(rotary, gy, gx, x):
    """x [d] placed at every cell of a gy x gx grid and rotated: [gy, gx, d]."""
    cos, sin = rotary(gy, gx)  # [1, 1, gy*gx, d]
    return apply_rotary(x.expand(gy * gx, D), cos[0, 0], sin[0, 0]).reshape(gy, gx, D)


def test_scores_depend_only_on_the_offset_between_cells():
    torch.manual_seed(0)
    rotary = Rotary2D(D, max_grid=16)
    q, k = torch.randn(D), torch.randn(D)
    gy, gx = 9, 13  # non-square
    rq, rk = rotated(rotary, gy, gx, q), rotated(rotary, gy, gx, k)
    scores = torch.einsum("ijd,abd->ijab", rq, rk)
    for (i, j, a, b), (dy, dx) in [((0, 0, 2, 5), (3, 4)), ((4, 7, 1, 1), (2, -1)), ((8, 12, 8, 0), (-5, 0))]:
        torch.testing.assert_close(
            scores[i + dy, j + dx, a + dy, b + dx], scores[i, j, a, b], rtol=1e-5, atol=1e-5
        )
    # ... and they do depend on the offset, in both axes.
    assert (scores[0, 0, 0, 1] - scores[0, 0, 0, 2]).abs() > 1e-3
    assert (scores[0, 0, 1, 0] - scores[0, 0, 2, 0]).abs() > 1e-3


def test_it_is_a_rotation_of_q_and_k_not_an_added_angle():
    rotary = Rotary2D(D, max_grid=8)
    x = torch.randn(D)
    r = rotated(rotary, 5, 7, x)
    torch.testing.assert_close(r.norm(dim=-1), x.norm().expand(5, 7), rtol=1e-5, atol=1e-5)
    assert torch.count_nonzero(rotated(rotary, 5, 7, torch.zeros(D))) == 0
    torch.testing.assert_close(r[0, 0], x)  # the origin is not rotated


def test_the_first_half_of_the_pairs_follows_the_row_and_the_second_the_column():
    rotary = Rotary2D(D, max_grid=8)
    x = torch.randn(D)
    r = rotated(rotary, 6, 6, x)
    quarter = D // 4
    row_pairs = torch.cat((r[..., :quarter], r[..., D // 2 : D // 2 + quarter]), dim=-1)
    col_pairs = torch.cat((r[..., quarter : D // 2], r[..., D // 2 + quarter :]), dim=-1)
    torch.testing.assert_close(row_pairs[2, 0], row_pairs[2, 5])  # same row, other column
    torch.testing.assert_close(col_pairs[0, 3], col_pairs[4, 3])  # same column, other row
    assert (row_pairs[1, 0] - row_pairs[3, 0]).abs().max() > 1e-3
    assert (col_pairs[0, 1] - col_pairs[0, 4]).abs().max() > 1e-3


def test_tables_cover_non_square_grids_in_raster_order_and_grow_past_max_grid():
    rotary = Rotary2D(D, max_grid=4)
    cos, sin = rotary(3, 10)
    assert cos.shape == sin.shape == (1, 1, 30, D)
    small_cos, _ = rotary(2, 3)
    torch.testing.assert_close(small_cos.reshape(2, 3, D), cos.reshape(3, 10, D)[:2, :3])


def test_head_dim_must_be_a_multiple_of_4():
    with pytest.raises(ValueError, match="divisible by 4"):
        Rotary2D(6)


def test_the_base_is_saved_state():
    a, b = Rotary2D(D, base=100.0), Rotary2D(D)
    b.load_state_dict(a.state_dict())
    assert b.base == 100.0
    torch.testing.assert_close(b(3, 4)[0], a(3, 4)[0])
