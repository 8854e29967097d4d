"""Checkpoint format 2: what a run directory holds, and runs of older seqlab versions refused in one line."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from seqlab.cli.main import main
from seqlab.errors import CheckpointError
from seqlab.models import build_model
from seqlab.train import checkpoint as ckpt
from seqlab.train import train
from seqlab.train.runs import load_run, resume_config

RUN_V1 = Path(__file__).parent / "data" / "run_v1"  # written by seqlab 0.1.0, before the one-Block refactor


@pytest.fixture
def old_run(tmp_path):
    run = tmp_path / "run_v1"
    shutil.copytree(RUN_V1, run)
    return run


def test_checkpoints_record_format_2_and_the_task_file_names_its_task(tiny_cfg, tmp_path):
    result = train(tiny_cfg("train.max_iters=4", run_dir=tmp_path / "r"))
    meta = ckpt.read_meta(ckpt.find_checkpoint(result.run_dir))
    assert meta["format"] == ckpt.FORMAT == 2 and meta["task"] == "lm"
    task_file = json.loads((result.run_dir / "task.json").read_text())
    assert task_file["task"] == "lm" and task_file["state"]["tokenizer"]["kind"] == "char"


def test_tied_weights_are_stored_once_and_tied_again_on_load(tmp_path):
    torch.manual_seed(0)
    model = build_model("gpt", "tiny", vocab_size=40)
    assert model.head.weight is model.embed.weight
    state = model.state_dict()
    stored = ckpt.unique_tensors(state)
    assert set(state) - set(stored) == {"head.weight"}
    ckpt.save_checkpoint(tmp_path, 3, state, {"step": 3}, {"model": {"name": "gpt"}})
    step = ckpt.find_checkpoint(tmp_path)
    assert "head.weight" not in load_file(str(step / "model.safetensors"))
    other = build_model("gpt", "tiny", vocab_size=40)
    ckpt.load_weights(other, step)
    assert other.head.weight is other.embed.weight
    for key, value in model.state_dict().items():
        torch.testing.assert_close(other.state_dict()[key], value, rtol=0, atol=0)  # the same bytes
    # Tensors that share memory without being the same tensor are stored as copies.
    base = torch.arange(6.0)
    shared = ckpt.unique_tensors({"a": base[:3], "b": base[3:]})
    assert shared["a"].tolist() == [0, 1, 2] and shared["b"].tolist() == [3, 4, 5]


def test_a_run_of_an_older_seqlab_is_refused_by_resume_eval_and_generate(old_run):
    reason = r"written by an older seqlab \(checkpoint format 1, version 0.1.0\) whose layer layout changed"
    with pytest.raises(CheckpointError, match=reason):
        resume_config(old_run)
    with pytest.raises(CheckpointError, match=reason):
        load_run(old_run, "best")


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--resume", "{run}", "--no-progress"],
        ["eval", "{run}"],
        ["generate", "{run}", "--max-new-tokens", "3"],
    ],
)
def test_the_cli_refuses_an_older_run_in_one_line(old_run, argv, capsys):
    assert main([a.format(run=old_run) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "older seqlab" in err and "retrain" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_damaged_run_files_are_one_line_errors(tiny_cfg, tmp_path, capsys):
    run = train(tiny_cfg("train.max_iters=2", "train.eval_interval=2", run_dir=tmp_path / "d")).run_dir
    task_json = (run / "task.json").read_text()
    (run / "task.json").write_text('{"tokenizer": {"kind": "char"}}')  # the old shape
    with pytest.raises(CheckpointError, match="not a task file of this seqlab"):
        load_run(run)
    (run / "task.json").write_text(task_json.replace('"task": "lm"', '"task": "forecast"'))
    with pytest.raises(CheckpointError, match="belongs to task 'forecast'.*inconsistent"):
        load_run(run)
    (run / "task.json").write_text("{broken")
    capsys.readouterr()
    assert main(["generate", str(run)]) == 2
    err = capsys.readouterr().err
    assert "task file" in err and "is corrupt" in err and len(err.strip().splitlines()) == 1
    (run / "task.json").write_text(task_json)
    (run / "config.json").write_text("[1, 2")
    with pytest.raises(CheckpointError, match="run config .* is corrupt"):
        load_run(run)
    with pytest.raises(CheckpointError, match="run config .* is corrupt"):
        resume_config(run)
    meta_path = ckpt.find_checkpoint(run) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "format": 3}))
    with pytest.raises(CheckpointError, match="format 3, newer than this seqlab reads"):
        ckpt.open_checkpoint(run)


def test_trainer_state_is_checked_before_it_is_read(tiny_cfg, tmp_path):
    run = train(tiny_cfg("train.max_iters=2", "train.eval_interval=2", run_dir=tmp_path / "h")).run_dir
    step = ckpt.find_checkpoint(run)
    trainer = step / "trainer.pt"
    trainer.write_bytes(trainer.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        ckpt.load_trainer_state(step, ckpt.read_meta(step))
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        train(resume_config(run), resume=run)


def test_unique_tensors_keeps_every_empty_tensor_and_drops_only_aliases():
    from seqlab.train.checkpoint import unique_tensors

    w = torch.randn(3, 4)
    out = unique_tensors({"a": w, "tied": w, "e1": torch.empty(0), "e2": torch.zeros(0, 5), "row": w[1]})
    assert set(out) == {"a", "e1", "e2", "row"}
    assert out["row"].data_ptr() != w.data_ptr()  # a view sharing storage is stored as its own copy
