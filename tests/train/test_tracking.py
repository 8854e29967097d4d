"""Experiment tracking (train.log_to): TensorBoard event files and offline wandb runs hold the
same scalars as metrics.jsonl, also across a resume; off by default; bad names and missing
packages are one-line errors."""

import json
import struct
import sys

import pytest

from seqlab.cli.main import main
from seqlab.errors import ConfigError
from seqlab.train import tracking, train
from seqlab.train.callbacks import Callback
from seqlab.train.metrics import read_metrics
from seqlab.train.runs import resume_config
from seqlab.train.tracking import Tracker, scalars

SHORT = ["train.max_iters=6", "train.eval_interval=3", "train.sample_tokens=0"]


def expected_scalars(run_dir) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of every number in metrics.jsonl, tagged as the trackers tag them."""
    out: dict[str, dict[int, float]] = {}
    for record in read_metrics(run_dir / "metrics.jsonl"):
        for tag, value in scalars(record):
            out.setdefault(tag, {})[record["step"]] = value
    return out


def tensorboard_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} as TensorBoard reads RUN_DIR/tensorboard (purges applied)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def assert_same_scalars(got: dict[str, list[tuple[int, float]]], expected: dict[str, dict[int, float]]):
    assert sorted(got) == sorted(expected)
    for tag, points in got.items():
        steps = [step for step, _ in points]
        assert steps == sorted(expected[tag]), f"{tag}: steps {steps}"  # each step once, in order
        for step, value in points:
            # TensorBoard keeps float32; wandb float64 as JSON text.
            assert value == pytest.approx(expected[tag][step], rel=1e-6, abs=1e-6), (tag, step)


def test_cli_log_to_tensorboard_writes_the_scalars_of_metrics_jsonl(tmp_path):
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--batch-size", "8", "--no-progress", "--run-dir", str(run)]
    assert main([*args, "--set", *SHORT, "train.eval_iters=2", "train.log_to=tensorboard"]) == 0
    expected = expected_scalars(run)
    assert {"train/loss", "train/lr", "train/tokens_per_s", "val/loss"} <= set(expected)
    assert sorted(expected["val/loss"]) == [0, 3, 6]
    assert_same_scalars(tensorboard_scalars(run), expected)
    assert json.loads((run / "config.json").read_text())["train"]["log_to"] == ["tensorboard"]
    assert not (run / "wandb").exists()


class FailAt(Callback):
    """Raises an error after step N, as a crash would: nothing is saved for the steps since the
    last checkpoint, so a resume runs them again."""

    name = "fail_at"

    def __init__(self, step):
        self.step = step

    def on_train_step(self, step, loss, model, optimizer):
        if step == self.step:
            raise RuntimeError("crash")


def test_a_resume_hides_the_steps_that_run_again_and_a_crash_loses_no_events(tiny_cfg, tmp_path):
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="crash"):
        train(tiny_cfg(*SHORT, "train.log_to=tensorboard", run_dir=run), callbacks=[FailAt(5)])
    # Steps 1..5 are on disk, beyond the checkpoint at 3.
    assert [step for step, _ in tensorboard_scalars(run)["train/loss"]] == [1, 2, 3, 4, 5]
    train(resume_config(run), resume=run)  # continues from step 3: steps 4 and 5 run again
    got, expected = tensorboard_scalars(run), expected_scalars(run)
    assert sorted(expected["train/loss"]) == [1, 2, 3, 4, 5, 6]
    assert_same_scalars(got, expected)


class RecordingTracker(Tracker):
    module = "json"  # always importable
    made: list["RecordingTracker"] = []

    def __init__(self, run_dir, config, keep_until_step):
        self.records, self.closed = [], 0
        self.made.append(self)

    def log(self, record):
        self.records.append(record)

    def close(self):
        self.closed += 1


@pytest.mark.parametrize("ending", ["finished", "interrupted", "failed"])
def test_trackers_get_every_record_and_are_closed_however_the_run_ends(
    ending, stop_at, tiny_cfg, tmp_path, monkeypatch
):
    monkeypatch.setitem(tracking.TRACKERS, "recording", RecordingTracker)
    monkeypatch.setattr(RecordingTracker, "made", [])
    cfg = tiny_cfg(
        "train.max_iters=3", "train.eval_interval=2", "train.log_to=recording", run_dir=tmp_path / "r"
    )
    if ending == "finished":
        train(cfg)
    else:
        with pytest.raises(KeyboardInterrupt if ending == "interrupted" else RuntimeError):
            train(cfg, callbacks=[stop_at(2) if ending == "interrupted" else FailAt(2)])
    (tracker,) = RecordingTracker.made
    assert tracker.closed == 1
    # Exactly what metrics.jsonl holds (JSON keeps Python floats exactly), up to the last step.
    assert tracker.records == read_metrics(tmp_path / "r" / "metrics.jsonl")
    assert tracker.records[-1]["step"] == (3 if ending == "finished" else 2)


class BrokenTracker(RecordingTracker):
    def log(self, record):
        if record["step"] >= 2:
            raise OSError("disk full")
        super().log(record)


def test_a_failing_tracker_is_dropped_and_training_goes_on(tiny_cfg, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(tracking.TRACKERS, "broken", BrokenTracker)
    monkeypatch.setattr(RecordingTracker, "made", [])
    cfg = tiny_cfg(
        "train.max_iters=4", "train.eval_interval=2", "train.log_to=broken", run_dir=tmp_path / "r"
    )
    assert train(cfg).step == 4
    (tracker,) = RecordingTracker.made
    assert tracker.closed == 1 and all(r["step"] < 2 for r in tracker.records)
    assert read_metrics(tmp_path / "r" / "metrics.jsonl")[-1]["step"] == 4  # the file has every record
    assert "BrokenTracker failed (OSError: disk full)" in capsys.readouterr().out


def test_default_run_writes_no_tracker_files(tiny_cfg, tmp_path):
    result = train(tiny_cfg("train.max_iters=2", "train.eval_interval=2", "train.sample_tokens=0"))
    assert tiny_cfg().train.log_to == []
    files = {p.name for p in result.run_dir.iterdir()}
    assert "metrics.jsonl" in files and not files & {"tensorboard", "wandb", "wandb_run_id"}


def wandb_records(run_file):
    """The protobuf records of an offline run's .wandb file (a LevelDB-style log: a 7-byte file
    header, then 32 KiB blocks of chunks, each with a 7-byte header: crc32, length, type)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    block, header, pos, chunks = 32768, 7, 7, b""
    while pos + header <= len(data):
        if block - pos % block < header:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + header])
        chunks += data[pos + header : pos + header + length]
        pos += header + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


def wandb_history(run_file) -> dict[str, list[tuple[int, float]]]:
    """{key: [(step, value), ...]} of the run's logged history (wandb's own _keys left out)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for record in wandb_records(run_file):
        if record.WhichOneof("record_type") == "history":
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                if not key.startswith("_"):
                    out.setdefault(key, []).append((record.history.step.num, json.loads(item.value_json)))
    return out


def test_wandb_offline_run_logs_the_metrics_and_a_resume_continues_its_id(tiny_cfg, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)  # the default: offline
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    run = tmp_path / "run"
    train(
        tiny_cfg(
            "train.max_iters=3",
            "train.eval_interval=3",
            "train.sample_tokens=0",
            "train.log_to=wandb",
            run_dir=run,
        )
    )
    run_id = (run / "wandb_run_id").read_text().strip()
    (first,) = list((run / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    expected = expected_scalars(run)
    assert_same_scalars(wandb_history(first), expected)
    (run_record,) = [r.run for r in wandb_records(first) if r.WhichOneof("record_type") == "run"]
    assert (run_record.project, run_record.display_name) == ("seqlab", "run")
    config = {item.key: json.loads(item.value_json) for item in run_record.config.update}
    assert config["model"]["name"] == "gpt" and config["train"]["log_to"] == ["wandb"]
    assert not (run / "tensorboard").exists()

    train(resume_config(run, ["train.max_iters=5"]), resume=run)
    runs = sorted((run / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(runs) == 2 and (run / "wandb_run_id").read_text().strip() == run_id
    resumed = wandb_history(next(r for r in runs if r != first))
    after = {tag: {s: v for s, v in points.items() if s > 3} for tag, points in expected_scalars(run).items()}
    assert_same_scalars(resumed, {tag: points for tag, points in after.items() if points})
    assert [step for step, _ in resumed["train/loss"]] == [4, 5]


def test_unknown_tracker_names_the_choices(tiny_cfg):
    with pytest.raises(ConfigError, match=r"unknown tracker 'mlflow'; choose from tensorboard, wandb") as e:
        tiny_cfg("train.log_to=tensorboard,mlflow")
    assert "\n" not in str(e.value)
    assert tiny_cfg("train.log_to=[wandb, tensorboard]").train.log_to == ["wandb", "tensorboard"]
    assert tiny_cfg("train.log_to= tensorboard ,").train.log_to == ["tensorboard"]
    assert tiny_cfg("train.log_to=null").train.log_to == []


@pytest.mark.parametrize("name", ["tensorboard", "wandb"])
def test_a_missing_tracker_package_names_its_extra_before_training(name, tiny_cfg, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, name, None)  # `import name` now fails as if not installed
    with pytest.raises(ConfigError, match=rf"needs the {name} package .*pip install 'seqlab\[{name}\]'") as e:
        train(tiny_cfg(f"train.log_to={name}", run_dir=tmp_path / "run"))
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()  # nothing was started
