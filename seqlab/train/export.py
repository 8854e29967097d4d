"""`seqlab export RUN --to hf DIR`: a run's checkpoint as a Hugging Face checkpoint folder.

    t5    -> transformers' own T5ForConditionalGeneration (T5 v1.1, safetensors): loads with
             AutoModelForSeq2SeqLM.from_pretrained(DIR) and gives seqlab's logits
    kat5  -> seqlab's KAT5HFForConditionalGeneration (model_type "kat5"): loads with
             AutoModelForSeq2SeqLM.from_pretrained(DIR) after `import seqlab.models.t5_hf`
             (which registers the type)

Beside the weights and config.json, DIR/seqlab_task.json holds the run's task state (the
vocabulary mapping symbols to ids), which the ids are meaningless without. Needs the `hf`
extra (transformers). Other models have no Hugging Face form: a one-line error names the
ones that do.
"""

import json
from pathlib import Path

from seqlab.errors import ConfigError
from seqlab.train.checkpoint import atomic_write_text
from seqlab.train.runs import load_run, read_run_config, read_task_state

TARGETS = ("hf",)
HF_EXPORTS = ("t5", "kat5")


def _t5_hf():
    try:
        from seqlab.models import t5_hf
    except ImportError as e:
        raise ConfigError(
            f"exporting to Hugging Face needs transformers ({e}): pip install 'seqlab[hf]'"
        ) from None
    return t5_hf


def export_run(run_dir: str | Path, to: str, out_dir: str | Path, checkpoint: str = "best") -> str:
    """Write checkpoint `checkpoint` (best | latest | a step folder) of run `run_dir` to
    `out_dir` in format `to`; returns a line saying what was written and how to load it."""
    if to not in TARGETS:
        raise ConfigError(f"unknown export format {to!r}; choose one of: {', '.join(TARGETS)}")
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    name = read_run_config(run_dir).model.get("name", "gpt")
    if name not in HF_EXPORTS:
        raise ConfigError(
            f"seqlab export --to hf takes {' and '.join(HF_EXPORTS)} runs; {str(run_dir)!r} holds a "
            f"{name!r} model"
        )
    t5_hf = _t5_hf()
    model, _, cfg, meta = load_run(run_dir, checkpoint, "cpu")
    if name == "t5":
        hf = t5_hf.to_hf(model).eval()
        loader = "transformers.AutoModelForSeq2SeqLM.from_pretrained"
    else:
        hf = t5_hf.KAT5HFForConditionalGeneration.from_core(model)
        loader = "import seqlab.models.t5_hf; transformers.AutoModelForSeq2SeqLM.from_pretrained"
    out_dir.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out_dir)
    task_state = {"task": cfg.task, "state": read_task_state(run_dir, cfg.task)}
    atomic_write_text(out_dir / "seqlab_task.json", json.dumps(task_state, indent=1))
    step = meta.get("step", "?")
    return (
        f"exported {name} run {str(run_dir)!r} (checkpoint {checkpoint}, step {step}) to {str(out_dir)!r} as "
        f"{type(hf).__name__}; load it with {loader}({str(out_dir)!r})"
    )


__all__ = ["HF_EXPORTS", "TARGETS", "export_run"]
