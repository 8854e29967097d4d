"""The autonomic controller (plain object), its training callbacks, resume, eval/generate, and
regression tests for the seed's defects 1, 2 and 4 (defect 3 is in tests/layers/test_hybrid.py)."""

import json
import math

import pytest
import torch

from seqlab.cli.main import main
from seqlab.errors import ConfigError
from seqlab.layers.autonomic import (
    AutonomicController,
    Targets,
    ntk_base,
    ntk_context_scale,
    yarn_logit_scale,
)
from seqlab.layers.hybrid import HybridAttention
from seqlab.train import checkpoint as ckpt
from seqlab.train import load_run_config, train
from seqlab.train.autonomic import AutonomicCallback, WindowSchedule
from seqlab.train.callbacks import Callback
from seqlab.train.metrics import losses, read_metrics
from seqlab.train.runs import load_run, resume_config

# ---------------------------------------------------------------- the controller, no model


def test_ewma_rule_by_hand_one_step_per_observation():
    # Defect 1: the seed stepped the EWMA twice per training step (adjust_base, adjust_window).
    beta, factor, thr = 0.9, 1.1, 0.01
    c = AutonomicController(base=1000.0, window_size=10, beta=beta, threshold=thr, factor=factor)
    losses_ = [3.0, 2.0, 2.5, 2.49, 4.0]
    ewma, base, window = None, 1000.0, 10.0
    for step, loss in enumerate(losses_, 1):
        adj = c.observe(loss, step)
        if ewma is None:
            ewma, expected = loss, "first"
        else:
            delta = loss - ewma
            ewma = beta * ewma + (1 - beta) * loss
            expected = "improving" if delta < -thr else "worsening" if delta > thr else "hold"
            if expected != "hold":
                sign = 1 if expected == "improving" else -1
                base, window = base * factor**sign, window * factor**sign
        assert c.ewma == pytest.approx(ewma, rel=1e-12), step
        assert adj.reason == expected and adj.base == pytest.approx(base) and adj.window == round(window)
    assert c.observations == len(losses_)


def test_window_moves_in_both_directions():
    # Defect 1: the seed's window controller was a no-op / only ever shrank.
    c = AutonomicController(window_size=16, factor=1.05, threshold=0.0, window_bounds=(1, 64))
    windows = [c.observe(10.0 - 0.1 * i, i + 1).window for i in range(20)]  # improving
    assert windows[-1] > 16 and windows == sorted(windows)
    top = windows[-1]
    windows = [c.observe(10.0 + i, 21 + i).window for i in range(1, 30)]  # worsening
    assert windows[-1] < top and windows == sorted(windows, reverse=True)


def test_bold_driver_compares_with_the_previous_loss():
    c = AutonomicController(base=1000.0, window_size=8, rule="bold_driver", factor=2.0, threshold=0.0)
    assert c.observe(5.0, 1).reason == "first"
    # 4.0 < 5.0 improves on the previous loss although it is above what an EWMA would be.
    assert c.observe(4.0, 2).direction == 1
    assert c.observe(4.5, 3).direction == -1
    assert c.observe(4.4, 4).direction == 1 and c.base == 2000.0 and c.window == 16


def test_bounds_stop_the_drift():
    # Defect 4: no bounds, the base drifted as factor^n.
    c = AutonomicController(base=10000.0, window_size=8, factor=1.5, threshold=0.0, base_bounds=(5000, 40000))
    for step in range(1, 200):
        c.observe(100.0 - step, step)  # always improving
    assert c.base == 40000.0 and c.window == 80  # the default window bound: 10x the start
    for step in range(200, 400):
        c.observe(float(step), step)  # always worsening
    assert c.base == 5000.0 and c.window == 1
    default = AutonomicController(base=10000.0)
    assert default.base_bounds == (1000.0, 100000.0)


def test_window_is_applied_as_the_rounded_float():
    c = AutonomicController(window_size=10, factor=1.02, threshold=0.0)
    seen = [c.observe(10.0 - i, i + 1) for i in range(6)]
    assert [a.window for a in seen] == [max(1, round(10 * 1.02**i)) for i in range(6)]
    assert seen[5].window == 11 and all(a.changed for a in seen[1:])  # the base moved every step


def _plateau_moves(losses_, patience, cooldown):
    """Steps at which torch's ReduceLROnPlateau reduces the learning rate."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", patience=patience, cooldown=cooldown, threshold=0.0, threshold_mode="abs", factor=0.5
    )
    moves = []
    for step, loss in enumerate(losses_, 1):
        before = opt.param_groups[0]["lr"]
        sched.step(loss)
        if opt.param_groups[0]["lr"] < before:
            moves.append(step)
    return moves


@pytest.mark.parametrize("patience,cooldown", [(0, 0), (1, 0), (3, 0), (0, 2), (2, 3)])
def test_patience_and_cooldown_act_as_reduce_lr_on_plateau(patience, cooldown):
    # Every loss is worse than the one before, the bold-driver signal on every step.
    losses_ = [1.0 + 0.1 * i for i in range(25)]
    c = AutonomicController(rule="bold_driver", threshold=0.0, patience=patience, cooldown=cooldown)
    moves = [step for step, loss in enumerate(losses_, 1) if c.observe(loss, step).direction == -1]
    assert moves == _plateau_moves(losses_, patience, cooldown)
    assert moves  # the comparison is not vacuous


def test_a_broken_streak_restarts_the_patience():
    c = AutonomicController(rule="bold_driver", threshold=0.0, patience=1)
    reasons = [c.observe(loss, step).reason for step, loss in enumerate([5, 4, 4.5, 4, 3, 2], 1)]
    assert reasons == ["first", "patience", "patience", "patience", "improving", "patience"]


def test_warmup_and_interval_skip_decisions_but_the_ewma_still_steps():
    c = AutonomicController(warmup_steps=3, every_n_steps=2, threshold=0.0, beta=0.5)
    reasons = [c.observe(10.0 - step, step).reason for step in range(1, 9)]
    assert reasons == [
        "first",
        "warmup",
        "warmup",
        "improving",
        "interval",
        "improving",
        "interval",
        "improving",
    ]
    ewma = 9.0
    for step in range(2, 9):
        ewma = 0.5 * ewma + 0.5 * (10.0 - step)
    assert c.ewma == pytest.approx(ewma)


def test_state_dict_continues_the_same_trajectory():
    options = dict(factor=1.03, threshold=0.001, patience=1, cooldown=1)
    g = torch.Generator().manual_seed(0)
    seq = (3.0 + torch.randn(40, generator=g) * 0.2).tolist()
    whole = AutonomicController(**options)
    expected = [whole.observe(loss, step) for step, loss in enumerate(seq, 1)]
    first = AutonomicController(**options)
    got = [first.observe(loss, step) for step, loss in enumerate(seq[:17], 1)]
    second = AutonomicController(**options)
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))  # survives JSON / torch.save
    got += [second.observe(loss, step) for step, loss in enumerate(seq[17:], 18)]
    assert got == expected
    assert len({a.base for a in expected}) > 3  # it moved


def test_bad_options_are_one_line_config_errors():
    for kwargs, match in [
        (dict(factor=1.0), "factor=1.0 must be > 1"),
        (dict(beta=1.0), r"beta=1.0 must lie in \[0, 1\)"),
        (dict(base_bounds=(20000, 30000)), "must contain the start value 10000"),
        (dict(window_bounds=[1]), "window_bounds=.* must be \\[low, high\\]"),
        (dict(adjust=("rope",)), "adjust=.*base, window"),
        (dict(rule="adam"), "rule='adam' must be one of ewma, bold_driver"),
        (dict(patience=-1), "patience=-1 must be an int >= 0"),
        (dict(every_n_steps=0), "every_n_steps must be >= 1"),
    ]:
        with pytest.raises(ConfigError, match=match):
            AutonomicController(**kwargs)


def test_ntk_and_yarn_formulas():
    for d in (8, 16, 64):
        assert ntk_context_scale(ntk_base(10000.0, 4.0, d), 10000.0, d) == pytest.approx(4.0)
    assert yarn_logit_scale(1.0) == 1.0 and yarn_logit_scale(0.5) == 1.0
    assert yarn_logit_scale(math.e) == pytest.approx(1.1**2)
    scales = [yarn_logit_scale(s) for s in (1.5, 2, 4, 8)]
    assert scales == sorted(scales) and scales[0] > 1


# ---------------------------------------------------------------- training with the callback

AGGRESSIVE = ("train.callbacks.autonomic.factor=1.05", "train.callbacks.autonomic.threshold=0.0")
FAST = ("train.sample_tokens=0", "train.eval_iters=1", "train.eval_interval=12")
# A small corpus: building the embedded one takes longer than these runs train.
TEXT = "".join(f"{i} the quick brown fox jumps over the lazy dog, then {i % 7} more.\n" for i in range(400))


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_text(TEXT)
    return path


@pytest.fixture
def cfg(tiny_cfg, text_file):
    """tiny_cfg on the small corpus, with few evaluations and no sample."""

    def make(*overrides, run_dir=None):
        return tiny_cfg(f"data.source={text_file}", *FAST, *overrides, run_dir=run_dir)

    return make


def _records(run_dir, name="autonomic"):
    return [
        r
        for r in read_metrics(run_dir / "metrics.jsonl")
        if r["split"] == "callback" and r.get("callback") == name
    ]


def test_shortcut_and_options_are_checked_by_the_config(tiny_cfg):
    cfg = tiny_cfg("model.name=hybrid", "train.autonomic=true")
    assert cfg.train.callbacks == {"autonomic": {}}
    cfg = tiny_cfg("model.name=hybrid", "train.autonomic=true", "train.callbacks.autonomic.factor=1.1")
    assert cfg.train.callbacks == {"autonomic": {"factor": 1.1}}
    with pytest.raises(ConfigError, match="train.callbacks.autonomic: .*unexpected keyword argument 'speed'"):
        tiny_cfg("train.callbacks.autonomic.speed=2")
    with pytest.raises(ConfigError, match="factor=0.9 must be > 1"):
        tiny_cfg("train.callbacks.autonomic.factor=0.9")
    with pytest.raises(ConfigError, match="window_schedule.steps=None must be an int >= 1"):
        tiny_cfg("train.callbacks=[window_schedule]")


class Inspect(Callback):
    """Records what the model and the optimizer hold at every step."""

    name = "inspect"

    def __init__(self):
        self.seen = {}

    def on_train_step(self, step, loss, model, optimizer):
        ids = {id(p) for p in model.parameters()}
        self.seen.setdefault("first", ids)
        self.seen["last"] = ids
        self.seen["optimizer"] = {id(p) for group in optimizer.param_groups for p in group["params"]}
        self.seen["names"] = [n for n, _ in model.named_parameters()]
        self.seen["base"] = model.rotary.base


@pytest.fixture(scope="module")
def hybrid_run(tmp_path_factory, text_file):
    """One tiny hybrid run with the controller (fast settings), shared by the tests below."""
    run = tmp_path_factory.mktemp("autonomic") / "run"
    overrides = [
        "model.name=hybrid",
        "model.preset=tiny",
        "train.batch_size=8",
        "train.max_iters=12",
        "train.eval_interval=12",
        "train.eval_iters=2",
        "train.log_interval=1",
        "train.warmup_iters=2",
        "train.progress=false",
        "train.sample_tokens=0",
        "train.autonomic=true",
        *AGGRESSIVE,
        f"data.source={text_file}",
        f"run_dir={run}",
    ]
    inspect = Inspect()
    train(load_run_config(overrides=overrides), callbacks=[inspect])
    return run, inspect.seen


def test_training_moves_the_models_base_and_window_and_logs_every_move(hybrid_run):
    run, _ = hybrid_run
    records = _records(run)
    assert records[0]["step"] == 1 and records[0]["reason"] == "first"
    assert records[0]["rope_base"] == 10000.0 and records[0]["window"] == 8  # the model's start
    moves = records[1:]
    assert moves and all(r["reason"] in ("improving", "worsening") for r in moves)
    assert len({r["rope_base"] for r in records}) > 2
    model, *_ = load_run(run, "latest")
    assert model.rotary.base == records[-1]["rope_base"]
    assert [b.mixer.window for b in model.blocks] == [records[-1]["window"]] * 2
    assert (run / "autonomic.png").stat().st_size > 1000


def test_no_new_parameters_and_the_optimizer_sees_the_same_ones(hybrid_run):
    # Defect 2: the seed's update_base replaced inv_freq by new Parameters outside the optimizer.
    _, seen = hybrid_run
    assert seen["base"] != 10000.0  # the base moved during the run
    assert seen["first"] == seen["last"] == seen["optimizer"]
    assert not any("rotary" in name for name in seen["names"])


def test_resume_continues_the_same_trajectory_bit_for_bit(stop_at, cfg, tmp_path):
    options = ("model.name=hybrid", "model.dropout=0.1", "train.autonomic=true", *AGGRESSIVE)
    options += ("train.callbacks.autonomic.patience=1", "train.callbacks.autonomic.cooldown=1")
    full = train(cfg(*options, run_dir=tmp_path / "full"))
    with pytest.raises(KeyboardInterrupt):
        train(cfg(*options, run_dir=tmp_path / "cut"), callbacks=[stop_at(6)])
    saved = ckpt.load_trainer_state(ckpt.find_checkpoint(tmp_path / "cut"))
    assert saved["step"] == 6 and saved["callbacks"]["autonomic"]["controller"]["observations"] == 6
    resumed = train(resume_config(tmp_path / "cut"), resume=tmp_path / "cut")
    assert losses(resumed.run_dir) == losses(full.run_dir)
    assert _records(resumed.run_dir) == _records(full.run_dir)
    assert len(_records(full.run_dir)) > 3
    final = [
        ckpt.load_trainer_state(ckpt.find_checkpoint(r, "latest"))["callbacks"]["autonomic"]
        for r in (full.run_dir, resumed.run_dir)
    ]
    assert final[0] == final[1]


def test_eval_and_generate_use_the_values_training_reached(hybrid_run, capsys):
    run, _ = hybrid_run
    last = _records(run)[-1]
    model, _, cfg, _ = load_run(run, "latest")
    assert cfg.model["rope_base"] == 10000.0 and cfg.model["window"] == 8  # the config keeps the start
    assert model.rotary.base == last["rope_base"] != 10000.0
    assert {b.mixer.window for b in model.blocks} == {last["window"]}
    capsys.readouterr()
    assert main(["eval", str(run), "--checkpoint", "latest", "--eval-iters", "2"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    last_val = [r for r in read_metrics(run / "metrics.jsonl") if r["split"] == "val"][-1]
    assert evaluated["loss"] == pytest.approx(last_val["loss"], rel=1e-5)
    assert main(["generate", str(run), "--checkpoint", "latest", "--max-new-tokens", "5"]) == 0


def test_gpt_with_a_window_is_driven_too_and_without_one_only_its_base(cfg, tmp_path):
    windowed = train(cfg("model.window=8", "train.autonomic=true", *AGGRESSIVE, run_dir=tmp_path / "w"))
    records = _records(windowed.run_dir)
    assert "window" in records[0] and "rope_base" in records[0]
    model, *_ = load_run(windowed.run_dir, "latest")
    assert [b.mixer.window for b in model.blocks] == [records[-1]["window"]] * 2
    full = train(cfg("train.autonomic=true", *AGGRESSIVE, run_dir=tmp_path / "f"))
    records = _records(full.run_dir)
    assert "window" not in records[0] and len({r["rope_base"] for r in records}) > 1
    model, *_ = load_run(full.run_dir, "latest")
    assert [b.mixer.window for b in model.blocks] == [None, None]  # global layers stay global


def test_yarn_sets_the_logit_scale_and_global_layers_stay_global(cfg, tmp_path):
    with pytest.raises(ConfigError, match="yarn=true needs attention layers with a logit scale"):
        train(cfg("model.window=8", "train.autonomic=true", "train.callbacks.autonomic.yarn=true"))
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before the first checkpoint
    yarn = ("train.autonomic=true", "train.callbacks.autonomic.yarn=true", *AGGRESSIVE)
    config = cfg("model.name=hybrid", "model.pattern=hybrid,global", *yarn, run_dir=tmp_path / "hybrid")
    result = train(config)
    model, *_ = load_run(result.run_dir, "latest")
    last = _records(result.run_dir)[-1]
    head_dim = 16
    expected = yarn_logit_scale(ntk_context_scale(last["rope_base"], 10000.0, head_dim))
    assert last["logit_scale"] == pytest.approx(expected)
    assert model.blocks[0].mixer.scale == last["logit_scale"]
    assert model.blocks[0].mixer.window == last["window"] and model.blocks[1].mixer.window is None


def test_window_schedule_grows_the_window_with_ntk_base_and_yarn_temperature(cfg, tmp_path):
    config = cfg(
        "model.name=hybrid",
        "train.callbacks.window_schedule.steps=8",
        "train.callbacks.window_schedule.stages=2",
        "train.callbacks.window_schedule.end=24",
    )
    result = train(config)
    records = _records(result.run_dir, "window_schedule")
    assert [(r["step"], r["window"]) for r in records] == [(1, 8), (4, 16), (8, 24)]
    for r in records:
        s = r["window"] / 8
        assert r["rope_base"] == pytest.approx(ntk_base(10000.0, s, 16))
        assert r["logit_scale"] == pytest.approx(yarn_logit_scale(s))
    model, *_ = load_run(result.run_dir, "latest")
    assert model.rotary.base == pytest.approx(records[-1]["rope_base"])
    assert {b.mixer.window for b in model.blocks} == {24}
    assert (result.run_dir / "window_schedule.png").is_file()


def test_window_schedule_resumes_from_its_saved_start(stop_at, cfg, tmp_path):
    opts = (
        "model.name=hybrid",
        "train.callbacks.window_schedule.steps=10",
        "train.callbacks.window_schedule.stages=5",
    )
    full = train(cfg(*opts, run_dir=tmp_path / "full"))
    with pytest.raises(KeyboardInterrupt):
        train(cfg(*opts, run_dir=tmp_path / "cut"), callbacks=[stop_at(5)])
    resumed = train(resume_config(tmp_path / "cut"), resume=tmp_path / "cut")
    assert losses(resumed.run_dir) == losses(full.run_dir)
    assert _records(resumed.run_dir, "window_schedule") == _records(full.run_dir, "window_schedule")


def test_a_model_with_nothing_to_move_is_a_config_error(cfg):
    with pytest.raises(ConfigError, match="nothing to move: this model has no windowed attention layer"):
        train(cfg("train.autonomic=true", "train.callbacks.autonomic.adjust=[window]"))


def test_callback_objects_work_from_python():
    cb = AutonomicCallback(factor=1.5, threshold=0.0)
    model = torch.nn.Module()
    model.attn = HybridAttention(16, 2, 4)
    assert cb.on_train_step(1, 3.0, model, None)["reason"] == "first"
    record = cb.on_train_step(2, 2.0, model, None)
    assert record["window"] == 6 and model.attn.window == 6
    assert "rope_base" not in record  # no rotary module: only the window moves
    assert Targets.of(model).window == 6
    schedule = WindowSchedule(steps=4, end=14, stages=2, yarn=False)
    assert schedule.on_train_step(1, 3.0, model, None) == {"reason": "start", "window": 6}
    assert schedule.on_train_step(2, 3.0, model, None) == {"reason": "schedule", "window": 10}
    assert model.attn.window == 10


def test_the_encoder_decoder_host_trains_with_the_controller_on_seq2seq(tiny_cfg, tmp_path):
    # The algorithmic "reverse" pairs: the same seq2seq task as grapheme-to-phoneme, loaded
    # in a fraction of a second (cmudict takes ~20 s to parse on this machine).
    cfg = tiny_cfg(
        "model.name=autonomic_host",
        "task=seq2seq",
        "data.source=reverse",
        "task_options.beams=1",
        "train.eval_decode=4",
        "train.sample_tokens=0",
        "train.autonomic=true",
        *AGGRESSIVE,
        *FAST,
    )
    result = train(cfg)
    records = _records(result.run_dir)
    assert records[0]["window"] == 4 and len({r["rope_base"] for r in records}) > 2
    model, *_ = load_run(result.run_dir, "latest")
    hybrids = [m for m in model.modules() if isinstance(m, HybridAttention)]
    assert {m.window for m in hybrids} == {records[-1]["window"]} and len(hybrids) == 4  # encoder and decoder
    assert model.t5.rotary.base == records[-1]["rope_base"]
    val = [r for r in read_metrics(result.run_dir / "metrics.jsonl") if r["split"] == "val"][-1]
    assert "per" in val and math.isfinite(val["loss"])


def test_the_claim_script_runs_four_arms_with_the_controllers_end_values(tmp_path, text_file):
    from seqlab.bench.autonomic_claim import main as claim_main
    from seqlab.bench.autonomic_claim import speed

    out = tmp_path / "claim"
    args = [
        "--seeds",
        "1",
        "--preset",
        "tiny",
        "--max-iters",
        "6",
        "--out",
        str(out),
        "--data",
        str(text_file),
    ]
    args += ["--controller", "factor=1.05", "threshold=0.0"]
    args += [
        "--set",
        "train.eval_iters=1",
        "train.warmup_iters=1",
        "train.batch_size=4",
        "train.eval_decode=0",
    ]
    assert claim_main(args) == 0
    results = json.loads((out / "results.json").read_text())
    runs = {r["arm"]: r for r in results["runs"]}
    assert set(runs) == {"autonomic", "fixed_start", "fixed_end", "schedule"}
    assert (runs["fixed_end"]["rope_base"], runs["fixed_end"]["window"]) == (
        runs["autonomic"]["rope_base"],
        runs["autonomic"]["window"],
    )
    assert runs["fixed_start"]["rope_base"] == 10000.0 and runs["fixed_start"]["window"] == 8
    assert runs["autonomic"]["rope_base"] != 10000.0 and runs["schedule"]["window"] > 8
    assert "| autonomic |" in (out / "results.md").read_text()
    timing = speed("tiny", repeats=2)
    assert timing["hybrid_over_gpt"] > 0 and timing["controller_step_s"] > 0
