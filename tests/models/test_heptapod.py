"""The heptapod model and HeptapodLM's API: the README's constructor runs as written, and
regression tests for the original's defects (1: constructor TypeError; 2: non-square grids,
rotary added to the stream; 3: no projections/heads, window ignored, per-cell loop; 4: residual
applied twice; 5, the model's part: a masked cell's own token cannot reach its logit), plus
config validation, iterations, global layers, conditioning, padding, raster causality, maps,
and a short training run whose loss falls."""

import pytest
import torch

from seqlab.errors import ConfigError
from seqlab.layers.block import Context
from seqlab.models import build_model, count_parameters
from seqlab.models.heptapod import HeptapodConfig, HeptapodModel
from seqlab.models.heptapod_seed import NonLinearTransformer

V = 11


def tiny(**overrides):
    torch.manual_seed(0)
    return build_model("heptapod", "tiny", vocab_size=V, **overrides).eval()


# ----- defect 1: the README's usage


def test_the_readme_constructor_runs_as_written():
    x = torch.randint(0, 100, (10, 10))
    model = NonLinearTransformer(
        vocab_size=100, embed_size=128, matrix_dim=10, heads=8, window_size=3, iterations=2
    )
    out = model(x)
    assert out.shape == (10, 10, 100)
    assert model(torch.randint(0, 100, (3, 10, 10))).shape == (3, 10, 10, 100)


def test_seed_api_non_square_and_smaller_grids_and_aliases():
    model = NonLinearTransformer(vocab_size=20, dim=32, matrix_dim=(6, 9), heads=2, window_size=3)
    assert model(torch.randint(0, 20, (6, 9))).shape == (6, 9, 20)
    assert model(torch.randint(0, 20, (2, 3, 4))).shape == (2, 3, 4, 20)  # smaller than matrix_dim
    torch.manual_seed(0)
    a = NonLinearTransformer(vocab_size=20, embed_size=32, heads=2)
    torch.manual_seed(0)
    b = NonLinearTransformer(vocab_size=20, dim=32, heads=2)
    x = torch.randint(0, 20, (5, 5))
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    assert len(a.model.blocks) == 2  # depth defaults to 2 distinct blocks
    deep = NonLinearTransformer(vocab_size=20, dim=32, heads=2, depth=3, iterations=4)
    assert len(deep.model.blocks) == 3 and deep.config.iterations == 4


def test_seed_api_errors_name_the_seeds_keywords():
    with pytest.raises(ConfigError, match="window_size must be odd"):
        NonLinearTransformer(vocab_size=10, embed_size=32, heads=2, window_size=4)
    with pytest.raises(ConfigError, match="heads=3 must divide embed_size=32"):
        NonLinearTransformer(vocab_size=10, embed_size=32, heads=3)
    with pytest.raises(ConfigError, match="disagree"):
        NonLinearTransformer(vocab_size=10, embed_size=32, dim=64)
    model = NonLinearTransformer(vocab_size=10, embed_size=32, heads=2, matrix_dim=8)
    with pytest.raises(ConfigError, match="matrix_dim"):
        model(torch.randint(0, 10, (9, 8)))


# ----- defect 2: non-square grids; positions rotate q and k


def test_non_square_grids_work_and_positions_are_not_added_to_the_stream():
    model = tiny()
    out = model(torch.randint(0, V, (2, 5, 9)), targets=torch.randint(0, V, (2, 5, 9)))
    assert out.logits.shape == (2, 5, 9, V) and torch.isfinite(out.loss)
    # The original added raw angles to the residual stream; here the embedding of a grid whose
    # cells are all one token is the same at every cell, so any position signal must come from
    # attention's q/k rotation: no parameter or buffer adds a per-cell vector.
    seen = {}
    model.blocks[0].register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    model(torch.full((1, 4, 6), 3))
    x = seen["x"]
    torch.testing.assert_close(x, x[:, :1, :1].expand_as(x), rtol=0, atol=0)


# ----- defect 3: projections, heads, the window in every block, no per-cell loop


def test_every_block_has_projections_heads_and_the_configured_window():
    model = tiny(window=5, num_layers=3)
    for block in model.blocks:
        attn = block.mixer
        assert attn.window == 5 and attn.num_heads == 2
        assert attn.qkv.weight.shape == (3 * 32, 32) and attn.proj.weight.shape == (32, 32)


@pytest.mark.parametrize("iterations,radius", [(1, 2), (2, 4)])
def test_the_receptive_field_is_window_times_blocks_times_iterations(iterations, radius):
    # window 3 (radius 1), 2 blocks: a centre cell sees `radius` cells away per axis, no further.
    model = tiny(window=3, iterations=iterations)
    grid = torch.randint(0, V, (1, 15, 15))
    with torch.no_grad():
        base = model(grid).logits[0, 7, 7]
        for offset, reaches in ((radius, True), (radius + 1, False)):
            edited = grid.clone()
            edited[0, 7, 7 + offset] = (edited[0, 7, 7 + offset] + 1) % V
            changed = (model(edited).logits[0, 7, 7] - base).abs().max() > 1e-6
            assert bool(changed) == reaches, (offset, reaches)


def _graph_size(output: torch.Tensor) -> int:
    seen, stack = set(), [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return len(seen)


def test_the_number_of_ops_does_not_grow_with_the_number_of_cells():
    # The original ran one softmax per cell; here 16 x 16 and 64 x 64 grids (16x the cells)
    # build the same autograd graph, node for node.
    model = tiny(max_grid=64)
    sizes = {g: _graph_size(model(torch.randint(0, V, (1, g, g))).logits) for g in (16, 32, 64)}
    assert len(set(sizes.values())) == 1, sizes


# ----- defect 4: the residual is added once


def test_activation_std_stays_bounded_with_depth_at_init():
    ratios = {}
    for depth in (2, 8, 16):
        model = tiny(num_layers=depth)
        with torch.no_grad():
            x = model.embed(torch.randint(0, V, (4, 8, 8)))  # the stream entering block 0
            stream = x
            ctx = Context(rotary=model.rotary(8, 8))
            for block in model.blocks:
                stream = block(stream, ctx)
        ratios[depth] = float(stream.std() / x.std())
    # Adding each residual twice doubles the stream per sublayer (2^32 at depth 16).
    assert ratios[16] < 1.5 and ratios[16] / ratios[2] < 1.3, ratios


# ----- defect 5, the model's part


def test_a_masked_cells_own_token_cannot_reach_its_logit():
    model = tiny()
    mask_token = V - 1
    grid = torch.randint(0, V - 1, (1, 6, 6))
    cell = (2, 3)
    with torch.no_grad():
        outputs = []
        for value in range(3):
            g = grid.clone()
            g[0, cell[0], cell[1]] = value
            unmasked = model(g).logits[0, cell[0], cell[1]]
            g[0, cell[0], cell[1]] = mask_token  # what a masked-modeling task feeds
            outputs.append((unmasked, model(g).logits[0, cell[0], cell[1]]))
    # Unmasked, the cell's own token shapes its logit (it lies in its own window) ...
    assert (outputs[0][0] - outputs[1][0]).abs().max() > 1e-4
    # ... masked, the logit is the same whatever the true value was.
    for _, masked in outputs[1:]:
        torch.testing.assert_close(masked, outputs[0][1], rtol=0, atol=0)


# ----- config, inputs, options


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("window", 4, "model.window must be odd"),
        ("window", 0, "model.window"),
        ("num_heads", 4, "model.num_heads"),  # dim 32 / 4 heads = 8: fine; see below
        ("iterations", 0, "model.iterations"),
        ("global_every", -1, "model.global_every"),
        ("condition_vocab_size", -2, "model.condition_vocab_size"),
        ("max_grid", [3, 0], "model.max_grid"),
        ("max_grid", [3, 4, 5], "model.max_grid"),
        ("impl", "natten", "model.impl"),
        ("mlp", "relu", "model.mlp"),
    ],
)
def test_bad_config_values_name_the_key(key, value, match):
    if key == "num_heads":
        value, match = 3, "model.num_heads"  # 32 is not divisible by 3
    with pytest.raises(ConfigError, match=match):
        build_model("heptapod", "tiny", **{key: value})


def test_head_dims_must_be_multiples_of_4():
    with pytest.raises(ConfigError, match="multiple of 4"):
        HeptapodConfig(dim=24, num_heads=4)


def test_max_grid_accepts_an_int_and_bigger_grids_are_an_error_naming_it():
    model = tiny(max_grid=6)
    assert model.max_grid == (6, 6)
    with pytest.raises(ConfigError, match=r"model\.max_grid=\[6, 6\]"):
        model(torch.randint(0, V, (1, 6, 7)))
    with pytest.raises(ConfigError, match="rows, cols"):
        model(torch.randint(0, V, (6, 6)))


def test_token_ids_out_of_range_are_an_error():
    with pytest.raises(ValueError, match="vocab_size"):
        tiny()(torch.full((1, 3, 3), V))


def test_iterations_share_weights_and_reapply_the_block_stack():
    once, twice = tiny(iterations=1), tiny(iterations=2)
    assert count_parameters(once) == count_parameters(twice)
    twice.load_state_dict(once.state_dict())
    grid = torch.randint(0, V, (2, 5, 6))
    seen = []
    hooks = [block.register_forward_hook(lambda m, args, out: seen.append(out)) for block in twice.blocks]
    with torch.no_grad():
        twice(grid)
        for hook in hooks:
            hook.remove()
        # By hand: the stack twice over the embedding, then the head.
        x = twice.embed(grid)
        ctx = Context(rotary=twice.rotary(5, 6))
        for _ in range(2):
            for block in twice.blocks:
                x = block(x, ctx)
    assert len(seen) == 2 * 2
    torch.testing.assert_close(seen[3], x, rtol=1e-5, atol=1e-6)
    assert (once(grid).logits - twice(grid).logits).abs().max() > 1e-4


def test_global_every_n_blocks_attend_to_the_whole_grid():
    model = tiny(num_layers=4, global_every=2)
    assert [b.mixer.window for b in model.blocks] == [7, None, 7, None]
    assert [b.mixer.window for b in tiny(num_layers=3).blocks] == [7, 7, 7]


def test_the_condition_grid_is_embedded_and_required():
    model = tiny(condition_vocab_size=5)
    grid = torch.randint(0, V, (2, 4, 5))
    cond = torch.randint(0, 5, (2, 4, 5))
    with torch.no_grad():
        a = model(grid, condition=cond).logits
        b = model(grid, condition=(cond + 1) % 5).logits
    assert (a - b).abs().max() > 1e-4
    with pytest.raises(ConfigError, match="pass condition"):
        model(grid)
    with pytest.raises(ConfigError, match="shape"):
        model(grid, condition=cond[:, :3])
    with pytest.raises(ConfigError, match="condition_vocab_size=0"):
        tiny()(grid, condition=cond)


def test_padding_cells_never_change_the_real_cells_logits():
    model = tiny(global_every=2)
    grid = torch.randint(0, V, (2, 6, 7))
    real = torch.ones(2, 6, 7, dtype=torch.bool)
    real[:, 4:] = False
    real[0, :, 5:] = False
    other = torch.where(real, grid, torch.randint(0, V, grid.shape))
    with torch.no_grad():
        a = model(grid, padding_mask=real).logits
        b = model(other, padding_mask=real).logits
    torch.testing.assert_close(a[real], b[real], rtol=1e-5, atol=1e-5)


def test_a_causal_model_never_looks_ahead_in_raster_order():
    model = tiny(causal=True, global_every=2)
    assert model.causal
    grid = torch.randint(0, V, (2, 5, 6))
    s = 14
    edited = grid.clone().reshape(2, -1)
    edited[:, s:] = (edited[:, s:] + 1) % V
    with torch.no_grad():
        a = model(grid).logits.reshape(2, 30, V)
        b = model(edited.reshape(2, 5, 6)).logits.reshape(2, 30, V)
    torch.testing.assert_close(a[:, :s], b[:, :s], rtol=1e-5, atol=1e-6)
    assert (a[:, s:] - b[:, s:]).abs().max() > 1e-4


def test_return_maps_gives_one_map_per_block_application():
    model = tiny(iterations=2)
    out = model(torch.randint(0, V, (1, 4, 5)), return_maps=True)
    assert len(out.maps) == 4
    assert all(m["attention"].shape == (1, 2, 4, 5, 4, 5) for m in out.maps)
    assert model(torch.randint(0, V, (1, 4, 5))).maps is None


def test_loss_ignores_minus_100_targets():
    model = tiny()
    grid = torch.randint(0, V, (2, 4, 4))
    targets = grid.clone()
    targets[:, :2] = -100
    out = model(grid, targets=targets)
    logits = out.logits[:, 2:].reshape(-1, V)
    expected = torch.nn.functional.cross_entropy(logits, grid[:, 2:].reshape(-1))
    torch.testing.assert_close(out.loss, expected)


def test_a_short_training_run_lowers_the_loss():
    # Each target cell is its left neighbour (wrapping): learnable only through attention.
    torch.manual_seed(0)
    model = HeptapodModel(HeptapodConfig(vocab_size=V, dim=32, num_layers=2, num_heads=2, window=3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(80):
        grid = torch.randint(0, V, (8, 6, 6), generator=gen)
        targets = grid.roll(1, dims=2)
        targets[:, :, 0] = -100
        loss = model(grid, targets=targets).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5, losses[::10]
