"""The benchmark harness: complete and sane results, the peer side by side, wrong models refused."""

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seqlab.bench.cases import PEER, Case, expand_cases, peer_available
from seqlab.bench.flops import count_flops, training_flops
from seqlab.bench.runner import BenchSettings, check_correctness, run_bench, steady_windows
from seqlab.cli.main import main
from seqlab.errors import ConfigError
from seqlab.models import MODELS, ModelEntry, build_model
from seqlab.models.output import ModelOutput, lm_loss

FAST = (
    "train.batch_size=4",
    "train.eval_iters=2",
    "train.eval_interval=1000",
    "train.log_interval=2",
    "train.warmup_iters=2",
)
ENV_FIELDS = {
    "device",
    "device_type",
    "cpu_count",
    "torch_threads",
    "dtypes",
    "matmul_peak_flops",
    "torch_version",
    "seqlab_version",
    "commit",
    "date",
    "command",
}
CASE_FIELDS = {
    "name",
    "model",
    "preset",
    "dtype",
    "overrides",
    "status",
    "reason",
    "checks",
    "params",
    "flops_per_step",
    "memory",
    "train",
    "peak_flops",
    "mfu",
    "decode",
}
TRAIN_FIELDS = {
    "steps",
    "stopped",
    "val_loss",
    "best_val_loss",
    "tokens_per_step",
    "tokens_per_s",
    "steps_per_s",
    "throughput_source",
    "window_tokens_per_s",
    "overall_tokens_per_s",
    "wall_s",
    "run_dir",
}


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    lines = [f"Line {i}: the quick brown fox jumps over {i % 7} lazy dogs; so it goes.\n" for i in range(120)]
    path = tmp_path_factory.mktemp("data") / "text.txt"
    path.write_text("".join(lines))
    return path


def settings(text_file, **kw) -> BenchSettings:
    values = dict(
        data=str(text_file),
        max_iters=8,
        decode_contexts=(8, 40),
        decode_steps=3,
        decode_repeats=1,
        memory_steps=1,
        peak_sizes=(256,),
        progress=False,
    )
    return BenchSettings(**{**values, **kw})


def _markdown(report) -> str:
    return (Path(report["settings"]["out_dir"]) / "results.md").read_text()


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def report(text_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    cases = expand_cases(["gpt"], "tiny", ["float32"], FAST, peer=peer_available())
    return run_bench(
        cases, settings(text_file, peer=peer_available()), out, command="pytest", log=lambda m: None
    )


def test_every_case_has_every_field_and_sane_numbers(report):
    assert ENV_FIELDS <= set(report["environment"])
    assert _positive(report["environment"]["matmul_peak_flops"]["float32"])
    assert report["cases"]
    for case in report["cases"]:
        assert case["status"] == "ok", case["reason"]
        assert CASE_FIELDS <= set(case), CASE_FIELDS - set(case)
        assert TRAIN_FIELDS <= set(case["train"])
        assert case["checks"]["passed"] and case["checks"]["cached"]
        t = case["train"]
        assert t["steps"] == 8 and t["stopped"] == "finished"
        for value in (
            t["val_loss"],
            t["tokens_per_s"],
            t["steps_per_s"],
            case["flops_per_step"],
            case["params"],
        ):
            assert _positive(value), (case["name"], value)
        assert t["throughput_source"] == "steady" and len(t["window_tokens_per_s"]) >= 1
        assert 0 < case["mfu"] < 1.5
        assert case["memory"]["peak_bytes"] is None or case["memory"]["peak_bytes"] > 0
        assert [d["context"] for d in case["decode"]] == [8, 40]
        for d in case["decode"]:
            assert d["mode"] == "kv-cache" and _positive(d["ms_per_token"]) and _positive(d["prefill_ms"])


def test_results_are_written_as_json_and_a_markdown_row_per_case(report):
    saved = json.loads((Path(report["settings"]["out_dir"]) / "results.json").read_text())
    assert saved == json.loads(json.dumps(report))
    md = _markdown(report)
    for case in report["cases"]:
        assert sum(line.startswith(f"| {case['name']} |") for line in md.splitlines()) == 1
    assert report["environment"]["torch_version"] in md and report["environment"]["commit"] in md


@pytest.mark.skipif(not peer_available(), reason="x-transformers is not installed")
def test_the_peer_runs_the_same_config_side_by_side(report):
    names = [c["name"] for c in report["cases"]]
    assert names == ["gpt-tiny-float32", f"{PEER}-tiny-float32"]
    (cmp,) = report["comparisons"]
    assert cmp["model"] == "gpt" and cmp["peer"] == PEER
    # Same architecture, so torch counts exactly the same FLOPs for both.
    assert cmp["flops_per_step_ratio"] == 1.0
    assert _positive(cmp["tokens_per_s_ratio"]) and _positive(cmp["mfu_ratio"])
    assert set(cmp["decode_speedup"]) == {"8", "40"}
    assert abs(cmp["val_loss_diff"]) < 0.5
    assert "seqlab vs peer" in _markdown(report)


@dataclass
class LeakyConfig:
    vocab_size: int = 50
    dim: int = 16
    max_seq_len: int = 32


class LeakyLM(nn.Module):
    """Adds the mean of the WHOLE sequence to every position: the future leaks into the past."""

    def __init__(self, cfg: LeakyConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size)

    def forward(self, input_ids, targets=None, cache=None):
        x = self.embed(input_ids)
        logits = self.head(x + x.mean(dim=1, keepdim=True))
        return ModelOutput(logits, lm_loss(logits, targets) if targets is not None else None)


def test_check_correctness_catches_a_model_that_sees_the_future():
    failures = check_correctness(LeakyLM(LeakyConfig()), 50, 32, "cpu")
    assert any("not causal" in f for f in failures)
    assert check_correctness(build_model("gpt", "tiny", vocab_size=50), 50, 32, "cpu") == []


def test_a_case_that_fails_its_checks_is_refused_and_never_timed(text_file, tmp_path, monkeypatch):
    monkeypatch.setitem(
        MODELS, "leaky", ModelEntry(LeakyConfig, LeakyLM, {"tiny": {}}, "lm", "non-causal toy")
    )
    report = run_bench(
        [Case("leaky", "tiny", "float32", FAST)],
        settings(text_file, peer=False),
        tmp_path,
        command="pytest",
        log=lambda m: None,
    )
    (case,) = report["cases"]
    assert case["status"] == "refused" and "not causal" in case["reason"]
    assert "train" not in case and "mfu" not in case and "decode" not in case
    assert not (tmp_path / "runs" / case["name"]).exists()
    assert "refused" in (tmp_path / "results.md").read_text()


def test_cli_without_peer_writes_one_case(text_file, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(
        ["bench", "--preset", "tiny", "--data", str(text_file), "--dtypes", "bfloat16", "--max-iters", "6"]
        + ["--no-peer", "--no-progress", "--decode-contexts", "8", "--decode-steps", "2", "--out", str(out)]
        + ["--set", *FAST]
    )
    assert code == 0
    saved = json.loads((out / "results.json").read_text())
    assert [c["name"] for c in saved["cases"]] == ["gpt-tiny-bfloat16"]
    assert saved["cases"][0]["status"] == "ok" and saved["comparisons"] == []
    assert "| gpt-tiny-bfloat16 |" in capsys.readouterr().out


def test_flop_count_of_linear_layers_is_six_times_params_times_tokens():
    model = nn.Sequential(nn.Linear(64, 128, bias=False), nn.GELU(), nn.Linear(128, 32, bias=False))
    tokens = 50
    # The input needs a gradient as it would coming from an embedding: then backward costs 2x forward.
    x = torch.randn(tokens, 64, requires_grad=True)
    params = sum(p.numel() for p in model.parameters())
    assert count_flops(lambda: model(x).sum().backward()) == 6 * params * tokens
    batch = {"x": x}
    flops = training_flops(model, lambda m, b: (m(b["x"]).sum(), {}), batch)
    assert flops == 6 * params * tokens
    assert all(p.grad is None for p in model.parameters())


def test_cpu_attention_is_counted():
    b, h, t, d = 2, 3, 16, 8
    q = torch.randn(b, h, t, d)
    assert (
        count_flops(lambda: F.scaled_dot_product_attention(q, q, q, is_causal=True)) == 4 * b * h * t * t * d
    )


def test_throughput_leaves_out_warmup_and_windows_with_an_evaluation():
    records = [{"step": 0, "split": "val", "loss": 4.0}]
    records += [{"step": s, "split": "train", "tokens_per_s": float(s)} for s in (2, 4, 6, 8, 10)]
    records += [{"step": 10, "split": "val", "loss": 3.0}]
    records += [{"step": s, "split": "train", "tokens_per_s": float(s)} for s in (12, 14)]
    # Window (0, 2] is warmup and holds the step-0 evaluation; (10, 12] holds the step-10 one.
    assert steady_windows(records) == [4.0, 6.0, 8.0, 10.0, 14.0]
    assert steady_windows(records[:3]) == [4.0]
    assert steady_windows(records[:2]) == []
    assert steady_windows(records, checkpoint_interval=6) == [4.0, 6.0, 10.0]


def test_cases_pair_each_model_with_the_peer_once_per_dtype():
    cases = expand_cases(["gpt", PEER], "baby", ["float32", "bfloat16"], ("train.lr=3e-4",))
    assert [c.name for c in cases] == [
        "gpt-baby-float32",
        f"{PEER}-baby-float32",
        "gpt-baby-bfloat16",
        f"{PEER}-baby-bfloat16",
    ]
    assert all(c.overrides == ("train.lr=3e-4",) for c in cases)
    assert [c.name for c in expand_cases(["gpt"], "baby", ["float32"], peer=False)] == ["gpt-baby-float32"]
    with pytest.raises(ConfigError, match="--max-iters"):
        Case("gpt", "baby", "float32", ("train.max_iters=5",))
    with pytest.raises(ConfigError, match="dtype"):
        Case("gpt", "baby", "float16")


@pytest.mark.skipif(not peer_available(), reason="x-transformers is not installed")
def test_a_peer_case_with_an_override_the_peer_lacks_is_skipped(text_file, tmp_path):
    report = run_bench(
        [Case(PEER, "tiny", "float32", ("model.window=8",))],
        settings(text_file),
        tmp_path,
        command="pytest",
        log=lambda m: None,
    )
    (case,) = report["cases"]
    assert case["status"] == "skipped" and "window" in case["reason"]


def test_a_model_with_a_fixed_context_gets_na_past_it_and_the_command_exits_0(text_file, tmp_path, capsys):
    # lfm tiny reads at most 32 positions: context 8 (+ 2 steps) is timed, context 64 cannot be.
    out = tmp_path / "fixed"
    code = main(
        ["bench", "--model", "lfm", "--preset", "tiny", "--dtypes", "float32", "--data", str(text_file)]
        + [
            "--max-iters",
            "4",
            "--no-peer",
            "--no-progress",
            "--decode-contexts",
            "8,64",
            "--decode-steps",
            "2",
        ]
        + ["--out", str(out), "--set", *FAST]
    )
    assert code == 0
    (case,) = json.loads((out / "results.json").read_text())["cases"]
    assert case["status"] == "ok", case["reason"]
    short, long = case["decode"]
    assert short["context"] == 8 and _positive(short["ms_per_token"]) and "status" not in short
    assert long == {"context": 64, "status": "n/a", "reason": "max_seq_len 32"}
    (row,) = [line for line in (out / "results.md").read_text().splitlines() if line.startswith("| lfm-")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[-2] == "n/a (max_seq_len 32)" and float(cells[-3]) > 0
    capsys.readouterr()
