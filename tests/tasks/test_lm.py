"""CausalLMTask: built from the run config and its saved state, requirements, batches, samples."""

import pytest
import torch

from seqlab.cli.main import main
from seqlab.errors import ConfigError
from seqlab.models import build_model
from seqlab.tasks.base import AtLeast
from seqlab.tasks.lm import CausalLMTask
from seqlab.train import load_run_config, train
from seqlab.train.runs import build_model_for_task, build_task, model_config, resume_config

FAST = [
    "model.preset=tiny",
    "train.batch_size=4",
    "train.max_iters=3",
    "train.eval_interval=3",
    "train.eval_iters=1",
    "train.warmup_iters=1",
    "train.progress=false",
]


@pytest.fixture
def corpus(tmp_path):
    """A corpus without a single newline."""
    path = tmp_path / "flat.txt"
    path.write_text("the quick brown fox jumps over the lazy dog; " * 40)
    return path


def _cfg(*overrides):
    return load_run_config(overrides=[*FAST, *overrides])


def test_built_from_the_config_and_rebuilt_from_its_state(corpus):
    cfg = _cfg(f"data.source={corpus}")
    task = build_task(cfg)
    assert isinstance(task, CausalLMTask) and task.context == 32  # the tiny preset's max_seq_len
    assert task.model_requirements() == {"vocab_size": AtLeast(task.tokenizer.vocab_size)}
    batch = task.batch("train", 3, torch.Generator().manual_seed(0))
    assert batch["input_ids"].shape == (3, 32) and task.count_tokens(batch) == 96
    torch.testing.assert_close(batch["targets"][:, :-1], batch["input_ids"][:, 1:])
    again = CausalLMTask.from_config(cfg, model_config(cfg), task.state_dict())
    assert again.tokenizer.to_dict() == task.tokenizer.to_dict()
    model, model_cfg = build_model_for_task(cfg, task)
    assert model_cfg.vocab_size == task.tokenizer.vocab_size
    cfg.task_options["context"] = 8
    assert build_task(cfg).batch("val", 2, torch.Generator())["input_ids"].shape == (2, 8)


def test_vocab_size_may_be_raised_but_not_lowered(corpus):
    cfg = _cfg(f"data.source={corpus}", "model.vocab_size=64")
    assert build_model_for_task(cfg, build_task(cfg))[1].vocab_size == 64
    cfg = _cfg(f"data.source={corpus}", "model.vocab_size=5")
    with pytest.raises(ConfigError, match="model.vocab_size=5 is smaller than the lm task needs"):
        build_model_for_task(cfg, build_task(cfg))
    with pytest.raises(ConfigError, match="unknown key 'contxt' in task_options of task 'lm'"):
        _cfg("task_options.contxt=8")
    with pytest.raises(ConfigError, match="task_options.context=0 must be a positive int"):
        _cfg("task_options.context=0")


def test_default_prompt_is_one_the_vocabulary_has(corpus, tmp_path):
    task = build_task(_cfg(f"data.source={corpus}"))
    assert task.tokenizer.decode(task.prompt_ids) == "t"  # no "\n" in this corpus: its first token
    with pytest.raises(ConfigError, match=r"train.sample_prompt='ROMEO:' is not in the vocabulary"):
        build_task(_cfg(f"data.source={corpus}", "train.sample_prompt='ROMEO:'"))
    # Checked before training starts: nothing is written.
    with pytest.raises(ConfigError, match="sample_prompt"):
        train(_cfg(f"data.source={corpus}", "train.sample_prompt='ROMEO:'", f"run_dir={tmp_path / 'no'}"))
    assert not (tmp_path / "no").exists()
    assert build_task(_cfg()).tokenizer.decode(build_task(_cfg()).prompt_ids) == "\n"


def test_a_corpus_without_newlines_trains_samples_resumes_and_generates(corpus, tmp_path, capsys):
    run = tmp_path / "flat"
    result = train(_cfg(f"data.source={corpus}", "train.sample_tokens=5", f"run_dir={run}"))
    assert result.sample.startswith("t") and len(result.sample) == 6
    resumed = train(resume_config(run, ["train.max_iters=4"]), resume=run)
    assert resumed.step == 4
    capsys.readouterr()
    assert main(["generate", str(run), "--max-new-tokens", "4", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("t")


def test_sample_options_are_checked(corpus):
    task = build_task(_cfg(f"data.source={corpus}"))
    model = build_model("gpt", "tiny", vocab_size=task.vocab_size)
    assert task.sample(model, prompt="the", max_new_tokens=3, temperature=0).startswith("the")
    with pytest.raises(ConfigError, match="top_k must be an int >= 1"):
        task.sample(model, top_k=0)
    with pytest.raises(ConfigError, match="max_new_tokens must be an int >= 0"):
        task.sample(model, max_new_tokens=-5)
    with pytest.raises(ConfigError, match="the prompt 'Z!' is not in the vocabulary"):
        task.sample(model, prompt="Z!")
    with pytest.raises(ConfigError, match="the lm task's samples take no steps"):
        task.sample(model, steps=3)


def test_generate_errors_are_one_line(corpus, tmp_path, capsys):
    run = tmp_path / "g"
    train(_cfg(f"data.source={corpus}", "train.sample_tokens=0", f"run_dir={run}"))
    for argv, message in (
        (["generate", str(run), "--top-k", "0"], "top_k must be an int >= 1"),
        (["generate", str(run), "--max-new-tokens", "-5"], "max_new_tokens must be an int >= 0"),
    ):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


def test_data_encoding_reaches_the_corpus(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes(("caf\xe9 cr\xe8me br\xfbl\xe9e. " * 30).encode("latin-1"))
    task = build_task(_cfg(f"data.source={path}", "data.encoding=latin-1"))
    assert "é" in task.tokenizer.decode(list(range(task.vocab_size)))
    # (an installed codec search function may accept any name, so the test uses a known non-text codec)
    with pytest.raises(ConfigError, match="data.encoding='rot13' is not a text encoding"):
        _cfg("data.encoding=rot13")
