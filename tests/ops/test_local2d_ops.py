"""Local 2D (neighbourhood) attention: every fast impl == the dense-mask reference on outputs and
gradients (odd, even, non-square, smaller-than-window grids, causal, padding), the reference ==
the per-cell loop restatement, windows are full and shifted inward at the borders, locality, and
the tiled impl's cost grows with the grid's area, not its square."""

import math

import pytest
import torch

from seqlab.ops import local2d as L
from seqlab.ops.local2d import (
    local2d_attention,
    local2d_attention_loop,
    local2d_weights,
    neighbourhood_mask,
    window_starts,
)

FAST = ("tiled", "gather", "dense")

# (gy, gx, window, causal, padded)
CASES = [
    (7, 7, 3, False, False),  # odd square
    (8, 8, 5, False, False),  # even square, exactly one tile
    (6, 11, 5, False, False),  # non-square
    (3, 4, 7, False, False),  # smaller than the window: clipped to the grid
    (1, 9, 3, False, False),  # one row
    (17, 13, 7, False, False),  # several tiles, partial last tiles
    (7, 10, 3, True, False),  # raster-causal
    (9, 12, 5, False, True),  # key padding (some queries see no key)
    (10, 9, 5, True, True),  # causal + padding
    (20, 21, 5, False, True),  # several tiles + padding
    (23, 19, 3, True, True),  # several tiles, causal + padding
]
IDS = [f"{gy}x{gx}-w{w}{'-causal' if c else ''}{'-pad' if p else ''}" for gy, gx, w, c, p in CASES]


def inputs(gy, gx, padded, b=2, h=3, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, gy, gx, d, generator=g) for _ in range(3))
    key_mask = None
    if padded:
        key_mask = torch.rand(b, gy, gx, generator=g) > 0.3
        key_mask[0, :4, :4] = False  # a corner block of padding: its queries may see no key
    return q, k, v, key_mask


def grads(fn, q, k, v, upstream):
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out = fn(*leaves)
    (out * upstream).sum().backward()
    return out.detach(), [leaf.grad for leaf in leaves]


@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("gy,gx,window,causal,padded", CASES, ids=IDS)
def test_fast_impls_match_the_reference_on_outputs_and_gradients(impl, gy, gx, window, causal, padded):
    q, k, v, key_mask = inputs(gy, gx, padded)
    upstream = torch.randn(q.shape, generator=torch.Generator().manual_seed(1))

    def run(which):
        return lambda q, k, v: local2d_attention(
            q, k, v, window=window, causal=causal, key_mask=key_mask, impl=which
        )

    ref, ref_grads = grads(run("eager"), q, k, v, upstream)
    out, out_grads = grads(run(impl), q, k, v, upstream)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for name, got, want in zip("qkv", out_grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=f"grad of {name}")


@pytest.mark.parametrize("gy,gx,window,causal,padded", CASES, ids=IDS)
def test_reference_equals_the_per_cell_loop(gy, gx, window, causal, padded):
    q, k, v, key_mask = inputs(gy, gx, padded)
    ref = local2d_attention(q, k, v, window=window, causal=causal, key_mask=key_mask, impl="eager")
    loop = local2d_attention_loop(q, k, v, window=window, causal=causal, key_mask=key_mask)
    torch.testing.assert_close(ref, loop, rtol=1e-5, atol=1e-6)


def test_a_query_that_sees_no_key_gives_zero_output_and_gradient():
    q, k, v, _ = inputs(6, 6, False)
    key_mask = torch.ones(2, 6, 6, dtype=torch.bool)
    key_mask[0, :4, :4] = False  # with window 3, query (0, 0) of sample 0 sees only padding
    for impl in FAST:
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        out = local2d_attention(*leaves, window=3, key_mask=key_mask, impl=impl)
        out.sum().backward()
        assert torch.isfinite(out).all() and all(torch.isfinite(t.grad).all() for t in leaves)
        assert torch.count_nonzero(out[0, :, 0, 0]) == 0
        assert torch.count_nonzero(leaves[0].grad[0, :, 0, 0]) == 0


@pytest.mark.parametrize("size,window", [(10, 5), (9, 3), (7, 7), (4, 7), (12, 1)])
def test_windows_are_full_contain_the_query_and_shift_inward_at_the_borders(size, window):
    start, span = window_starts(size, window)
    r = window // 2
    assert span == min(window, size)
    for i in range(size):
        lo, hi = int(start[i]), int(start[i]) + span  # keys lo .. hi - 1
        assert 0 <= lo and hi <= size and lo <= i < hi
        if r <= i < size - r:
            assert (lo, hi) == (i - r, i + r + 1)  # centred where it fits
    mask = neighbourhood_mask(size, size + 1, window)
    # Every query sees a full window: span x span' keys, clipped only by the grid's sides.
    assert mask.sum(-1).unique().tolist() == [span * min(window, size + 1)]


def test_causal_mask_is_the_window_intersected_with_raster_order():
    full, causal = neighbourhood_mask(6, 7, 5), neighbourhood_mask(6, 7, 5, causal=True)
    raster = torch.arange(42)
    expected = full & (raster[None, :] <= raster[:, None])
    assert torch.equal(causal, expected)
    assert causal.diagonal().all()  # a query always sees itself


@pytest.mark.parametrize("impl", FAST)
def test_editing_a_cell_outside_a_querys_window_never_changes_its_output(impl):
    gy, gx, window = 12, 11, 5
    q, k, v, _ = inputs(gy, gx, False, b=1)
    base = local2d_attention(q, k, v, window=window, impl=impl)
    allowed = neighbourhood_mask(gy, gx, window).reshape(gy, gx, gy, gx)
    for i, j in [(0, 0), (5, 6), (11, 10), (1, 9)]:
        outside = ~allowed[i, j]
        k2, v2 = k.clone(), v.clone()
        k2[:, :, outside] += 10 * torch.randn_like(k2[:, :, outside])
        v2[:, :, outside] += 10 * torch.randn_like(v2[:, :, outside])
        out = local2d_attention(q, k2, v2, window=window, impl=impl)
        torch.testing.assert_close(out[:, :, i, j], base[:, :, i, j], rtol=1e-6, atol=1e-6)
        # ... while an edit inside the window does change it (the test can fail).
        inside = allowed[i, j].nonzero()[0]
        v3 = v.clone()
        v3[:, :, inside[0], inside[1]] += 10
        changed = local2d_attention(q, k, v3, window=window, impl=impl)
        assert (changed[:, :, i, j] - base[:, :, i, j]).abs().max() > 1e-3


def test_tiled_cost_grows_with_the_area_not_its_square():
    """The (query, key) pairs the tiled impl scores: 4x the area -> ~4x the pairs (dense: 16x),
    and within a constant factor (T + k - 1)^2 / k^2 of the k^2 per cell of the definition."""
    window, tile = 7, L.TILE
    pairs = {}
    for g in (32, 64, 128):
        *_, mask = L._tile_plan(g, g, window, False, tile, torch.device("cpu"))
        pairs[g] = mask.numel()
        assert pairs[g] <= g * g * (tile + window - 1) ** 2
    assert pairs[64] / pairs[32] <= 4.5 and pairs[128] / pairs[64] <= 4.5


def test_weights_are_the_softmax_over_the_window():
    gy, gx, window = 6, 9, 3
    q, k, v, key_mask = inputs(gy, gx, True)
    w = local2d_weights(q, k, window=window, key_mask=key_mask)  # [b, h, gy, gx, gy, gx]
    allowed = neighbourhood_mask(gy, gx, window).reshape(gy, gx, gy, gx)
    assert torch.count_nonzero(w * ~allowed) == 0
    out = local2d_attention(q, k, v, window=window, key_mask=key_mask, impl="eager")
    weighted = torch.einsum("bhijyx,bhyxd->bhijd", w, v)
    torch.testing.assert_close(weighted, out, rtol=1e-5, atol=1e-6)
    sums = w.sum(dim=(-2, -1))
    assert torch.all(((sums - 1).abs() < 1e-5) | (sums == 0))


@pytest.mark.parametrize("impl", FAST)
def test_bf16_runs_close_to_the_fp32_reference(impl):
    q, k, v, _ = inputs(9, 10, False)
    ref = local2d_attention(q, k, v, window=5, impl="eager")
    out = local2d_attention(*(t.bfloat16() for t in (q, k, v)), window=5, impl=impl)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)


def test_bad_arguments_are_clear_errors():
    q = torch.randn(1, 2, 5, 5, 4)
    with pytest.raises(ValueError, match="odd"):
        local2d_attention(q, q, q, window=4)
    with pytest.raises(ValueError, match="impl"):
        local2d_attention(q, q, q, window=3, impl="natten")
    with pytest.raises(ValueError, match=r"\[b, h, gy, gx, d\]"):
        local2d_attention(q, q[..., :3], q, window=3)
    with pytest.raises(ValueError, match="key_mask"):
        local2d_attention(q, q, q, window=3, key_mask=torch.ones(1, 5, 4, dtype=torch.bool))


def test_a_two_cell_grid_by_hand():
    """Grid 1 x 2, window 3: each cell softmax-weights both cells by q . k / sqrt(d)."""
    q, k, v, _ = inputs(1, 2, False, b=1, h=1, d=16)
    scores = torch.einsum("d,jd->j", q[0, 0, 0, 0], k[0, 0, 0]) / math.sqrt(16)
    expected = scores.softmax(-1) @ v[0, 0, 0]
    for impl in FAST:
        out = local2d_attention(q, k, v, window=3, impl=impl)
        torch.testing.assert_close(out[0, 0, 0, 0], expected, rtol=1e-5, atol=1e-6)
    # window 1: a cell sees only itself, so the output is its own value
    torch.testing.assert_close(local2d_attention(q, k, v, window=1), v)


def test_the_benchmark_checks_every_impl_before_printing_one_table(capsys):
    from seqlab.bench.local2d import main

    assert main(["--grids", "8,16", "--repeats", "1", "--no-flex", "--heads", "1", "--head-dim", "8"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| 8x8") or line.startswith("| 16x16")]
    assert len(rows) == 8  # tiled, gather, dense, loop at both sizes
    assert "not timed" not in out
    assert "linear in area (forward)" in out
