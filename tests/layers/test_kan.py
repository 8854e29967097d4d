"""KANLinear and the `kan` feed-forward: channel mixing and bounded outputs (the seed's defects 1
and 2), the impls agreeing on every parameter's gradient, update_grid keeping the function,
the regularizer, the truncated-power basis, parameter counts, and a `stack` model with
"attention+kan" layers that trains."""

import math

import pytest
import torch

from seqlab.layers.block import Context
from seqlab.layers.ffn import make_ffn
from seqlab.layers.kan import (
    KANFeedForward,
    KANLinear,
    kan_ffn_params,
    kan_hidden_for_params,
    kan_linear_params,
)
from seqlab.models.stack import StackConfig, StackLM


def jacobian(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.autograd.functional.jacobian(lambda v: module(v[None])[0], x)  # [out, in]


@pytest.mark.parametrize("basis", ["bspline", "truncated_power"])
def test_kan_linear_mixes_channels_its_jacobian_is_not_diagonal(basis):
    # Defect 1: the seed's "KAN" applied one 1-D function per channel (diagonal Jacobian).
    torch.manual_seed(0)
    layer = KANLinear(6, 6, basis=basis)
    jac = jacobian(layer, 0.7 * torch.randn(6))
    off_diagonal = jac[~torch.eye(6, dtype=torch.bool)]
    assert (off_diagonal.abs() > 1e-4).all()
    assert off_diagonal.abs().sum() > 0.5 * torch.diagonal(jac).abs().sum()


def test_kan_feed_forward_mixes_channels():
    torch.manual_seed(0)
    for hidden in (None, 0, 10):
        ffn = KANFeedForward(6, hidden)
        jac = jacobian(ffn, torch.randn(6))
        assert (jac[~torch.eye(6, dtype=torch.bool)].abs() > 1e-5).all()


@pytest.mark.parametrize("basis", ["bspline", "truncated_power"])
@pytest.mark.parametrize("width", [64, 384])
def test_outputs_stay_bounded_at_init_for_unit_variance_inputs(basis, width):
    # Defect 2: the seed's unbounded cubic splines gave activations ~5e6 for unit inputs.
    torch.manual_seed(0)
    x = torch.randn(2048, width)
    for module in (KANLinear(width, width, basis=basis), KANFeedForward(width, width // 2, basis=basis)):
        with torch.no_grad():
            y = module(x)
        assert 0.05 < y.std().item() < 3.0
        assert y.abs().max().item() < 30.0


@pytest.mark.parametrize("basis", ["bspline", "truncated_power"])
def test_impls_agree_on_outputs_and_every_parameter_gradient(basis):
    torch.manual_seed(0)
    layers = {impl: KANLinear(9, 5, basis=basis, impl=impl) for impl in ("reference", "dense", "recompute")}
    state = layers["reference"].state_dict()
    with torch.no_grad():
        # Splines of unit size (not the near-zero init) so their gradients are exercised.
        state["spline_weight"].normal_()
        state["spline_scale"].uniform_(0.5, 1.5)
    x = 1.3 * torch.randn(3, 31, 9)
    results = {}
    for impl, layer in layers.items():
        layer.load_state_dict(state)
        xi = x.clone().requires_grad_()
        y = layer(xi)
        assert y.shape == (3, 31, 5)
        (y * torch.linspace(-1, 1, 5)).sum().backward()
        results[impl] = [y, xi.grad] + [p.grad for p in layer.parameters()]
    for impl in ("dense", "recompute"):
        for a, b in zip(results[impl], results["reference"], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("grid_eps, tolerance", [(1.0, 0.01), (0.02, 0.1)])
def test_update_grid_keeps_the_function_on_in_grid_data(grid_eps, tolerance):
    torch.manual_seed(0)
    layer = KANLinear(8, 4, grid_range=(-1, 1))
    with torch.no_grad():
        layer.spline_weight.normal_()
    x = 0.5 * torch.randn(4000, 8)
    x = x[(x.abs() < 1).all(-1)]  # inputs inside the grid_range
    old_grid = layer.grid.clone()
    spline_before, base_before = layer.edge_functions(x)
    y_before = layer(x)
    layer.update_grid(x, grid_eps=grid_eps)
    assert not torch.equal(layer.grid, old_grid)
    spline_after, base_after = layer.edge_functions(x)
    torch.testing.assert_close(base_after, base_before)
    assert ((spline_after - spline_before).norm() / spline_before.norm()).item() < tolerance
    assert ((layer(x) - y_before).norm() / y_before.norm()).item() < tolerance
    # The knots follow the data: the interior now spans the samples' range per input.
    k = layer.spline_order
    assert (layer.grid[:, k] <= x.min(0).values).all() and (layer.grid[:, -k - 1] >= x.max(0).values).all()
    assert layer.grid_is_uniform() == (grid_eps == 1.0)


def test_after_a_nonuniform_grid_update_fast_impls_still_match_the_reference():
    torch.manual_seed(0)
    layer = KANLinear(6, 3, impl="recompute")
    layer.update_grid(torch.randn(500, 6) * torch.linspace(0.3, 2, 6))
    assert not layer.grid_is_uniform()
    reference = KANLinear(6, 3, impl="reference")
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(40, 6, requires_grad=True)
    torch.testing.assert_close(layer(x), reference(x), rtol=1e-5, atol=1e-5)


def test_state_dict_round_trip_restores_the_updated_grid_exactly():
    torch.manual_seed(0)
    layer = KANLinear(5, 4)
    layer.update_grid(torch.randn(300, 5), grid_eps=1.0)
    copy = KANLinear(5, 4)
    assert copy.grid_is_uniform()
    copy.load_state_dict(layer.state_dict())
    x = torch.randn(17, 5)
    assert torch.equal(copy(x), layer(x))


def test_update_grid_needs_enough_samples_and_the_bspline_basis():
    with pytest.raises(ValueError, match="at least G \\+ k"):
        KANLinear(3, 2).update_grid(torch.randn(4, 3))
    with pytest.raises(ValueError, match="basis='bspline'"):
        KANLinear(3, 2, basis="truncated_power").update_grid(torch.randn(100, 3))


def test_regularization_loss_is_l1_plus_entropy_of_the_edge_sizes():
    layer = KANLinear(3, 2, scale_spline=False)
    with torch.no_grad():
        layer.spline_weight.fill_(0.5)
    # All 6 edges the same size 0.5: l1 = 3, entropy = log 6 (its maximum).
    torch.testing.assert_close(layer.regularization_loss(1.0, 0.0), torch.tensor(3.0))
    torch.testing.assert_close(layer.regularization_loss(0.0, 1.0), torch.tensor(math.log(6)))
    with torch.no_grad():
        layer.spline_weight.zero_()
        layer.spline_weight[0, 0] = 2.0  # one edge left: l1 = 2, entropy 0
    torch.testing.assert_close(layer.regularization_loss(0.5, 1.0), torch.tensor(1.0))
    layer.regularization_loss().backward()
    assert layer.spline_weight.grad.abs().sum() > 0


def test_kan_ffn_reports_its_regularizer_through_the_context_only_when_asked():
    x = torch.randn(2, 5, 8)
    ctx = Context(scope="layer3")
    make_ffn("kan", 8)(x, ctx)
    assert ctx.aux == {}
    ffn = make_ffn("kan", 8, hidden_dim=6, reg_coef=0.01)
    ffn(x, ctx)
    assert set(ctx.aux) == {"layer3/kan_reg"}
    torch.testing.assert_close(ctx.aux["layer3/kan_reg"], 0.01 * ffn.regularization_loss())


def test_kan_ffn_options_reach_the_layers_and_bias_is_refused():
    ffn = make_ffn(
        "kan", 8, hidden_dim=4, grid_size=7, spline_order=2, grid_range=3.0, basis="truncated_power"
    )
    first = ffn.layers[0]
    assert (first.grid_size, first.spline_order, first.grid_range, first.basis) == (
        7,
        2,
        (-3.0, 3.0),
        "truncated_power",
    )
    assert make_ffn("kan", 8, grid_range=(-1, 2)).layers[0].grid_range == (-1.0, 2.0)
    with pytest.raises(ValueError, match="no bias"):
        make_ffn("kan", 8, bias=True)


@pytest.mark.parametrize("basis", ["bspline", "truncated_power"])
@pytest.mark.parametrize("hidden", [None, 0, 7])
def test_parameter_counts_match_the_modules(basis, hidden):
    ffn = KANFeedForward(12, hidden, grid_size=4, spline_order=2, basis=basis)
    assert sum(p.numel() for p in ffn.parameters()) == kan_ffn_params(12, hidden, 4, 2, basis=basis)
    assert kan_linear_params(12, 5, 4, 2, scale_spline=False) == 12 * 5 * (4 + 2 + 1)


def test_kan_ffn_shapes_by_hidden_dim_default_matches_a_4c_mlp():
    assert [len(KANFeedForward(40, h).layers) for h in (None, 0, 9)] == [2, 1, 2]
    default = KANFeedForward(40)
    assert default.hidden_dim == kan_hidden_for_params(40, 8 * 40 * 40) == 16  # 0.4 c at G=5, k=3
    params = sum(p.numel() for p in default.parameters())
    assert abs(params - 8 * 40 * 40) <= kan_ffn_params(40, 1) / 2
    with pytest.raises(ValueError, match="hidden_dim must be None"):
        KANFeedForward(8, -1)


def test_kan_hidden_for_params_picks_the_closest_width():
    dim = 128
    mlp = 2 * dim * 4 * dim
    hidden = kan_hidden_for_params(dim, mlp)
    gaps = {h: abs(kan_ffn_params(dim, h) - mlp) for h in range(1, 200)}
    assert gaps[hidden] == min(gaps.values())
    assert abs(kan_ffn_params(dim, hidden) - mlp) <= kan_ffn_params(dim, 1) / 2


def test_layer_rejects_bad_arguments_in_one_line():
    with pytest.raises(ValueError, match="grid_range"):
        KANLinear(3, 2, grid_range=(1, -1))
    with pytest.raises(ValueError, match="unknown KANLinear basis"):
        KANLinear(3, 2, basis="fourier")
    with pytest.raises(ValueError, match=r"inputs \[\.\.\., 3\]"):
        KANLinear(3, 2)(torch.randn(4, 5))


def test_truncated_power_knots_are_trained():
    torch.manual_seed(0)
    layer = KANLinear(4, 3, basis="truncated_power")
    with torch.no_grad():
        layer.spline_weight.normal_()
    layer(torch.randn(50, 4)).square().sum().backward()
    assert layer.knots.grad is not None and layer.knots.grad.abs().sum() > 0


def test_stack_model_with_attention_plus_kan_layers_trains():
    torch.manual_seed(0)
    cfg = StackConfig(
        vocab_size=16,
        dim=32,
        num_heads=2,
        max_seq_len=24,
        layers="attention+kan(hidden_dim=16, reg_coef=0.001)*2",
    )
    model = StackLM(cfg)
    assert all(type(block.ffn).__name__ == "KANFeedForward" for block in model.blocks)
    # A learnable pattern: a repeated random sequence of length 6.
    pattern = torch.randint(0, 16, (6,))
    ids = pattern.repeat(5)[:24].expand(8, -1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        out = model(ids, labels=ids)
        assert set(out.aux_losses) == {"layer0/kan_reg", "layer1/kan_reg"}
        loss = out.total_loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert math.isfinite(losses[-1]) and losses[-1] < 0.5 * losses[0]


def test_stack_kan_layers_match_the_mlp_layers_parameters_by_default():
    # A stack passes `kan` the MLP's hidden width (mlp_ratio * dim) to match, not as its own
    # width: "attention+kan" then has about the parameters of "attention+mlp".
    sizes = {}
    for ffn in ("mlp", "kan"):
        model = StackLM(
            StackConfig(vocab_size=16, dim=32, num_heads=2, max_seq_len=24, layers=f"attention+{ffn}*2")
        )
        sizes[ffn] = sum(p.numel() for block in model.blocks for p in block.ffn.parameters())
    assert abs(sizes["kan"] - sizes["mlp"]) / sizes["mlp"] < 0.1, sizes
