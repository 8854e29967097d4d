"""seqlab.ops.bspline: the Cox-de Boor reference against scipy, the closed-form and de Boor local
bases against the reference (values and derivatives), and the three kan_linear impls against
each other on outputs and gradients (gradcheck in float64 for the custom backward)."""

import math

import pytest
import torch

from seqlab.ops import bspline
from seqlab.ops.bspline import (
    KAN_IMPLS,
    bspline_basis,
    bspline_basis_reference,
    cardinal_coefficients,
    general_local_basis,
    is_uniform,
    kan_linear,
    scatter_basis,
    uniform_grid,
    uniform_local_basis,
)

G, K = 5, 3


def nonuniform_grid(in_features: int, seed: int = 0) -> torch.Tensor:
    """Sorted random knots per input, spacing between 0.2 and 1 (float64)."""
    gen = torch.Generator().manual_seed(seed)
    steps = 0.2 + 0.8 * torch.rand(in_features, G + 2 * K, generator=gen, dtype=torch.float64)
    return torch.cat([torch.zeros(in_features, 1, dtype=torch.float64), steps.cumsum(-1)], -1) - 3.0


def inputs(n: int, in_features: int, spread: float = 1.5, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return spread * torch.randn(n, in_features, generator=gen, dtype=torch.float64)


def dense(local, num_bases: int) -> torch.Tensor:
    index, values, _ = local
    return scatter_basis(index, values, num_bases)


def local_slope(index: torch.Tensor, derivatives: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """d/dx sum_j weights[j] B_j(x) from the local derivatives (column G + k: no basis, weight 0)."""
    padded = torch.cat([weights, weights.new_zeros(1)])
    return (derivatives * padded[index]).sum(-1)


def test_cox_de_boor_matches_scipy_basis_elements_on_uniform_and_nonuniform_knots():
    interpolate = pytest.importorskip("scipy.interpolate")
    x = inputs(300, 3, spread=2.0)
    for grid in (uniform_grid(3, G, K, (-1, 1), dtype=torch.float64), nonuniform_grid(3)):
        ours = bspline_basis_reference(x, grid, K)
        assert ours.shape == (300, 3, G + K)
        for i in range(3):
            t = grid[i].numpy()
            for j in range(G + K):
                element = interpolate.BSpline.basis_element(t[j : j + K + 2], extrapolate=False)
                expected = torch.from_numpy(element(x[:, i].numpy())).nan_to_num(0.0)
                torch.testing.assert_close(ours[:, i, j], expected, rtol=1e-10, atol=1e-12)


def test_spline_with_given_coefficients_matches_scipy_bspline():
    interpolate = pytest.importorskip("scipy.interpolate")
    grid = nonuniform_grid(1, seed=3)
    t = grid[0].numpy()
    coef = torch.randn(G + K, dtype=torch.float64)
    # scipy evaluates a spline on its base interval [t_k, t_{n}]; stay inside it.
    x = torch.linspace(float(t[K]), float(t[G + K]) - 1e-9, 201, dtype=torch.float64)[:, None]
    expected = torch.from_numpy(interpolate.BSpline(t, coef.numpy(), K, extrapolate=False)(x[:, 0].numpy()))
    for impl in ("reference", "local"):
        ours = bspline_basis(x, grid, K, impl=impl)[:, 0] @ coef
        torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("order", [1, 2, 3, 4, 5])
def test_cardinal_pieces_form_a_partition_of_unity(order):
    # The k + 1 non-zero pieces sum to 1 for every u: coefficients sum to (1, 0, ..., 0).
    sums = torch.tensor(cardinal_coefficients(order), dtype=torch.float64).sum(0)
    torch.testing.assert_close(sums, torch.eye(order + 1, dtype=torch.float64)[0])


def test_cubic_pieces_are_the_textbook_values_at_a_knot():
    # Uniform cubic B-spline at a knot (u = 0): 1/6, 2/3, 1/6 (and 0 for the basis starting there).
    values = torch.tensor(cardinal_coefficients(3), dtype=torch.float64)[:, 0]
    torch.testing.assert_close(values, torch.tensor([1 / 6, 2 / 3, 1 / 6, 0.0], dtype=torch.float64))


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_closed_form_local_bases_equal_the_recursion_values_and_derivatives(order):
    grid = uniform_grid(4, G, order, (-1, 1), dtype=torch.float64)
    x = inputs(500, 4).requires_grad_()
    reference = bspline_basis_reference(x, grid, order)
    index, values, derivatives = uniform_local_basis(x.detach(), grid, order, derivative=True)
    torch.testing.assert_close(
        scatter_basis(index, values, G + order), reference.detach(), rtol=0, atol=1e-12
    )
    # d/dx of a weighted sum of the bases, from autograd through the recursion.
    weights = torch.randn(G + order, dtype=torch.float64)
    (expected,) = torch.autograd.grad((reference * weights).sum(), x)
    torch.testing.assert_close(local_slope(index, derivatives, weights), expected, rtol=0, atol=1e-10)


def test_general_local_bases_equal_the_recursion_on_nonuniform_knots():
    grid = nonuniform_grid(4)
    assert not is_uniform(grid)
    x = inputs(500, 4, spread=2.0).requires_grad_()
    reference = bspline_basis_reference(x, grid, K)
    index, values, derivatives = general_local_basis(x.detach(), grid, K, derivative=True)
    torch.testing.assert_close(scatter_basis(index, values, G + K), reference.detach(), rtol=0, atol=1e-12)
    weights = torch.randn(G + K, dtype=torch.float64)
    (expected,) = torch.autograd.grad((reference * weights).sum(), x)
    torch.testing.assert_close(local_slope(index, derivatives, weights), expected, rtol=0, atol=1e-10)


def test_general_and_closed_form_agree_on_uniform_knots():
    grid = uniform_grid(3, G, K, (-2, 2), dtype=torch.float64)
    x = inputs(400, 3, spread=2.5)
    a = uniform_local_basis(x, grid, K, derivative=True)
    b = general_local_basis(x, grid, K, derivative=True)
    torch.testing.assert_close(dense(a, G + K), dense(b, G + K), rtol=0, atol=1e-12)


def test_inputs_outside_the_extended_grid_have_a_zero_basis():
    grid = uniform_grid(2, G, K, (-1, 1), dtype=torch.float64)
    low, high = grid[0, 0].item(), grid[0, -1].item()
    x = torch.tensor([[low - 0.1, high], [high + 5.0, low - 1e3]], dtype=torch.float64)
    for impl in ("reference", "local"):
        assert bspline_basis(x, grid, K, impl=impl).abs().max() == 0
    # ... so a KAN edge there is its SiLU base branch alone.
    weight = torch.randn(3, 2, G + K + 1, dtype=torch.float64)
    for impl in KAN_IMPLS:
        torch.testing.assert_close(
            kan_linear(x, grid, weight, K, impl), torch.nn.functional.silu(x) @ weight[..., -1].t()
        )


def _outputs_and_grads(impl: str, x: torch.Tensor, grid: torch.Tensor, weight: torch.Tensor):
    x = x.detach().clone().requires_grad_()
    w = weight.detach().clone().requires_grad_()
    y = kan_linear(x, grid, w, K, impl)
    probe = torch.randn(y.shape, generator=torch.Generator().manual_seed(5), dtype=y.dtype)
    (y * probe).sum().backward()
    return y.detach(), x.grad, w.grad


@pytest.mark.parametrize("impl", ["dense", "recompute"])
@pytest.mark.parametrize("knots", ["uniform", "nonuniform"])
def test_fast_impls_match_the_reference_on_outputs_and_gradients(impl, knots):
    torch.manual_seed(0)
    n, d, o = 257, 12, 7  # odd sizes
    grid = uniform_grid(d, G, K, (-1, 1)) if knots == "uniform" else nonuniform_grid(d).float()
    x = 1.2 * torch.randn(n, d)
    weight = torch.randn(o, d, G + K + 1) / math.sqrt(d)
    expected = _outputs_and_grads("reference", x, grid, weight)
    got = _outputs_and_grads(impl, x, grid, weight)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_recompute_over_several_row_chunks_matches_the_reference(monkeypatch):
    # 50 rows per chunk: 257 rows are 6 chunks, the last one partial.
    monkeypatch.setattr(bspline, "CHUNK_ELEMENTS", 50 * 12 * (G + K + 1))
    assert bspline.chunk_rows(12, G + K) == 50
    torch.manual_seed(0)
    x = 1.2 * torch.randn(257, 12)
    grid = uniform_grid(12, G, K)
    weight = torch.randn(7, 12, G + K + 1) / math.sqrt(12)
    expected = _outputs_and_grads("reference", x, grid, weight)
    for a, b in zip(_outputs_and_grads("recompute", x, grid, weight), expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("knots", ["uniform", "nonuniform"])
def test_recompute_backward_passes_gradcheck_in_float64(knots):
    grid = uniform_grid(3, G, K, (-1, 1), dtype=torch.float64) if knots == "uniform" else nonuniform_grid(3)
    x = inputs(9, 3, spread=1.2).requires_grad_()
    weight = torch.randn(4, 3, G + K + 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, w: kan_linear(a, grid, w, K, "recompute"), (x, weight))


def _saved_bytes(impl: str, x: torch.Tensor, grid: torch.Tensor, weight: torch.Tensor) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        kan_linear(x, grid, weight, K, impl)
    return total


def test_recompute_saves_only_the_input_and_the_weight():
    n, d, o = 512, 16, 16
    grid = uniform_grid(d, G, K)
    x = torch.randn(n, d, requires_grad=True)
    weight = torch.randn(o, d, G + K + 1, requires_grad=True)
    size = lambda t: t.numel() * t.element_size()  # noqa: E731
    assert _saved_bytes("recompute", x, grid, weight) == size(x) + size(grid) + size(weight)
    # The autograd impl keeps (at least) the dense basis, (G + k + 1) times the input.
    assert _saved_bytes("dense", x, grid, weight) >= (G + K + 1) * size(x)


def test_recompute_under_bf16_autocast_matches_the_dense_impl():
    torch.manual_seed(0)
    n, d, o = 64, 8, 5
    grid = uniform_grid(d, G, K)
    x = torch.randn(n, d)
    weight = torch.randn(o, d, G + K + 1) / math.sqrt(d)
    results = {}
    for impl in ("dense", "recompute"):
        xi, wi = x.clone().requires_grad_(), weight.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = kan_linear(xi, grid, wi, K, impl)
        assert y.dtype == torch.bfloat16
        y.float().square().sum().backward()
        assert xi.grad.dtype == torch.float32 and wi.grad.dtype == torch.float32
        results[impl] = (y.float(), xi.grad, wi.grad)
    for a, b in zip(results["recompute"], results["dense"], strict=True):
        torch.testing.assert_close(a, b, rtol=5e-2, atol=5e-2 * b.abs().max().item())


def test_kan_linear_rejects_a_weight_that_does_not_fit():
    grid = uniform_grid(4, G, K)
    with pytest.raises(ValueError, match="G \\+ k \\+ 1"):
        kan_linear(torch.randn(3, 4), grid, torch.randn(2, 4, G + K), K)
    with pytest.raises(ValueError, match="unknown KANLinear impl"):
        kan_linear(torch.randn(3, 4), grid, torch.randn(2, 4, G + K + 1), K, "fast")
