"""seqlab.explain: LEAP focus maps (shapes, rows are distributions, causal and windowed) drawn
as readable PNGs in both styles, `seqlab explain` end to end on a trained run, and a one-line
error for a model without the focus-map capability (gpt, fastformer)."""

import matplotlib.image
import pytest
import torch

from seqlab.cli.main import main
from seqlab.errors import ConfigError
from seqlab.explain import focus_maps, render_focus_maps
from seqlab.models import build_model

T = 11


@pytest.fixture
def leap():
    torch.manual_seed(0)
    # tiny preset: 2 layers, global then window 4; two heads of dim 32 exercise head selection.
    return build_model("leap", "tiny", vocab_size=20, dim=64, num_heads=2)


@pytest.fixture
def maps(leap):
    return focus_maps(leap, torch.randint(0, 20, (1, T)))


def tokens():
    return [chr(ord("a") + i) for i in range(T)]


def test_focus_maps_are_causal_windowed_distributions(leap):
    leap.train()
    maps = focus_maps(leap, torch.randint(0, 20, (1, T)))
    assert leap.training  # focus_maps runs in eval mode and restores the caller's mode
    assert [m["window"] for m in maps] == [None, 4] == leap.config.layer_windows()
    for m in maps:
        attention, gate = m["attention"], m["gate"]
        assert attention.shape == (2, T, T) and gate.shape == (T, 2)
        assert attention.device.type == "cpu" and not attention.requires_grad
        torch.testing.assert_close(attention.sum(-1), torch.ones(2, T), atol=1e-4, rtol=0)
        assert (gate > 0).all() and (gate < 1).all()
        assert attention.triu(1).abs().max() == 0  # no focus on future tokens
    assert maps[1]["attention"].tril(-4).abs().max() == 0  # nothing beyond the window of 4


@pytest.mark.parametrize("style", ["lines", "matrix"])
def test_render_writes_one_readable_png_per_layer(maps, tmp_path, style):
    paths = render_focus_maps(maps, tokens(), tmp_path, style=style, title='"abc"')
    assert [p.name for p in paths] == [f"layer0_{style}.png", f"layer1_{style}.png"]
    for path in paths:
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and min(image.shape[:2]) > 200
        assert image[..., :3].std() > 0.02  # something was drawn
        assert path.stat().st_size > 20_000


def test_render_selects_layers_heads_and_highlights_a_query(maps, tmp_path):
    paths = render_focus_maps(maps, tokens(), tmp_path, layers=[1], heads=[1], query=-1)
    assert [p.name for p in paths] == [f"layer1_lines_query{T - 1}.png"]
    both_heads = render_focus_maps(maps, tokens(), tmp_path / "all", layers=[1])
    assert matplotlib.image.imread(paths[0]).shape[1] < matplotlib.image.imread(both_heads[0]).shape[1]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(layers=[2]), "layers [2] do not exist: the model has layers 0..1"),
        (dict(heads=[0, 5]), "heads [5] do not exist"),
        (dict(style="pie"), "unknown style 'pie'"),
        (dict(query=T), f"query {T} is outside the {T} tokens"),
    ],
)
def test_render_rejects_bad_choices(maps, tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        render_focus_maps(maps, tokens(), tmp_path, **kwargs)


@pytest.mark.parametrize("name", ["gpt", "fastformer"])
def test_a_model_without_focus_maps_is_a_clear_error(name):
    # Decided by the model's explicit capability, not by its forward's signature.
    model = build_model(name, "tiny", vocab_size=20)
    assert not getattr(model, "supports_focus_maps", False)  # a model may lack the attribute
    with pytest.raises(ConfigError, match=f"explain needs a LEAP checkpoint.*{type(model).__name__}"):
        focus_maps(model, torch.zeros(1, 4, dtype=torch.long))


def _train(run_dir, model):
    argv = ["train", "--model", model, "--preset", "tiny", "--max-iters", "2", "--no-progress"]
    argv += ["--run-dir", str(run_dir), "--set", "train.eval_iters=1", "train.sample_tokens=0"]
    assert main(argv + ["train.batch_size=4"]) == 0


@pytest.fixture(scope="module")
def leap_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("explain") / "leap"
    _train(run_dir, "leap")
    return run_dir


def test_cli_explain_writes_pngs_into_the_run(leap_run, capsys):
    capsys.readouterr()
    assert main(["explain", str(leap_run), "--text", "ROMEO: hello"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(leap_run / "explain" / f"layer{i}_lines.png") for i in range(2)]
    assert all(matplotlib.image.imread(path).size for path in printed)


def test_cli_explain_options_and_truncation(leap_run, tmp_path, capsys):
    text = "ROMEO: " + "hello there, " * 5  # longer than the tiny model's 32 positions
    argv = ["explain", str(leap_run), "--text", text, "--out", str(tmp_path), "--style", "matrix"]
    capsys.readouterr()
    assert main(argv + ["--layers", "1", "--heads", "0", "--query", "-1", "--checkpoint", "latest"]) == 0
    out, err = capsys.readouterr()
    assert out.split() == [str(tmp_path / "layer1_matrix_query31.png")]
    assert f"showing the last 32 of {len(text)} tokens" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--text", "ROMEO: €"], "not in the char tokenizer's vocabulary"),
        (["--text", ""], "the text to explain is empty"),
        (["--text", "hi", "--layers", "7"], "layers [7] do not exist"),
        (["--text", "hi", "--max-tokens", "99"], "max_tokens must be in 1..32"),
    ],
)
def test_cli_explain_user_errors_are_one_line(leap_run, argv, message, capsys):
    assert main(["explain", str(leap_run), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("name", ["gpt", "fastformer"])
def test_cli_explain_on_a_run_without_focus_maps_says_it_needs_leap(tmp_path, capsys, name):
    # Fastformer used to pass the old signature check and die with a traceback in its mixer.
    run_dir = tmp_path / name
    _train(run_dir, name)
    capsys.readouterr()
    assert main(["explain", str(run_dir), "--text", "ROMEO: hello"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "explain needs a LEAP checkpoint" in err and f"'{name}'" in err
    assert "seqlab train --model leap" in err
    assert not (run_dir / "explain").exists()
