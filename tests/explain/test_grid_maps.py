"""Grid attention maps (heptapod): one cell's weights per layer and head are distributions inside
its window, drawn as PNGs (layers, heads, cell chosen; centre by default); bad choices are one-
line errors; EXPLAINERS picks this explainer for grid models; `seqlab explain` end to end."""

import matplotlib.image
import pytest
import torch

from seqlab.cli.main import main
from seqlab.errors import ConfigError
from seqlab.explain import EXPLAINERS
from seqlab.explain.grid_maps import explain_grid, grid_attention
from seqlab.models import build_model
from seqlab.ops.local2d import neighbourhood_mask

GY, GX, V = 7, 9, 12


class StandInTask:
    """The grid tasks' example_grid interface: (tokens [gy, gx], condition or None)."""

    name = "grid"

    def __init__(self, condition=False):
        g = torch.Generator().manual_seed(0)
        self.grid = torch.randint(0, V, (GY, GX), generator=g)
        self.condition = torch.randint(0, 5, (GY, GX), generator=g) if condition else None

    def example_grid(self, split="val"):
        assert split == "val"
        return self.grid, self.condition


@pytest.fixture
def model():
    torch.manual_seed(0)
    # 2 blocks x 2 iterations, the second block global: 4 maps.
    return build_model("heptapod", "tiny", vocab_size=V, window=3, iterations=2, global_every=2)


def test_weights_are_distributions_inside_the_window(model):
    task = StandInTask()
    maps = grid_attention(model, task.grid, None, (0, 4))
    assert [m["window"] for m in maps] == [3, None, 3, None]
    window = neighbourhood_mask(GY, GX, 3).reshape(GY, GX, GY, GX)[0, 4]
    for m in maps:
        w = m["weights"]
        assert w.shape == (2, GY, GX) and not w.requires_grad
        torch.testing.assert_close(w.sum(dim=(-2, -1)), torch.ones(2))
        if m["window"] is not None:
            assert torch.count_nonzero(w[:, ~window]) == 0
        else:
            assert torch.count_nonzero(w[:, ~window]) > 0


def test_explain_draws_one_png_per_chosen_layer(model, tmp_path):
    paths, note = explain_grid(
        model, StandInTask(condition=False), None, tmp_path, cell=[1, 2], layers=[0, 3], heads=[1]
    )
    assert note is None
    assert [p.name for p in paths] == ["layer_0.png", "layer_3.png"]
    for path in paths:
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and min(image.shape[:2]) > 150 and image[..., :3].std() > 0.02


def test_explain_defaults_to_the_centre_all_layers_and_shows_the_condition(tmp_path):
    torch.manual_seed(0)
    model = build_model("heptapod", "tiny", vocab_size=V, condition_vocab_size=5)
    paths, _ = explain_grid(model, StandInTask(condition=True), None, tmp_path)
    assert [p.parent for p in paths] == [tmp_path / "explain"] * 2


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(cell=[7, 0]), "--cell must be ROW,COL inside the 7x9 grid"),
        (dict(cell=[1]), "--cell must be ROW,COL"),
        (dict(layers=[4]), r"--layers must be indices in 0..3"),
        (dict(heads=[2]), r"--heads must be indices in 0..1"),
    ],
)
def test_bad_choices_are_one_line_errors(model, tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        explain_grid(model, StandInTask(), None, tmp_path, **kwargs)


def test_the_registry_dispatches_grid_models_here(model):
    accepts, explain = next((a, e) for a, e in EXPLAINERS if a(model))
    assert explain is explain_grid
    gpt = build_model("gpt", "tiny", vocab_size=V)
    assert next(e for a, e in EXPLAINERS if a(gpt)) is not explain_grid


def test_cli_explain_on_a_trained_heptapod_run(tmp_path, capsys):
    run_dir = tmp_path / "heptapod"
    argv = ["train", "--model", "heptapod", "--preset", "tiny", "--max-iters", "2", "--no-progress"]
    argv += ["--run-dir", str(run_dir), "--set", "train.eval_iters=1", "train.sample_tokens=0"]
    assert main(argv + ["train.batch_size=4"]) == 0
    capsys.readouterr()
    assert main(["explain", str(run_dir), "--cell", "2,3", "--layers", "1", "--heads", "0"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(run_dir / "explain" / "layer_1.png")]
    assert matplotlib.image.imread(printed[0]).size
    assert main(["explain", str(run_dir), "--text", "hello"]) == 2
    err = capsys.readouterr().err
    assert "takes no text" in err and "Traceback" not in err
