"""Checkpoints: safetensors weights + trainer state, written atomically, verified on load.

Layout inside a run directory:

    checkpoints/step_000500/model.safetensors   weights (tied tensors stored once)
    checkpoints/step_000500/trainer.pt          optimizer, schedule step, RNG and data state
    checkpoints/step_000500/meta.json           model name + config, step, val loss, sha256s
    checkpoints/latest, checkpoints/best        one line: the directory name

A checkpoint directory is written under a temporary name and renamed when complete; the
pointer files are replaced atomically after that. A crash at any moment leaves the previous
checkpoint intact and pointed to. trainer.pt is read with `weights_only=True`, so loading
never executes pickled code.
"""

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_model

from seqlab.errors import CheckpointError

FILES = ("model.safetensors", "trainer.pt", "meta.json")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(
    ckpt_root: Path,
    step: int,
    model: torch.nn.Module,
    trainer_state: dict[str, Any],
    meta: dict[str, Any],
    is_best: bool = False,
) -> Path:
    """Write checkpoint `step_{step}` atomically; update `latest` (and `best`); prune the rest."""
    ckpt_root = Path(ckpt_root)
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:07d}"
    final = ckpt_root / name
    tmp = Path(tempfile.mkdtemp(dir=ckpt_root, prefix=f".tmp_{name}_"))
    save_model(model, str(tmp / "model.safetensors"))
    torch.save(trainer_state, tmp / "trainer.pt")
    meta = {**meta, "step": step, "sha256": {f: _sha256(tmp / f) for f in FILES[:2]}}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_text(ckpt_root / "latest", name)
    if is_best:
        atomic_write_text(ckpt_root / "best", name)
    _prune(ckpt_root)
    return final


def _prune(ckpt_root: Path) -> None:
    keep = {_read_pointer(ckpt_root, p) for p in ("latest", "best")}
    for d in ckpt_root.iterdir():
        if d.is_dir() and d.name not in keep:
            shutil.rmtree(d, ignore_errors=True)


def _read_pointer(ckpt_root: Path, which: str) -> str | None:
    p = ckpt_root / which
    return p.read_text().strip() if p.is_file() else None


def find_checkpoint(path: str | Path, which: str = "latest") -> Path:
    """Resolve a run directory, a checkpoints/ folder or a step folder to one checkpoint folder."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint path {str(path)!r} does not exist")
    if (path / "meta.json").is_file() or (path / "model.safetensors").is_file():
        return path
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    name = _read_pointer(root, which) or _read_pointer(root, "latest")
    if name is None or not (root / name).is_dir():
        raise CheckpointError(
            f"no checkpoint found in {str(path)!r} (expected checkpoints/{which} pointing at a step folder). "
            f"Train first with `seqlab train`, or pass the run directory that holds checkpoints/."
        )
    return root / name


def read_meta(ckpt_dir: Path) -> dict[str, Any]:
    meta_path = Path(ckpt_dir) / "meta.json"
    try:
        return json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {str(ckpt_dir)!r} has no meta.json: it is incomplete") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint {str(ckpt_dir)!r}: meta.json is corrupt ({e})") from None


def verify(ckpt_dir: Path, meta: dict[str, Any]) -> None:
    for fname, expected in meta.get("sha256", {}).items():
        f = Path(ckpt_dir) / fname
        if not f.is_file():
            raise CheckpointError(f"checkpoint {str(ckpt_dir)!r} is missing {fname}: it is incomplete")
        if _sha256(f) != expected:
            raise CheckpointError(
                f"checkpoint file {str(f)!r} is corrupt or truncated (sha256 mismatch). "
                f"Use another checkpoint (e.g. checkpoints/best) or retrain."
            )


def load_weights(model: torch.nn.Module, ckpt_dir: Path, meta: dict[str, Any] | None = None) -> None:
    """Load model.safetensors into `model`; raise CheckpointError for corrupt or foreign files."""
    ckpt_dir = Path(ckpt_dir)
    meta = meta if meta is not None else read_meta(ckpt_dir)
    verify(ckpt_dir, meta)
    try:
        state = load_file(str(ckpt_dir / "model.safetensors"))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {str(ckpt_dir / 'model.safetensors')!r}: {e}") from None
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state and not _is_tied_alias(model, k, state))
    unexpected = sorted(k for k in state if k not in own)
    mismatched = sorted(k for k in state if k in own and own[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        saved_name = meta.get("model", {}).get("name", "?")
        raise CheckpointError(
            f"checkpoint {str(ckpt_dir)!r} (model {saved_name!r}) does not fit this "
            f"{type(model).__name__}: missing {missing[:3]}, unexpected {unexpected[:3]}, "
            f"shape mismatch {mismatched[:3]}. Build the model from the checkpoint's meta.json config."
        )
    model.load_state_dict(state, strict=False)


def _is_tied_alias(model: torch.nn.Module, key: str, state: dict) -> bool:
    # save_model stores a tied tensor once under one of its names; the others alias it.
    params = dict(model.named_parameters(remove_duplicate=False))
    if key not in params:
        return False
    return any(params[key] is params.get(k) for k in state)


def load_trainer_state(ckpt_dir: Path) -> dict[str, Any]:
    path = Path(ckpt_dir) / "trainer.pt"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(
            f"checkpoint {str(ckpt_dir)!r} has no trainer.pt: cannot resume from it"
        ) from None
    except Exception as e:  # torch raises several types for truncated or unsafe files
        raise CheckpointError(f"cannot read trainer state {str(path)!r}: {e}") from None
