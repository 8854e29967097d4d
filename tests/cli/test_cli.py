"""The seqlab command end to end: train a few steps, generate, eval, models; errors are one line."""

import json
import os
import subprocess
import sys

import pytest

from seqlab.cli.main import main

TINY = [
    "--preset",
    "tiny",
    "--max-iters",
    "6",
    "--batch-size",
    "4",
    "--no-progress",
    "--set",
    "train.eval_interval=3",
    "train.eval_iters=2",
    "train.warmup_iters=1",
    "train.sample_tokens=10",
]


def test_train_generate_eval_through_the_real_entry_point(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "-m", "seqlab", "train", *TINY, "--run-dir", str(run)], check=True, env=env
    )
    assert {"config.json", "metrics.jsonl", "loss_curve.png", "samples.txt", "checkpoints"} <= {
        p.name for p in run.iterdir()
    }
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "seqlab",
            "generate",
            str(run),
            "--prompt",
            "ROMEO:",
            "--max-new-tokens",
            "20",
        ],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    assert out.startswith("ROMEO:") and len(out.rstrip("\n")) >= len("ROMEO:") + 15


def test_eval_prints_metrics(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--run-dir", str(run)]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--eval-iters", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["step"] in (3, 6) and result["loss"] > 0 and result["bits_per_token"] > 0


def test_config_file_and_saved_resolved_config(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  name: gpt\n  preset: tiny\n  mlp: swiglu\ntrain:\n  max_iters: 3\n")
    run = tmp_path / "run"
    assert (
        main(["train", str(cfg), "--no-progress", "--run-dir", str(run), "--set", "train.eval_iters=1"]) == 0
    )
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["mlp"] == "swiglu" and saved["train"]["max_iters"] == 3


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--model", "gtp"], "unknown model 'gtp'; choose one of: gpt"),
        (["train", "--preset", "huge"], "unknown preset 'huge'"),
        (["train", "--set", "train.lrr=1"], "Did you mean 'lr'"),
        (["train", "--set", "train.max_iters=ten"], "train.max_iters: expected int"),
        (["train", "--data", "/no/such/file.txt", "--preset", "tiny"], "/no/such/file.txt"),
        (["generate", "/no/such/run"], "not a seqlab run directory"),
        (["train", "--resume", "runs/x", "--preset", "small"], "drop ['model.preset']"),
    ],
)
def test_user_errors_are_one_clear_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_models_lists_registry_with_parameter_counts(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    gpt_baby = [line.split() for line in out.splitlines() if line.split()[:2] == ["gpt", "baby"]]
    assert gpt_baby and gpt_baby[0][2] == "0.80M"  # nanoGPT's baby config: ~0.80M params


def test_resume_from_best_when_latest_is_corrupt(stop_at, tmp_path, capsys):
    from seqlab.train import checkpoint as ckpt
    from seqlab.train import load_run_config, train
    from seqlab.train.metrics import read_metrics

    def cfg(run):
        return load_run_config(
            overrides=[
                "model.preset=tiny", "train.batch_size=4", "train.max_iters=8", "train.eval_interval=4",
                "train.eval_iters=2", "train.warmup_iters=1", "train.sample_tokens=0",
                "train.log_interval=1", "train.progress=false", f"run_dir={run}",
            ]
        )  # fmt: skip

    def losses(run):
        return {r["step"]: r["loss"] for r in read_metrics(run / "metrics.jsonl") if r["split"] == "train"}

    full, run = tmp_path / "full", tmp_path / "run"
    train(cfg(full))
    with pytest.raises(KeyboardInterrupt):
        train(cfg(run), callbacks=[stop_at(6)])  # saves step 6: latest, not best
    best = ckpt.find_checkpoint(run, "best")
    assert ckpt.read_meta(best)["step"] in (0, 4) and ckpt.find_checkpoint(run).name == "step_0000006"
    weights = run / "checkpoints" / "step_0000006" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-16] + bytes(16))
    capsys.readouterr()

    assert main(["train", "--resume", str(run)]) == 2
    assert "corrupt" in capsys.readouterr().err
    assert main(["train", "--checkpoint", "best", "--preset", "tiny"]) == 2
    assert "use it with --resume RUN_DIR" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--checkpoint", "step_3"]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint 'step_3'" in err and best.name in err and "Traceback" not in err

    assert main(["train", "--resume", str(run), "--checkpoint", "best", "--no-progress"]) == 0
    assert "finished at step 8" in capsys.readouterr().out
    # The steps after best ran again: the same computation as the uninterrupted run.
    assert sorted(losses(run)) == list(range(1, 9))
    assert losses(run) == losses(full)
    assert ckpt.find_checkpoint(run).name == "step_0000008"
    assert not (run / "checkpoints" / "step_0000006").exists()  # pruned after the new save


@pytest.mark.skipif(
    __import__("torch").cuda.is_available() or __import__("torch").backends.mps.is_available(),
    reason="this machine has an accelerator",
)
@pytest.mark.parametrize("device", ["cuda", "cuda:3", "mps"])
def test_a_device_this_machine_lacks_is_one_line_in_train_eval_and_generate(device, tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(
            ["train", "--preset", "tiny", "--max-iters", "2", "--run-dir", str(run), "--no-progress"]
            + ["--set", "train.eval_interval=2", "train.eval_iters=1", "train.sample_tokens=0"]
        )
        == 0
    )
    capsys.readouterr()
    for argv in (
        [
            "train",
            "--preset",
            "tiny",
            "--max-iters",
            "1",
            "--device",
            device,
            "--run-dir",
            str(tmp_path / "x"),
        ],
        ["eval", str(run), "--device", device],
        ["generate", str(run), "--device", device],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "no such device on this machine; it has: cpu" in err
