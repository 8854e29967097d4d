"""Reopen a run directory: its config, task (with the saved tokenizer) and a checkpoint's model."""

import json
from pathlib import Path

import torch

from seqlab.errors import CheckpointError
from seqlab.train import checkpoint as ckpt
from seqlab.train.config import RunConfig, run_config_from_dict
from seqlab.train.loop import build_model_for_task, build_task


def load_run(
    run_dir: str | Path,
    which: str = "best",
    device: str | torch.device = "cpu",
    data_source: str | None = None,
):
    """(model, task, cfg, meta) for checkpoint `which` (best | latest | a step folder) of a run.

    `data_source` evaluates on other text with the run's own tokenizer.
    """
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{str(run_dir)!r} is not a seqlab run directory (no config.json)")
    cfg: RunConfig = run_config_from_dict(json.loads(cfg_path.read_text()))
    if data_source is not None:
        cfg.data.source = data_source
    ckpt_dir = ckpt.find_checkpoint(run_dir, which)
    meta = ckpt.read_meta(ckpt_dir)
    saved_name = meta.get("model", {}).get("name")
    if saved_name and saved_name != cfg.model.get("name"):
        raise CheckpointError(
            f"checkpoint {str(ckpt_dir)!r} holds a {saved_name!r} model but the run config says "
            f"{cfg.model.get('name')!r}; the run directory is inconsistent"
        )
    tokenizer_state = json.loads((run_dir / "task.json").read_text()).get("tokenizer")
    task = build_task(cfg, cfg.model["max_seq_len"], tokenizer_state)
    model, _ = build_model_for_task(cfg, task)
    ckpt.load_weights(model, ckpt_dir, meta)
    model.to(device).eval()
    return model, task, cfg, meta
