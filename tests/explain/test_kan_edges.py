"""seqlab.explain.kan_edges: the edge curves are the layer's own branches, the largest edges are
picked, one readable PNG per chosen KANLinear layer, the EXPLAINERS registry dispatches KAN
models here, and `seqlab explain` works on a trained run with kan feed-forwards."""

import matplotlib.image
import pytest
import torch

from seqlab.cli.main import main
from seqlab.errors import ConfigError
from seqlab.explain import EXPLAINERS
from seqlab.explain.kan_edges import accepts, edge_curves, explain_kan, kan_layers
from seqlab.layers.kan import KANLinear
from seqlab.models import build_model
from seqlab.models.stack import StackConfig, StackLM


@pytest.fixture
def model():
    torch.manual_seed(0)
    cfg = StackConfig(
        vocab_size=12, dim=8, num_heads=2, max_seq_len=8, layers="attention+kan(hidden_dim=6)*2"
    )
    return StackLM(cfg)


def test_edge_curves_are_the_layer_branches_and_pick_the_largest_edges():
    torch.manual_seed(0)
    layer = KANLinear(3, 2, grid_size=4)
    with torch.no_grad():
        layer.spline_weight.normal_()
        layer.base_weight.zero_()
        layer.base_weight[1, 2] = 5.0  # by far the largest edge
    curves = edge_curves(layer, points=50, edges=3)
    x = curves["x"]
    assert x.shape == (50, 3) and curves["spline"].shape == curves["base"].shape == (50, 2, 3)
    assert curves["edges"][0] == (1, 2) and len(curves["edges"]) == 3
    # The line spans each input's extended grid (and a little beyond).
    assert (x[0] < layer.grid[:, 0]).all() and (x[-1] > layer.grid[:, -1]).all()
    # At one input point, the edges' phi = spline + base summed over the inputs is the output.
    probe = x[10:11]
    expected = layer(probe)[0]
    got = (curves["spline"][10] + curves["base"][10]).sum(-1)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_explain_draws_one_png_per_chosen_layer(model, tmp_path):
    assert [name for name, _ in kan_layers(model)] == [
        "blocks.0.ffn.layers.0",
        "blocks.0.ffn.layers.1",
        "blocks.1.ffn.layers.0",
        "blocks.1.ffn.layers.1",
    ]
    paths, note = explain_kan(model, None, None, tmp_path, tmp_path / "out", layers=[1, 3], edges=3)
    assert [p.name for p in paths] == ["kan_layer1.png", "kan_layer3.png"] and note is None
    for path in paths:
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and min(image.shape[:2]) > 200
        assert image[..., :3].std() > 0.02  # something was drawn
    # Default: under the run's explain folder.
    (default,), _ = explain_kan(model, None, None, tmp_path, layers=[0], edges=1)
    assert default == tmp_path / "explain" / "kan_layer0.png"


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(layers=[4]), "out of range: the model has 4 KANLinear"), (dict(edges=0), "edges must be >= 1")],
)
def test_bad_choices_are_one_line_errors(model, tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        explain_kan(model, None, None, tmp_path, **kwargs)


def test_the_registry_dispatches_kan_models_here(model):
    assert accepts(model)
    assert next(explain for ok, explain in EXPLAINERS if ok(model)) is explain_kan
    gpt = build_model("gpt", "tiny", vocab_size=12)
    assert not accepts(gpt) and next(explain for ok, explain in EXPLAINERS if ok(gpt)) is not explain_kan


def test_cli_explain_on_a_trained_stack_with_kan_feed_forwards(tmp_path, capsys):
    run_dir = tmp_path / "kan"
    argv = ["train", "--model", "stack", "--preset", "tiny", "--max-iters", "2", "--no-progress"]
    argv += ["--run-dir", str(run_dir), "--set", "train.eval_iters=1", "train.sample_tokens=0"]
    argv += ["train.batch_size=4", "model.layers=attention+kan(hidden_dim=8)*2"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["explain", str(run_dir), "--layers", "2"]) == 0  # 16 edges: the default
    printed = capsys.readouterr().out.split()
    assert printed == [str(run_dir / "explain" / "kan_layer2.png")]
    assert matplotlib.image.imread(printed[0]).size
    assert main(["explain", str(run_dir), "--text", "hello"]) == 2
    err = capsys.readouterr().err
    assert "takes no text" in err and "Traceback" not in err


def test_cli_explain_on_a_trained_kat5_run(tmp_path, capsys):
    run_dir = tmp_path / "kat5"
    argv = ["train", "--model", "kat5", "--preset", "tiny", "--data", "reverse", "--max-iters", "2"]
    argv += ["--no-progress", "--run-dir", str(run_dir), "--set", "train.eval_iters=1"]
    argv += ["train.sample_tokens=0", "train.batch_size=4", "train.eval_decode=0"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["explain", str(run_dir), "--layers", "0"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(run_dir / "explain" / "kan_layer0.png")]
    assert matplotlib.image.imread(printed[0]).size
