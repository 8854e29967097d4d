"""`seqlab export RUN --to hf DIR`: a run's checkpoint as a Hugging Face checkpoint folder.

    t5           -> transformers' own T5ForConditionalGeneration (T5 v1.1, safetensors): loads
                    with AutoModelForSeq2SeqLM.from_pretrained(DIR) and gives seqlab's logits
    every other  -> seqlab's generic wrapper (seqlab.models.hf, model_type "seqlab_<name>"):
                    loads after `import seqlab.models.hf` (which registers the types) with
                    AutoModelForCausalLM (lm models), AutoModelForSeq2SeqLM (seq2seq) or
                    AutoModel (grid and forecast models: forward only, no generate)

Beside the weights and config.json, DIR/seqlab_task.json holds the run's task state (the
vocabulary mapping symbols to ids), which the ids are meaningless without. Needs the `hf`
extra (transformers).
"""

import json
from pathlib import Path

from seqlab.errors import ConfigError
from seqlab.models import model_entry
from seqlab.train.checkpoint import atomic_write_text
from seqlab.train.runs import load_run, read_task_state

TARGETS = ("hf",)


def _hf_modules():
    try:
        from seqlab.models import hf, t5_hf
    except ImportError as e:
        raise ConfigError(
            f"exporting to Hugging Face needs transformers ({e}): pip install 'seqlab[hf]'"
        ) from None
    return hf, t5_hf


def export_run(run_dir: str | Path, to: str, out_dir: str | Path, checkpoint: str = "best") -> str:
    """Write checkpoint `checkpoint` (best | latest | a step folder) of run `run_dir` to
    `out_dir` in format `to`; returns a line saying what was written and how to load it."""
    if to not in TARGETS:
        raise ConfigError(f"unknown export format {to!r}; choose one of: {', '.join(TARGETS)}")
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    hf, t5_hf = _hf_modules()
    model, _, cfg, meta = load_run(run_dir, checkpoint, "cpu")
    name = hf.registry_name(model)
    if name == "t5" and t5_hf.exportable(model.config):
        exported = t5_hf.to_hf(model).eval()
        loader = "transformers.AutoModelForSeq2SeqLM.from_pretrained"
    else:  # every other model, and a t5 that is not T5 v1.1 (another ffn, mixer or position)
        exported = hf.from_core(model)
        auto = hf.AUTO_CLASSES.get(model_entry(name).task, hf.AutoModel).__name__
        loader = f"import seqlab.models.hf; transformers.{auto}.from_pretrained"
    out_dir.mkdir(parents=True, exist_ok=True)
    exported.save_pretrained(out_dir)
    task_state = {"task": cfg.task, "state": read_task_state(run_dir, cfg.task)}
    atomic_write_text(out_dir / "seqlab_task.json", json.dumps(task_state, indent=1))
    step = meta.get("step", "?")
    return (
        f"exported {name} run {str(run_dir)!r} (checkpoint {checkpoint}, step {step}) to {str(out_dir)!r} as "
        f"{type(exported).__name__}; load it with {loader}({str(out_dir)!r})"
    )


__all__ = ["TARGETS", "export_run"]
