"""B-spline bases and the KAN linear map (Kolmogorov-Arnold Networks, Liu et al. 2024; the layer
layout of Blealtan/efficient-kan; seed 004 "KAT5" used unbounded element-wise splines instead).

Knots. A spline of order k (degree k) on G intervals of [a, b] uses G + 2k + 1 knots
t_j = a + (j - k) h, h = (b - a) / G, j = 0 .. G + 2k (k extra knots on each side), and has
G + k basis functions B_0 .. B_{G+k-1}; B_j is non-zero only on [t_j, t_{j+k+1}). The knots
are kept per input channel, grid [in, G + 2k + 1], so each input may have its own range (after
a grid update); a row may also be non-uniform.

Cox-de Boor recursion (`bspline_basis_reference`, the readable definition, full basis):

    B_{j,0}(x) = 1 if t_j <= x < t_{j+1} else 0
    B_{j,p}(x) = (x - t_j) / (t_{j+p} - t_j) B_{j,p-1}(x)
               + (t_{j+p+1} - x) / (t_{j+p+1} - t_{j+1}) B_{j+1,p-1}(x)

Local evaluation (the fast path): any x lies in one cell m (t_m <= x < t_{m+1}), where only the
k + 1 bases B_{m-k} .. B_m are non-zero.

- uniform knots (`uniform_local_basis`): with u = (x - t_m) / h in [0, 1), B_{m-r}(x) = N_k(r + u)
  for r = 0 .. k, where N_k is the cardinal B-spline
  N_k(s) = 1/k! sum_{i=0}^{k+1} (-1)^i C(k+1, i) (s - i)_+^k. On a unit cell each piece is a
  fixed polynomial of u, N_k(r + u) = sum_p M[r, p] u^p with M computed exactly once
  (`cardinal_coefficients`), so the k + 1 values and their derivatives are a Horner evaluation:
  no recursion.
- any knots (`general_local_basis`): de Boor's triangle on the k + 1 non-zero values only
  (The NURBS Book, algorithm A2.2), after a binary search for the cell.

The local values are scattered into the dense basis (one scatter, `scatter_basis`).
Inputs outside the extended grid [t_0, t_{G+2k}) get the zero basis, as the recursion gives:
the spline part of a KAN edge is 0 there and only the SiLU base branch acts, so a bounded
input (a norm or tanh before the layer) keeps activations in range.

KAN linear map (`kan_linear`), for x [N, in] and a weight [out, in, G + k + 1] whose last
column is the base (SiLU) branch and the others the spline coefficients (already multiplied
by any per-edge scale):

    y[n, o] = sum_i W[o, i, G+k] silu(x[n, i]) + sum_i sum_j W[o, i, j] B_j(x[n, i])

computed as ONE matmul [N, in (G+k+1)] @ [in (G+k+1), out]: silu(x_i) is one extra basis
column per input. impl:
- "reference": Cox-de Boor full basis, then the efficient-kan form (two matmuls, autograd).
- "dense": local bases scattered into the dense basis with the SiLU column, one matmul;
  autograd keeps the dense basis [N, in (G+k+1)] for backward.
- "recompute" (default): the same forward in a torch.autograd.Function that saves only x (and
  the weight) and rebuilds the bases in backward, so activation memory is that of the input,
  not (G + k + 1) times it; forward and backward go over chunks of rows, so the transient
  dense basis is bounded too (CHUNK_ELEMENTS). Backward: dW = dy^T dense, d dense = dy W,
  and dx_i = sum over the k + 1 non-zero bases of d dense[i, j] B_j'(x_i)
  + d dense[i, G+k] silu'(x_i).
Under autocast the matmuls run in the autocast dtype (the bases are evaluated in float32 and
written to the dense basis in that dtype); backward restores the forward's autocast state.

Shapes: x [N, in]; grid [in, G + 2k + 1]; basis [N, in, G + k]; weight [out, in, G + k + 1];
y [N, out].
"""

import math
from fractions import Fraction
from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor

KAN_IMPLS = ("reference", "dense", "recompute")


def uniform_grid(
    in_features: int,
    grid_size: int,
    spline_order: int,
    grid_range: tuple[float, float] = (-1.0, 1.0),
    *,
    dtype: torch.dtype = torch.float32,
    device=None,
) -> Tensor:
    """Knots [in, G + 2k + 1]: G uniform intervals over grid_range, extended by k knots per side."""
    lo, hi = grid_range
    h = (hi - lo) / grid_size
    steps = torch.arange(-spline_order, grid_size + spline_order + 1, dtype=torch.float64, device=device)
    return (lo + h * steps).to(dtype).expand(in_features, -1).contiguous()


def bspline_basis_reference(x: Tensor, grid: Tensor, spline_order: int) -> Tensor:
    """Cox-de Boor recursion for all G + k bases: x [N, in], grid [in, K] -> [N, in, K - 1 - k]."""
    t = grid.to(x.dtype)
    x = x.unsqueeze(-1)  # [N, in, 1]
    basis = ((x >= t[:, :-1]) & (x < t[:, 1:])).to(x.dtype)  # order 0: [N, in, K - 1]
    for p in range(1, spline_order + 1):
        left = (x - t[:, : -(p + 1)]) / (t[:, p:-1] - t[:, : -(p + 1)]) * basis[..., :-1]
        right = (t[:, p + 1 :] - x) / (t[:, p + 1 :] - t[:, 1:-p]) * basis[..., 1:]
        basis = left + right
    return basis


@cache
def cardinal_coefficients(spline_order: int) -> tuple[tuple[float, ...], ...]:
    """M[q][p] with B_{m-k+q}(x) = sum_p M[q][p] u^p on cell m (u = (x - t_m) / h in [0, 1)),
    q = 0 .. k in order of the basis index (q = k - r for the piece N_k(r + u)). Exact
    rational arithmetic, rounded once to float."""
    k = spline_order
    rows = []
    for r in range(k + 1):
        # N_k(r + u) = 1/k! sum_{i <= r} (-1)^i C(k+1, i) (u + r - i)^k, expanded in powers of u.
        row = [Fraction(0)] * (k + 1)
        for i in range(r + 1):
            for p in range(k + 1):
                row[p] += (-1) ** i * math.comb(k + 1, i) * math.comb(k, p) * Fraction(r - i) ** (k - p)
        rows.append(tuple(float(c / math.factorial(k)) for c in row))
    return tuple(reversed(rows))


def _compute_dtype(x: Tensor) -> torch.dtype:
    # Bases are evaluated in at least float32 (bf16 inputs too), in float64 for float64 inputs.
    return torch.promote_types(x.dtype, torch.float32)


@cache
def _window_table(num_cells: int, spline_order: int, device: torch.device) -> Tensor:
    """[num_cells + 2, k + 1] long: row m + 1 holds the dense-basis index of each of the k + 1
    local bases of cell m, B_{m-k+q}; indices outside [0, G + k) and the rows of inputs left
    (row 0) or right (last row) of the extended grid point at column G + k, a column that
    scatter_basis overwrites (with the SiLU column) or drops, so they never count."""
    k, num_bases = spline_order, num_cells - spline_order
    table = torch.full((num_cells + 2, k + 1), num_bases, dtype=torch.long)
    for m in range(num_cells):
        for q in range(k + 1):
            if 0 <= m - k + q < num_bases:
                table[m + 1, q] = m - k + q
    return table.to(device)


def _window_index(cell: Tensor, num_cells: int, spline_order: int) -> Tensor:
    """cell [N, in] (float or long, -1 / num_cells and beyond = outside) -> index [N, in, k + 1]."""
    row = (cell + 1).clamp(0, num_cells + 1)
    if row.is_floating_point():
        row = row.nan_to_num(0.0).long()
    return F.embedding(row, _window_table(num_cells, spline_order, cell.device))


def _polynomial(u: Tensor, coefficients) -> Tensor:
    """sum_p coefficients[p] u^p by Horner's rule; in place unless autograd records u."""
    if len(coefficients) == 1:
        return torch.full_like(u, coefficients[0])
    v = u * coefficients[-1] + coefficients[-2]
    inplace = not (u.requires_grad and torch.is_grad_enabled())
    for c in reversed(coefficients[:-2]):
        v = v.mul_(u).add_(c) if inplace else v * u + c
    return v


def _stack_last(tensors: list[Tensor]) -> Tensor:
    # Written column by column into one buffer: faster on CPU than torch.stack(..., -1).
    out = tensors[0].new_empty(*tensors[0].shape, len(tensors))
    for q, t in enumerate(tensors):
        out[..., q] = t
    return out


def uniform_local_basis(
    x: Tensor, grid: Tensor, spline_order: int, *, derivative: bool = False
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The k + 1 non-zero bases of uniform knots (closed form; each grid row uniform).

    x [N, in] -> (index [N, in, k + 1] long: the dense-basis column of each local basis, G + k
    where it does not exist (outside the extended grid, or an index outside [0, G + k)); values
    [N, in, k + 1]: B_index(x); derivatives d/dx of them, or None). Entries at column G + k
    carry arbitrary values: scatter_basis and the backward never read them.

    Every step is an elementwise op on [N, in] tensors (one per local basis), which is what
    makes this fast on CPU; broadcasting over a trailing axis of size k + 1 is several times
    slower there."""
    k = spline_order
    num_cells = grid.shape[1] - 1
    dtype = _compute_dtype(x)
    t0 = grid[:, 0].to(dtype)
    inv_h = (num_cells / (grid[:, -1] - grid[:, 0])).to(dtype)
    s = (x.to(dtype) - t0) * inv_h  # position in cells from t_0
    cell = s.floor()
    u = s - cell
    pieces = cardinal_coefficients(k)
    values = [_polynomial(u, row) for row in pieces]
    derivatives = None
    if derivative:
        # d/dx = (1 / h) sum_p p row[p] u^(p - 1)
        slopes = [[p * c for p, c in enumerate(row)][1:] for row in pieces]
        derivatives = _stack_last([_polynomial(u, row) * inv_h for row in slopes])
    return _window_index(cell, num_cells, k), _stack_last(values), derivatives


def general_local_basis(
    x: Tensor, grid: Tensor, spline_order: int, *, derivative: bool = False
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The k + 1 non-zero bases for any non-decreasing knots: de Boor's triangle per input.

    Same outputs as `uniform_local_basis`."""
    k = spline_order
    num_cells = grid.shape[1] - 1
    t = grid.to(_compute_dtype(x))
    xs = x.to(t.dtype)
    # Cell m with t_m <= x < t_{m+1}: one binary search per input row over its knots.
    cell = torch.searchsorted(t, xs.t().contiguous(), right=True).t() - 1  # [N, in], -1 .. num_cells
    m = cell.clamp(0, num_cells - 1)
    knots = t.unsqueeze(0).expand(xs.shape[0], -1, -1)

    def knot(offset: int) -> Tensor:
        return knots.gather(-1, (m + offset).clamp(0, num_cells).unsqueeze(-1)).squeeze(-1)

    left = [None] + [xs - knot(1 - j) for j in range(1, k + 1)]  # x - t_{m+1-j}
    right = [None] + [knot(j) - xs for j in range(1, k + 1)]  # t_{m+j} - x
    values = [torch.ones_like(xs)]
    lower = values
    for j in range(1, k + 1):
        lower = values
        saved = torch.zeros_like(xs)
        new = []
        for r in range(j):
            den = right[r + 1] + left[j - r]
            # Entries whose knots fall outside the grid (clamped) may have den = 0; they only
            # feed bases with indices < 0, which are dropped.
            temp = torch.where(den > 0, lower[r] / torch.where(den > 0, den, 1.0), 0.0)
            new.append(saved + right[r + 1] * temp)
            saved = left[j - r] * temp
        new.append(saved)
        values = new
    derivatives = None
    if derivative:
        # B'_{j,k} = k (B_{j,k-1} / (t_{j+k} - t_j) - B_{j+1,k-1} / (t_{j+k+1} - t_{j+1})), j = m-k+q.
        zero = torch.zeros_like(xs)
        prev = [zero, *lower, zero]  # prev[q] = B_{m-k+q, k-1}, q = 0 .. k + 1 (ends are 0)
        terms = []
        for q in range(k + 1):
            a = knot(q) - knot(q - k)
            b = knot(q + 1) - knot(q + 1 - k)
            da = torch.where(a > 0, prev[q] / torch.where(a > 0, a, 1.0), 0.0)
            db = torch.where(b > 0, prev[q + 1] / torch.where(b > 0, b, 1.0), 0.0)
            terms.append(k * (da - db))
        derivatives = _stack_last(terms)
    return _window_index(cell, num_cells, k), _stack_last(values), derivatives


def is_uniform(grid: Tensor, rtol: float = 1e-5) -> bool:
    """Every row of the knots equally spaced (the closed form applies)."""
    steps = grid.diff(dim=-1)
    tolerance = rtol * steps.abs().max()
    return bool(torch.allclose(steps, steps[:, :1].expand_as(steps), rtol=rtol, atol=tolerance))


def local_basis(x: Tensor, grid: Tensor, spline_order: int, uniform: bool, *, derivative: bool = False):
    fn = uniform_local_basis if uniform else general_local_basis
    return fn(x, grid, spline_order, derivative=derivative)


def scatter_basis(index: Tensor, values: Tensor, num_bases: int, extra: Tensor | None = None) -> Tensor:
    """Dense basis [N, in, num_bases] from the local bases (index, values [N, in, k + 1]), or
    [N, in, num_bases + 1] with `extra` [N, in] (the SiLU base branch) as the last column.
    One scatter: the k + 1 indices of a row are distinct except those at column num_bases,
    which is then overwritten by `extra` (or cut off)."""
    n, d, _ = values.shape
    dense = values.new_zeros(n, d, num_bases + 1).scatter_(-1, index, values)
    if extra is None:
        return dense[..., :num_bases]
    dense[..., num_bases] = extra
    return dense


def bspline_basis(x: Tensor, grid: Tensor, spline_order: int, impl: str = "local") -> Tensor:
    """All G + k bases, x [N, in] -> [N, in, G + k]: impl "reference" (Cox-de Boor) or "local"
    (the k + 1 non-zero ones, closed form on uniform knots, scattered; differentiable in x)."""
    if impl == "reference":
        return bspline_basis_reference(x, grid, spline_order)
    if impl != "local":
        raise ValueError(f"unknown basis impl {impl!r}; choose reference or local")
    index, values, _ = local_basis(x, grid, spline_order, is_uniform(grid))
    return scatter_basis(index, values.to(x.dtype), grid.shape[1] - 1 - spline_order)


def _autocast_state(device_type: str) -> tuple[bool, torch.dtype]:
    return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)


def _silu_grad(x: Tensor) -> Tensor:
    s = torch.sigmoid(x)
    return s * (1 + x * (1 - s))


# The recompute path builds the dense basis in chunks of rows of about this many elements, so
# its transient memory (basis, its gradient, the local bases and their indices) stays about
# 10 MiB at any N, instead of several times N * in * (G + k + 1) floats; chunks of 150-450
# rows (c = 384 / 128) still run the matmuls at full speed on CPU.
CHUNK_ELEMENTS = 2**19


def chunk_rows(in_features: int, num_bases: int) -> int:
    return max(1, CHUNK_ELEMENTS // (in_features * (num_bases + 1)))


class _KANLinearRecompute(torch.autograd.Function):
    """kan_linear saving only x and the weight; the bases are rebuilt in backward. Forward and
    backward run over chunks of rows (chunk_rows): the output rows and dx rows are written
    chunk by chunk, dW is summed over the chunks (float32)."""

    @staticmethod
    def forward(ctx, x: Tensor, grid: Tensor, weight: Tensor, spline_order: int, uniform: bool) -> Tensor:
        device_type = x.device.type
        autocast, autocast_dtype = _autocast_state(device_type)
        dtype = autocast_dtype if autocast else x.dtype
        num_bases = weight.shape[-1] - 1
        n, d = x.shape
        y = x.new_empty(n, weight.shape[0], dtype=dtype)
        with torch.autocast(device_type, enabled=False):
            w = weight.to(dtype).flatten(1).t()  # [in (G+k+1), out]
            step = chunk_rows(d, num_bases)
            for start in range(0, n, step):
                xc = x[start : start + step]
                index, values, _ = local_basis(xc, grid, spline_order, uniform)
                dense = scatter_basis(index, values.to(dtype), num_bases, F.silu(xc).to(dtype))
                torch.mm(dense.flatten(1), w, out=y[start : start + step])
        ctx.save_for_backward(x, grid, weight)
        ctx.spline_order, ctx.uniform, ctx.autocast = spline_order, uniform, (autocast, autocast_dtype)
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, grid, weight = ctx.saved_tensors
        autocast, autocast_dtype = ctx.autocast
        dtype = autocast_dtype if autocast else x.dtype
        num_bases = weight.shape[-1] - 1
        n, d = x.shape
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
        grad_x = torch.empty_like(x) if need_x else None
        grad_w = torch.zeros(weight.shape[0], weight[0].numel(), dtype=torch.float32, device=x.device)
        with torch.autocast(x.device.type, enabled=False):
            dy = dy.to(dtype)
            w = weight.to(dtype).flatten(1)  # [out, in (G+k+1)]
            step = chunk_rows(d, num_bases)
            for start in range(0, n, step):
                xc, dyc = x[start : start + step], dy[start : start + step]
                index, values, derivatives = local_basis(
                    xc, grid, ctx.spline_order, ctx.uniform, derivative=need_x
                )
                if need_w:
                    dense = scatter_basis(index, values.to(dtype), num_bases, F.silu(xc).to(dtype))
                    grad_w += dyc.t() @ dense.flatten(1)
                    del dense
                if need_x:
                    g = (dyc @ w).view(-1, d, num_bases + 1).to(values.dtype)  # d loss / d dense
                    gx = g[..., num_bases] * _silu_grad(xc.to(values.dtype))
                    # Local bases that do not exist point at the SiLU column: zero it so they add 0.
                    g[..., num_bases] = 0
                    # sum over the k + 1 local bases as a batched dot product (faster on CPU
                    # than a reduction over a trailing axis of size k + 1)
                    gx += (g.gather(-1, index).unsqueeze(-2) @ derivatives.unsqueeze(-1)).view_as(gx)
                    grad_x[start : start + step] = gx
        grad_weight = grad_w.view_as(weight).to(weight.dtype) if need_w else None
        return grad_x, None, grad_weight, None, None


def kan_linear(
    x: Tensor, grid: Tensor, weight: Tensor, spline_order: int, impl: str = "recompute", *, uniform=None
) -> Tensor:
    """y = silu(x) W[..., -1]^T + sum_ij W[o, i, j] B_j(x_i): x [N, in], grid [in, G+2k+1],
    weight [out, in, G+k+1] -> [N, out]. `uniform` (whether every grid row is equally spaced,
    so the closed form applies) is checked from the grid when None."""
    if impl not in KAN_IMPLS:
        raise ValueError(f"unknown KANLinear impl {impl!r}; choose one of {', '.join(KAN_IMPLS)}")
    num_bases = grid.shape[1] - 1 - spline_order
    if weight.shape[-1] != num_bases + 1 or weight.shape[1] != x.shape[-1] or grid.shape[0] != x.shape[-1]:
        raise ValueError(
            f"kan_linear: x {tuple(x.shape)}, grid {tuple(grid.shape)} and weight {tuple(weight.shape)} "
            f"do not fit (weight must be [out, in, G + k + 1] = [out, {x.shape[-1]}, {num_bases + 1}])"
        )
    if impl == "reference":
        basis = bspline_basis_reference(x, grid, spline_order)  # [N, in, G + k]
        return F.linear(F.silu(x), weight[..., -1]) + F.linear(basis.flatten(1), weight[..., :-1].flatten(1))
    if uniform is None:
        uniform = is_uniform(grid)
    if impl == "dense":
        index, values, _ = local_basis(x, grid, spline_order, uniform)
        dense = scatter_basis(index, values.to(x.dtype), num_bases, F.silu(x))
        return dense.flatten(1) @ weight.flatten(1).t()
    return _KANLinearRecompute.apply(x, grid, weight, spline_order, uniform)


def truncated_power_basis(x: Tensor, knots: Tensor, power: int, scale: float) -> Tensor:
    """((t_ik - x_i)_+ / scale)^power: x [N, in], knots [in, K] -> [N, in, K] (the seed's free-knot
    basis max(0, t - x)^3, with knots per input and a scale that keeps it O(1))."""
    return ((knots - x.unsqueeze(-1)).clamp_min(0) / scale) ** power


__all__ = [
    "KAN_IMPLS",
    "bspline_basis",
    "bspline_basis_reference",
    "cardinal_coefficients",
    "general_local_basis",
    "is_uniform",
    "kan_linear",
    "local_basis",
    "scatter_basis",
    "truncated_power_basis",
    "uniform_grid",
    "uniform_local_basis",
]
