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
