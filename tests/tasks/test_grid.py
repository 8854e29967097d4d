"""The grid tasks: task resolution, layouts, losses, bits per cell, MaskGIT, decoding metrics,
and training through the one trainer (heptapod and the gpt raster baseline): resume, eval,
generate, padding, non-square grids, and the original's label leak (spec defect 5)."""

import json
import math
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from torch import nn

from seqlab.cli.main import main
from seqlab.data.grids import load_grid_data
from seqlab.errors import ConfigError, DataError
from seqlab.models import MODELS, ModelEntry, build_model
from seqlab.models.heptapod import HeptapodConfig, HeptapodModel
from seqlab.models.output import ModelOutput
from seqlab.tasks import grid_codec as codec
from seqlab.tasks.grid import Grid2GridTask, GridTask, ModelKind, resolve_task
from seqlab.tasks.grid_decode import chunk_order, chunked_nll, maskgit_decode
from seqlab.train import load_run_config, train
from seqlab.train.metrics import losses, read_metrics
from seqlab.train.runs import build_model_for_task, build_task, load_run, resume_config

FAST = [
    "model.preset=tiny",
    "train.batch_size=8",
    "train.max_iters=2",
    "train.eval_interval=2",
    "train.eval_iters=1",
    "train.eval_decode=4",
    "train.warmup_iters=0",
    "train.sample_tokens=0",
    "train.progress=false",
    "task_options.val_size=8",
]
GRID2D = ModelKind(grid=True, causal=False)


def _cfg(*overrides):
    return load_run_config(overrides=[*FAST, *overrides])


def _val_rows(run):
    return [r for r in read_metrics(run / "metrics.jsonl") if r["split"] == "val"]


@pytest.fixture
def random_text(tmp_path):
    """Grids of independent uniform cells (4 values): nothing to learn but the label, if leaked."""
    rng = np.random.default_rng(0)
    path = tmp_path / "random.txt"
    path.write_text("\n".join("".join(rng.choice(list("abcd"), 4)) for _ in range(4000)))
    return path


# ----- stand-in models


@dataclass
class CellConfig:
    vocab_size: int = 16
    condition_vocab_size: int = 0
    max_grid: list[int] = field(default_factory=lambda: [8, 8])
    causal: bool = False


class PerCellModel(nn.Module):
    """Each cell's logits from its own input token only (no neighbour): a masked cell can be
    predicted above chance only if its own token is in the input, i.e. if the label leaks."""

    def __init__(self, cfg: CellConfig):
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab_size, 32)
        self.head = nn.Sequential(nn.GELU(), nn.Linear(32, cfg.vocab_size))

    def forward(self, grid, condition=None, targets=None, padding_mask=None, return_maps=False):
        return ModelOutput(logits=self.head(self.embed(grid)))


@pytest.fixture
def cellnet(monkeypatch):
    entry = ModelEntry(
        CellConfig, PerCellModel, {"tiny": {}}, "grid", "per-cell stand-in", tasks=("grid2grid",)
    )
    monkeypatch.setitem(MODELS, "cellnet", entry)


class ZeroGrid(nn.Module):
    """Equal logits everywhere: every cell value equally likely."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab

    def forward(self, grid, condition=None, targets=None, padding_mask=None, return_maps=False):
        return ModelOutput(logits=torch.zeros(*grid.shape, self.vocab))


class ZeroLM(ZeroGrid):
    def forward(self, input_ids, attention_mask=None, **kwargs):
        return ModelOutput(logits=torch.zeros(*input_ids.shape, self.vocab))


class Oracle2D(nn.Module):
    """Predicts the target canvas of a known input canvas (a lookup): decoding must then be exact."""

    causal = True  # for the raster objective it ignores the grid, so nothing leaks either way

    def __init__(self, pairs, shape, vocab):
        super().__init__()
        self.answers = {codec.canvas(i, shape).tobytes(): codec.canvas(o, shape) for i, o in pairs}
        self.vocab = vocab
        self.weight = nn.Parameter(torch.zeros(()))

    def forward(self, grid, condition=None, targets=None, padding_mask=None, return_maps=False):
        target = torch.stack([torch.from_numpy(self.answers[c.numpy().tobytes()]) for c in condition.cpu()])
        return ModelOutput(logits=10.0 * nn.functional.one_hot(target, self.vocab).float() + self.weight)


class OracleLM(nn.Module):
    """A 1D LM that writes the raster output of a known input after its SEP (a lookup)."""

    def __init__(self, pairs, vocab):
        super().__init__()
        self.answers = {
            tuple(codec.raster_pair_prefix(i).tolist()): codec.raster_pair_sequence(i, o)[1] for i, o in pairs
        }
        self.vocab = vocab
        self.weight = nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, attention_mask=None, **kwargs):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        for b, row in enumerate(input_ids.tolist()):
            start = row.index(codec.BOS)  # left pads before it
            sep = row.index(codec.SEP, start)
            targets = self.answers[tuple(row[start : sep + 1])]
            for t in range(sep, min(len(row), start + len(targets))):
                logits[b, t, targets[t - start]] = 10.0
        return ModelOutput(logits=logits + self.weight)


# ----- which task, which objective


def test_the_data_picks_the_task_when_the_config_names_none():
    assert resolve_task("grid", ("grid", "grid2grid"), None) == "grid2grid"  # heptapod: mazes
    assert resolve_task("grid", ("grid", "grid2grid"), "digits") == "grid"
    assert resolve_task("grid", ("grid", "grid2grid"), "arc") == "grid"
    assert resolve_task("lm", ("lm", "grid", "grid2grid"), "mazes") == "grid2grid"  # gpt: the raster baseline
    assert resolve_task("lm", ("lm", "grid", "grid2grid"), None) == "lm"
    assert resolve_task("lm", ("lm",), "mazes") == "lm"  # a model that takes no grid task keeps its own
    cfg = load_run_config(overrides=["model.name=heptapod", "model.preset=tiny"])
    assert cfg.task == "grid2grid"
    assert load_run_config(overrides=["model.name=heptapod", "task=grid"]).task == "grid"  # named: kept
    assert load_run_config(overrides=["model.name=gpt", "data.source=digits"]).task == "grid"


def test_objectives_follow_the_model_and_bad_options_are_one_line_errors():
    task = build_task(_cfg("model.name=heptapod"))
    assert isinstance(task, Grid2GridTask) and task.objective == "masked" and task.mask_schedule == "full"
    assert build_task(_cfg("model.name=heptapod", "model.causal=true")).objective == "raster"
    assert build_task(_cfg("model.name=gpt", "data.source=mazes")).objective == "raster"
    cases = [
        (["model.name=gpt", "data.source=mazes", "task_options.objective=masked"], "needs a bidirectional"),
        (["model.name=heptapod", "task_options.objective=raster"], "needs a causal model"),
        (["model.name=heptapod", "task_options.decode=beam"], "task_options.decode='beam' must be one of"),
        (["model.name=heptapod", "task_options.mask_schedule=linear"], "mask_schedule='linear'"),
        (["model.name=heptapod", "task_options.decode_steps=0"], "decode_steps=0 must be an int >= 1"),
        (["model.name=heptapod", "task=grid", "task_options.eval_chunks=0"], "eval_chunks=0"),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message) as err:
            build_task(_cfg(*overrides))
        assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="grid2grid needs input/output pairs.*--task grid"):
        build_task(_cfg("model.name=heptapod", "task=grid2grid", "data.source=digits"))


def test_model_requirements_for_2d_models_and_raster_lms():
    cfg = _cfg("model.name=heptapod", "data.grid=[7, 11]")
    task = build_task(cfg)
    model, model_cfg = build_model_for_task(cfg, task)
    assert model_cfg.max_grid == [7, 11] and model_cfg.vocab_size == 6 + 5
    assert model_cfg.condition_vocab_size == 6 + 5
    cfg = _cfg("model.name=gpt", "data.source=mazes", "data.grid=[7, 11]")
    _, model_cfg = build_model_for_task(cfg, build_task(cfg))
    assert model_cfg.max_seq_len == 1 + 7 * 12 + 1 + 7 * 12  # BOS input SEP output (EOS is never read)


# ----- layouts


def test_canvas_size_markers_round_trip_and_raster_layouts():
    grid = np.array([[1, 2, 3], [4, 5, 6]])
    tokens = codec.canvas(grid, (4, 5))
    assert tokens.tolist() == [
        [7, 8, 9, codec.NL, codec.PAD],
        [10, 11, 12, codec.NL, codec.PAD],
        [codec.EOS] * 4 + [codec.PAD],
        [codec.PAD] * 5,
    ]
    assert np.array_equal(codec.crop_canvas(tokens), grid)
    assert np.array_equal(codec.crop_canvas(codec.canvas(grid, (2, 3))), grid)  # fills the canvas: no marker
    inputs, targets = codec.raster_grid_sequence(grid)
    assert inputs.tolist() == [codec.BOS, 7, 8, 9, codec.NL, 10, 11, 12]
    assert targets.tolist() == [7, 8, 9, -100, 10, 11, 12, -100]  # NL is given, not predicted
    inputs, targets = codec.raster_pair_sequence(grid, grid[:1])
    assert codec.parse_raster(targets[targets != -100].tolist()) == [[1, 2, 3]]
    assert (targets[: len(codec.raster_pair_prefix(grid)) - 1] == -100).all()
    assert codec.shift_raster(np.arange(6).reshape(2, 3)).tolist() == [[codec.BOS, 0, 1], [2, 3, 4]]
    assert codec.compare([[1, 2, 3], [4, 5]], grid) == (False, 5)
    assert codec.compare(grid.copy(), grid) == (True, 6)


def test_masking_follows_the_cosine_schedule_and_never_shows_a_masked_label():
    data = load_grid_data("mazes", grid=9, val_size=4)
    task = GridTask(data, GridTask.Options(val_size=4), GRID2D)
    gen = torch.Generator().manual_seed(0)
    fractions = []
    for _ in range(40):
        batch = task.batch("train", 16, gen)
        masked = batch["targets"] != -100
        assert (batch["grid"][masked] == codec.MASK).all()  # a target's own token is never in the input
        assert (batch["grid"][~masked] >= codec.CELL0).all() and masked.flatten(1).sum(1).min() >= 1
        fractions += (masked.flatten(1).float().mean(1)).tolist()
    # r = cos(pi/2 u), u ~ U(0, 1): E[r] = 2/pi, P(r > 1/2) = 2/3.
    assert np.mean(fractions) == pytest.approx(2 / math.pi, abs=0.04)
    assert np.mean(np.array(fractions) > 0.5) == pytest.approx(2 / 3, abs=0.06)


def test_arc_batches_pad_to_the_largest_grid_and_pads_never_count():
    data = load_grid_data("arc")
    task = GridTask(data, GridTask.Options(), GRID2D)
    batch = task.batch("train", 8, torch.Generator().manual_seed(1))
    real = batch["padding_mask"]
    assert real.shape[1] != real.shape[2] or not real.all()  # non-square or padded grids in one batch
    assert (batch["grid"][~real] == codec.PAD).all() and (batch["targets"][~real] == -100).all()
    assert task.count_tokens(batch) == int(real.sum())
    val = task.batch("val", 4, torch.Generator().manual_seed(2))
    assert ((val["chunk"] >= 0) == val["padding_mask"]).all()


def test_augmentation_applies_one_symmetry_and_colour_permutation_to_both_grids():
    data = load_grid_data("arc")
    task = Grid2GridTask(data, Grid2GridTask.Options(), GRID2D)
    assert task.augment  # arc's default
    inp, out = data.pairs["train"][0]
    gen = torch.Generator().manual_seed(3)
    a_in, a_out = task._augment([inp, out], gen)
    found = None
    for k in range(8):
        from seqlab.data.grids import dihedral

        d_in, d_out = dihedral(inp, k), dihedral(out, k)
        if d_in.shape == a_in.shape and d_out.shape == a_out.shape:
            # the same colour map sends d_in to a_in and d_out to a_out, and keeps black
            mapping = {}
            ok = all(mapping.setdefault(int(s), int(t)) == int(t) for s, t in zip(d_in.flat, a_in.flat))
            ok = ok and all(
                mapping.setdefault(int(s), int(t)) == int(t) for s, t in zip(d_out.flat, a_out.flat)
            )
            if ok and mapping.get(0, 0) == 0:
                found = k
    assert found is not None


# ----- bits per cell


def test_bits_per_cell_of_a_uniform_model_is_log2_of_the_cell_values():
    data = load_grid_data("mazes", grid=9, val_size=8)
    for kind, model in (
        (GRID2D, ZeroGrid(11)),
        (ModelKind(grid=True, causal=True), ZeroGrid(11)),
        (ModelKind(grid=False, causal=True), ZeroLM(11)),
    ):
        task = GridTask(data, GridTask.Options(val_size=8), kind)
        _, metrics = task.loss(model, task.batch("val", 4, torch.Generator().manual_seed(0)))
        bits = task.eval_summary(float(metrics["cell_loss"]))["bits_per_cell"]
        assert bits == pytest.approx(math.log2(5), rel=1e-5)


def test_the_chunked_reveal_factorization_is_a_distribution_over_grids():
    """Summed over all 2^(2x3) binary grids, prod_k prod_{i in chunk k} p(x_i | revealed) is 1."""
    torch.manual_seed(0)

    class Mixer(nn.Module):  # every cell's logits depend on every visible cell
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(8, 4)
            self.mix = nn.Linear(6 * 4, 6 * 8)

        def forward(self, grid, condition=None, targets=None, padding_mask=None, return_maps=False):
            return ModelOutput(logits=self.mix(self.embed(grid).flatten(1)).view(*grid.shape, 8))

    model = Mixer()
    real = torch.ones(1, 2, 3, dtype=torch.bool)
    chunk = chunk_order(real, 3, torch.Generator().manual_seed(5))
    assert sorted(chunk.flatten().tolist()) == [0, 0, 1, 1, 2, 2]
    total = 0.0
    with torch.no_grad():
        for code in range(2**6):
            values = torch.tensor([(code >> i) & 1 for i in range(6)]).view(1, 2, 3)
            nll, *_ = chunked_nll(model, values + codec.CELL0, real, chunk, 3, codec.CELL0, codec.CELL0 + 2)
            total += math.exp(-float(nll))
    assert total == pytest.approx(1.0, rel=1e-5)


# ----- decoding


def test_maskgit_keeps_prompted_cells_and_follows_the_cosine_schedule():
    torch.manual_seed(0)
    model = HeptapodModel(
        HeptapodConfig(vocab_size=11, max_grid=[6, 6], dim=32, num_layers=1, num_heads=2, window=3)
    )
    seen = []
    model.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(int((args[0] == codec.MASK).sum())), with_kwargs=True
    )
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(codec.CELL0, 11, (2, 6, 6), generator=gen)
    known = torch.rand(2, 6, 6, generator=gen) < 0.3
    out = maskgit_decode(model, tokens, known, torch.arange(codec.CELL0, 11), steps=4, generator=gen)
    assert torch.equal(out[known], tokens[known])
    assert (out >= codec.CELL0).all()  # every unknown cell decided
    n = (~known).flatten(1).sum(1)
    expected = [int(n.sum())] + [int(torch.floor(n * math.cos(math.pi / 2 * s / 4)).sum()) for s in (1, 2, 3)]
    assert seen == expected


def test_oracles_decode_exactly_in_every_decoding_mode():
    """Decoding, cropping and scoring are right: a model that knows the answers scores 1.0."""
    data = load_grid_data("arc", grid=10)
    pairs = data.pairs["val"][:6]
    shape = data.max_grid
    for options, kind in (
        (dict(decode="one_pass"), GRID2D),
        (dict(decode="iterative", decode_steps=3), GRID2D),
        (dict(), ModelKind(grid=True, causal=True)),
    ):
        task = Grid2GridTask(data, Grid2GridTask.Options(**options), kind)
        metrics = task.decode_metrics(Oracle2D(pairs, shape, task.vocab_size), "val", 6)
        assert metrics == {"exact_match": 1.0, "cell_accuracy": 1.0}, options
    task = Grid2GridTask(data, Grid2GridTask.Options(), ModelKind(grid=False, causal=True))
    assert len({i.shape for i, _ in pairs}) > 1  # ragged prefixes: left-padded
    assert task.decode_metrics(OracleLM(pairs, task.vocab_size), "val", 6) == {
        "exact_match": 1.0,
        "cell_accuracy": 1.0,
    }
    # A wrong answer: the zero model writes no cell; cell accuracy counts the target's cells.
    assert task.decode_metrics(ZeroLM(task.vocab_size), "val", 6) == {
        "exact_match": 0.0,
        "cell_accuracy": 0.0,
    }


def test_gpt_raster_decoding_with_the_kv_cache_equals_recomputing():
    data = load_grid_data("arc", grid=6)
    task = Grid2GridTask(data, Grid2GridTask.Options(), ModelKind(grid=False, causal=True))
    torch.manual_seed(0)
    model = build_model(
        "gpt", "tiny", vocab_size=task.vocab_size, max_seq_len=task.raster_length(), init_std=0.5
    ).eval()

    class Uncached(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args, **kwargs):
            return self.inner(*args, **kwargs)

    same_size = [i for i, _ in data.pairs["val"] if i.shape == data.pairs["val"][0][0].shape][:3]
    cached, uncached = task.solve(model, same_size), task.solve(Uncached(model), same_size)
    assert cached == uncached
    ragged = [i for i, _ in data.pairs["val"][:5]]
    assert len({i.shape for i in ragged}) > 1
    assert task.solve(model, ragged) == task.solve(Uncached(model), ragged)


# ----- training through the one trainer


def test_heptapod_solves_mazes_by_default_and_resumes_evaluates_and_generates(tmp_path, capsys):
    run, whole = tmp_path / "maze", tmp_path / "whole"
    common = ["model.name=heptapod", "data.grid=7", "train.eval_interval=2", "train.sample_tokens=1"]
    common += ["train.lr_decay_iters=4", "train.log_interval=1"]  # the same schedule in both runs
    train(_cfg(*common, "train.max_iters=4", f"run_dir={whole}"))
    train(_cfg(*common, f"run_dir={run}"))
    state = json.loads((run / "task.json").read_text())
    assert (
        state["task"] == "grid2grid"
        and state["state"]["data"] == "mazes"
        and state["state"]["grid"] == [7, 7]
    )
    train(resume_config(run, ["train.max_iters=4"]), resume=run)
    assert losses(run) == losses(whole) and losses(run, "val") == losses(whole, "val")  # exact resume
    assert _val_rows(run)[-1]["loss"] < _val_rows(run)[0]["loss"]  # it learns
    val = _val_rows(run)[-1]
    assert {"exact_match", "cell_accuracy", "bits_per_target", "argmax_accuracy"} <= set(val)
    assert (run / "grid2grid_samples.png").stat().st_size > 1000
    capsys.readouterr()
    assert main(["eval", str(run), "--checkpoint", "latest"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert (
        evaluated["loss"] == pytest.approx(val["loss"], rel=1e-5)
        and evaluated["exact_match"] == val["exact_match"]
    )
    (run / "grid2grid_samples.png").unlink()
    assert main(["generate", str(run), "--checkpoint", "latest", "--max-new-tokens", "2"]) == 0
    text = capsys.readouterr().out
    assert "2 validation pairs" in text and "input" in text and "#######" in text
    assert (run / "grid2grid_samples.png").is_file()
    assert main(["generate", str(run), "--temperature", "0.5"]) == 2
    assert "grid2grid task's samples take no temperature" in capsys.readouterr().err


def test_gpt_raster_baseline_and_heptapod_model_digits_and_generate_from_a_prompt(tmp_path, capsys):
    for model in ("gpt", "heptapod"):
        run = tmp_path / model
        train(_cfg(f"model.name={model}", "data.source=digits", f"run_dir={run}"))
        val = _val_rows(run)[-1]
        assert val["bits_per_cell"] == pytest.approx(val["loss"] / math.log(2)) and "exact_match" not in val
        model_obj, task, _, _ = load_run(run, "latest")
        assert task.objective == ("raster" if model == "gpt" else "masked")
        grid, condition = task.example_grid()
        assert grid.shape == (8, 8) and condition is None
        capsys.readouterr()
        prompt = "00000000/0000gggg"
        assert main(["generate", str(run), "--prompt", prompt, "--max-new-tokens", "2", "--seed", "1"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[1].split() == ["sample", "1", "sample", "2"]  # side by side
        grids = [[row.split()[i] for row in lines[2:10]] for i in range(2)]
        assert len(grids) == 2 and all(
            g[0] == "00000000" and g[1][:4] == "0000" and g[1][4:] == "gggg" for g in grids
        )
        assert (run / "grid_samples.png").is_file()
    with pytest.raises(ConfigError, match="no cell of the digits grids"):
        task.sample(model_obj, prompt="0x")


def test_non_square_grids_train_in_row_col_order(tmp_path):
    """The original crashed on its axis order; batches here are [b, gy, gx] with gy != gx."""
    for extra in (
        ["data.grid=[7, 11]"],
        ["data.grid=[7, 11]", "task=grid"],
        ["data.grid=[7, 11]", "model.causal=true"],
    ):
        cfg = _cfg("model.name=heptapod", *extra, f"run_dir={tmp_path / '-'.join(extra)}")
        task = build_task(cfg)
        batch = task.batch("train", 2, torch.Generator().manual_seed(0))
        assert batch["grid"].shape == (2, 7, 11)
        result = train(cfg)
        assert result.step == 2 and math.isfinite(result.val_loss)


def _train_accuracy(tmp_path, name, *overrides):
    run = tmp_path / name
    train(
        _cfg(
            *overrides,
            "task=grid",
            "data.grid=[4, 4]",
            "train.max_iters=40",
            "train.eval_interval=40",
            "train.eval_iters=4",
            "train.lr=1e-2",
            "train.log_interval=40",
            f"run_dir={run}",
        )
    )
    return _val_rows(run)[-1]["argmax_accuracy"], [
        r for r in read_metrics(run / "metrics.jsonl") if r["split"] == "train"
    ][-1]


def test_no_label_leak_a_model_cannot_learn_random_grids(tmp_path, random_text, cellnet, monkeypatch):
    """Spec defect 5: the original's target cell lay inside its own input window. On uniform
    random cells (chance 1/4) no prediction may beat chance by much: masked (a per-cell model and
    heptapod), raster (gpt and causal heptapod). The control shows the budget is enough to learn
    a leaked label."""
    source = f"data.source={random_text}"
    for name, overrides in (
        ("cell", ["model.name=cellnet"]),
        ("heptapod", ["model.name=heptapod"]),
        ("gpt", ["model.name=gpt"]),
        ("causal", ["model.name=heptapod", "model.causal=true"]),
    ):
        val_acc, last_train = _train_accuracy(tmp_path, name, source, *overrides)
        assert val_acc < 0.4 and last_train["argmax_accuracy"] < 0.4, name
    original = GridTask.batch

    def leaky(self, split, batch_size, generator):  # the original's bug: the input holds the label
        batch = original(self, split, batch_size, generator)
        if "targets" in batch and "grid" in batch:
            batch["grid"] = torch.where(batch["targets"] >= 0, batch["targets"], batch["grid"])
        return batch

    monkeypatch.setattr(GridTask, "batch", leaky)
    _, last_train = _train_accuracy(tmp_path, "leak", source, "model.name=cellnet")
    assert last_train["argmax_accuracy"] > 0.9


def test_grid_data_errors_reach_the_cli_as_one_line(tmp_path, capsys):
    code = main(
        [
            "train",
            "--model",
            "heptapod",
            "--data",
            "nowhere",
            "--task",
            "grid",
            "--run-dir",
            str(tmp_path / "x"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "unknown grid data 'nowhere'" in err and "arc, digits, mazes, text" in err and "\n" not in err
