"""Checkpoints: safetensors weights + trainer state, written atomically, verified on load.

Layout inside a run directory:

    checkpoints/step_000500/model.safetensors   weights (tied tensors stored once)
    checkpoints/step_000500/trainer.pt          optimizer, schedule step, RNG and data state
    checkpoints/step_000500/meta.json           format, model name + config, step, val loss, sha256s
    checkpoints/latest, checkpoints/best        one line: the directory name

A checkpoint directory is written under a temporary name and renamed when complete; the
pointer files are replaced atomically after that. A crash at any moment leaves the previous
checkpoint intact and pointed to. trainer.pt is read with `weights_only=True` after its
sha256 is checked, so loading never executes pickled code.

meta.json["format"] is the checkpoint format: 2 since the one-Block refactor (blocks.i.mixer /
blocks.i.ffn parameter names, callback states by name, values a model changes while it trains
saved as buffers). A checkpoint without it was written by an older seqlab whose layer layout
differs; it is refused with a one-line error (open_checkpoint) instead of failing on names.
"""

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from seqlab.errors import CheckpointError

FILES = ("model.safetensors", "trainer.pt", "meta.json")
FORMAT = 2


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


def unique_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict as safetensors stores it: tied aliases dropped (the embedding and the head
    share one tensor: it is kept under its first name), every tensor contiguous and alone in
    its memory (safetensors refuses shared storage)."""
    out, seen, storages = {}, set(), set()
    for key, value in state.items():
        value = value.detach()
        if value.numel() == 0:  # every empty tensor has data_ptr 0: never an alias
            out[key] = value.contiguous()
            continue
        ptr = value.untyped_storage().data_ptr()
        view = (ptr, value.storage_offset(), value.shape, value.stride(), value.dtype)
        if view in seen:
            continue  # the same tensor under a second name: load_weights restores the tie
        seen.add(view)
        value = value.clone() if ptr in storages or not value.is_contiguous() else value
        storages.add(ptr)
        out[key] = value
    return out


def save_checkpoint(
    ckpt_root: Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    trainer_state: dict[str, Any],
    meta: dict[str, Any],
    is_best: bool = False,
) -> Path:
    """Write checkpoint `step_{step}` atomically; update `latest` (and `best`); prune the rest.

    model_state: the model's full state dict (parallel.model_state_dict), on the CPU or not.
    """
    ckpt_root = Path(ckpt_root)
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:07d}"
    final = ckpt_root / name
    tmp = Path(tempfile.mkdtemp(dir=ckpt_root, prefix=f".tmp_{name}_"))
    save_file(unique_tensors(model_state), str(tmp / "model.safetensors"))
    torch.save(trainer_state, tmp / "trainer.pt")
    meta = {"format": FORMAT, **meta, "step": step, "sha256": {f: _sha256(tmp / f) for f in FILES[:2]}}
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
    """Resolve a run directory, a checkpoints/ folder or a step folder to one checkpoint folder.

    which: "latest", "best" (the latest when no evaluation has saved a best yet) or the name
    of a step folder ("step_0000500", or step_500 for short); anything else, or a pointer to a
    missing folder, is an error that lists the checkpoints there are.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint path {str(path)!r} does not exist")
    if (path / "meta.json").is_file() or (path / "model.safetensors").is_file():
        return path
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    steps = sorted(d.name for d in root.iterdir() if d.is_dir() and d.name.startswith("step_"))
    if not steps and _read_pointer(root, "latest") is None:
        raise CheckpointError(
            f"no checkpoint found in {str(path)!r} (expected checkpoints/{which} pointing at a step folder). "
            f"Train first with `seqlab train`, or pass the run directory that holds checkpoints/."
        )
    there = f"checkpoints there: latest, best, {', '.join(steps) or 'none'}"
    if which in ("latest", "best"):
        name = _read_pointer(root, which) or _read_pointer(root, "latest")
        if name is None or not (root / name).is_dir():
            raise CheckpointError(
                f"checkpoints/{which} of {str(path)!r} points at {name!r}, which does not exist; pick "
                f"another ({there})"
            )
        return root / name
    if which in steps:
        return root / which
    match = re.fullmatch(r"step_?(\d+)", which)
    if match:  # step_500 for step_0000500
        name = f"step_{int(match.group(1)):07d}"
        if name in steps:
            return root / name
    raise CheckpointError(f"no checkpoint {which!r} in {str(path)!r}; {there}")


def read_meta(ckpt_dir: Path) -> dict[str, Any]:
    meta_path = Path(ckpt_dir) / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {str(ckpt_dir)!r} has no meta.json: it is incomplete") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint {str(ckpt_dir)!r}: meta.json is corrupt ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {str(ckpt_dir)!r}: meta.json is corrupt (not a mapping)")
    return meta


def check_format(meta: dict[str, Any], ckpt_dir: Path) -> None:
    """Refuse a checkpoint of another format with one line that says why."""
    fmt = meta.get("format")
    if fmt == FORMAT:
        return
    if fmt is None:
        raise CheckpointError(
            f"checkpoint {str(ckpt_dir)!r} was written by an older seqlab (checkpoint format 1, "
            f"version {meta.get('seqlab_version', '?')}) whose layer layout changed; retrain, or use "
            "that seqlab version to evaluate or continue it"
        )
    if isinstance(fmt, int) and fmt > FORMAT:
        raise CheckpointError(
            f"checkpoint {str(ckpt_dir)!r} has format {fmt}, newer than this seqlab reads ({FORMAT}); "
            "upgrade seqlab"
        )
    raise CheckpointError(f"checkpoint {str(ckpt_dir)!r}: meta.json is corrupt (format {fmt!r})")


def open_checkpoint(path: str | Path, which: str = "latest") -> tuple[Path, dict[str, Any]]:
    """(checkpoint folder, its meta) of a run directory, checked to be of this seqlab's format."""
    ckpt_dir = find_checkpoint(path, which)
    meta = read_meta(ckpt_dir)
    check_format(meta, ckpt_dir)
    return ckpt_dir, meta


def verify(ckpt_dir: Path, meta: dict[str, Any], files: tuple[str, ...] | None = None) -> None:
    """Check the sha256 of the checkpoint's files (or of `files` only)."""
    for fname, expected in meta.get("sha256", {}).items():
        if files is not None and fname not in files:
            continue
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
    verify(ckpt_dir, meta, ("model.safetensors",))  # eval and generate need no trainer.pt
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
    # A tied tensor is stored once under one of its names (unique_tensors); the others alias it.
    params = dict(model.named_parameters(remove_duplicate=False))
    if key not in params:
        return False
    return any(params[key] is params.get(k) for k in state)


def load_trainer_state(ckpt_dir: Path, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """trainer.pt of a checkpoint; with `meta`, its sha256 is checked before anything is read."""
    path = Path(ckpt_dir) / "trainer.pt"
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(ckpt_dir)!r} has no trainer.pt: cannot resume from it")
    if meta is not None:
        verify(ckpt_dir, meta, ("trainer.pt",))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch raises several types for truncated or unsafe files
        # torch's own message would suggest weights_only=False: never good advice for a file
        # that does not load as plain tensors and containers.
        raise CheckpointError(
            f"cannot read trainer state {str(path)!r}: the file is corrupt or not a seqlab trainer state"
        ) from None
