"""Run configuration: files, dotted overrides, and errors that name the key."""

import json

import pytest

from seqlab.errors import ConfigError
from seqlab.train.config import load_run_config


def test_defaults_are_the_baby_recipe():
    cfg = load_run_config()
    assert cfg.model == {"name": "gpt", "preset": "baby"}
    assert (cfg.train.batch_size, cfg.train.max_iters, cfg.train.lr, cfg.train.min_lr) == (
        12,
        2000,
        1e-3,
        1e-4,
    )


def test_yaml_and_json_files_then_overrides(tmp_path):
    y = tmp_path / "a.yaml"
    y.write_text("model:\n  name: gpt\n  preset: tiny\n  dim: 48\ntrain:\n  lr: 0.01\n")
    j = tmp_path / "b.json"
    j.write_text(json.dumps({"train": {"max_iters": 7}}))
    cfg = load_run_config([str(y), str(j)], ["train.lr=3e-4", "model.num_layers=3", "data.source=foo.txt"])
    assert cfg.model == {"name": "gpt", "preset": "tiny", "dim": 48, "num_layers": 3}
    assert cfg.train.lr == 3e-4 and cfg.train.max_iters == 7
    assert cfg.data.source == "foo.txt"


def test_unknown_key_names_it_and_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"'max_iter'.*Did you mean 'max_iters'"):
        load_run_config(overrides=["train.max_iter=5"])
    with pytest.raises(ConfigError, match=r"'dimm'.*Did you mean 'dim'"):
        load_run_config(overrides=["model.dimm=5"])
    with pytest.raises(ConfigError, match="'trian'"):
        load_run_config(overrides=["trian.lr=5"])


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match=r"train\.max_iters: expected int, got 'many'"):
        load_run_config(overrides=["train.max_iters=many"])
    with pytest.raises(ConfigError, match=r"num_heads: expected int, got 2.5"):
        load_run_config(overrides=["model.num_heads=2.5"])
    with pytest.raises(ConfigError, match="train.dtype"):
        load_run_config(overrides=["train.dtype=fp8"])


def test_bad_files_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_run_config([str(tmp_path / "nope.yaml")])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid json"):
        load_run_config([str(bad)])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_run_config(overrides=["lr"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lr=-1", r"train.lr=-1.0 is out of range: it must be a finite number in \(0, inf\)"),
        ("train.lr=nan", r"train.lr=nan is out of range"),
        ("train.lr=inf", r"train.lr=inf is out of range"),
        ("train.beta1=1.5", r"train.beta1=1.5 is out of range: .* in \[0, 1\)"),
        ("train.beta2=1", r"train.beta2=1.0 is out of range"),
        ("train.min_lr=-1", r"train.min_lr=-1.0 is out of range: .* in \[0, inf\)"),
        ("train.weight_decay=-5", r"train.weight_decay=-5.0 is out of range"),
        ("train.grad_clip=-1", r"train.grad_clip=-1.0 is out of range"),
        ("train.max_time=-5", r"train.max_time=-5.0 is out of range: .* in \(0, inf\)"),
        ("train.max_time=0", r"train.max_time=0.0 is out of range"),
        ("train.warmup_iters=-10", r"train.warmup_iters=-10 must be >= 0"),
        ("train.sample_tokens=-1", r"train.sample_tokens=-1 must be >= 0"),
        ("train.batch_size=0", r"train.batch_size=0 must be >= 1"),
        ("train.checkpoint_interval=0", r"train.checkpoint_interval=0 must be >= 1 or null"),
        ("train.lr_decay_iters=0", r"train.lr_decay_iters=0 must be >= 1 or null"),
        ("train.parallel=zero", r"train.parallel='zero' must be one of \('ddp', 'fsdp'\)"),
        ("train.device=banana", r"train.device='banana' is not a device name"),
        ("data.val_fraction=1", r"data.val_fraction=1.0 is out of range: .* in \(0, 1\)"),
        ("data.tokenizer=wordpiece", r"data.tokenizer='wordpiece' must be one of"),
        ("data.vocab_size=0", r"data.vocab_size=0 must be >= 1"),
        ("task=translate", r"task='translate' is not a task; choose one of: lm, forecast"),
    ],
)
def test_out_of_range_values_name_the_key_the_value_and_the_range(override, message):
    with pytest.raises(ConfigError, match=message):
        load_run_config(overrides=[override])


def test_valid_edge_values_are_accepted():
    cfg = load_run_config(
        overrides=[
            "train.beta1=0",
            "train.min_lr=0",
            "train.grad_clip=0",
            "train.parallel=fsdp",
            "train.device=cpu",
        ]
    )
    assert cfg.train.parallel == "fsdp" and cfg.train.sample_prompt is None and cfg.data.encoding == "utf-8"
