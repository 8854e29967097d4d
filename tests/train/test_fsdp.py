"""seqlab.train.parallel: FSDP2 and DDP over 2 CPU processes (gloo) train like one process
and resume exactly; with one process every function is the plain behaviour.

The first test runs this file as a torchrun worker (`python -m torch.distributed.run ...
test_fsdp.py MODE OUT`): its own small loop over wrap, no_sync (gradient accumulation),
clip_grad_norm and the full state dicts, on the registry's gpt `tiny`, at one global batch of
8 rows that one process, DDP and FSDP split the same way. `seqlab train --parallel
fsdp` end to end: test_parallel_trainer.py; the timeout on a silent rank: test_distributed.py.
"""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from seqlab.errors import ConfigError
from seqlab.models import build_model
from seqlab.train import distributed, parallel
from seqlab.train.distributed import DistInfo
from seqlab.train.optim import make_optimizer

STEPS, CUT = 20, 10
GLOBAL_BATCH, ACCUM, SEQ, VOCAB = 8, 2, 16, 65

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
RUN = dict(check=True, env=ENV, timeout=240)
SETUPS = [("single", "ddp", 1), ("ddp", "ddp", 2), ("fsdp", "fsdp", 2)]

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="gloo process groups need Linux or macOS")


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of `step`, the same in every process and every run (so a resumed run
    needs no data state): counting sequences from random starts, which a model learns fast."""
    gen = torch.Generator().manual_seed(1000 + step)
    start = torch.randint(0, VOCAB, (GLOBAL_BATCH, 1), generator=gen)
    ids = (start + torch.arange(SEQ + 1)) % VOCAB
    return ids[:, :-1], ids[:, 1:]


def _train(mode: str, info, device, start: int, stop: int, saved: dict | None):
    """Steps start..stop of a fresh model (resumed from `saved`): losses and full state."""
    torch.manual_seed(0)
    model = build_model("gpt", "tiny", vocab_size=VOCAB, dropout=0.0)
    if saved is not None:
        model.load_state_dict(saved["model"])  # before wrap: FSDP shards the loaded weights
    train_model = parallel.wrap(model, info, device, mode)
    optimizer = make_optimizer(train_model, 3e-3, 0.1, (0.9, 0.95))
    if saved is not None:
        parallel.load_optimizer_state(train_model, optimizer, saved["optimizer"], mode)
    per_rank = GLOBAL_BATCH // (info.world_size * ACCUM)
    losses = []
    for step in range(start, stop):
        x, y = _batch(step)
        rows = slice(info.rank * per_rank * ACCUM, (info.rank + 1) * per_rank * ACCUM)
        x, y = x[rows], y[rows]
        step_loss = torch.zeros(())
        for micro in range(ACCUM):
            mb = slice(micro * per_rank, (micro + 1) * per_rank)
            with parallel.no_sync(train_model, mode, sync=micro == ACCUM - 1):
                loss = train_model(x[mb], targets=y[mb]).loss
            (loss / ACCUM).backward()
            step_loss += loss.detach() / ACCUM
        losses.append(distributed.mean_across(step_loss, info).item())
        parallel.clip_grad_norm(train_model, 0.5, mode)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    # Every process calls the full state dicts (a collective under FSDP); rank 0 gets them.
    state = {
        "model": parallel.model_state_dict(train_model, mode),
        "optimizer": parallel.optimizer_state_dict(train_model, optimizer, mode),
    }
    return losses, state


def _worker(mode: str, out: Path) -> None:
    """The uninterrupted run, then a run cut at CUT whose checkpoint goes through a file (rank 0
    writes it, every process reads it, as in `seqlab train --resume`) into fresh objects."""
    info, device = distributed.setup("cpu")
    losses, _ = _train(mode, info, device, 0, STEPS, None)
    first, state = _train(mode, info, device, 0, CUT, None)
    if info.is_main:
        torch.save(state, out / "ckpt.pt")
    distributed.barrier(info)
    second, _ = _train(mode, info, device, CUT, STEPS, torch.load(out / "ckpt.pt", weights_only=True))
    if info.is_main:
        (out / "losses.json").write_text(json.dumps({"full": losses, "resumed": first + second}))
    distributed.teardown()


def _run(mode: str, out: Path, procs: int = 2) -> dict[str, list[float]]:
    out.mkdir(parents=True, exist_ok=True)
    if procs == 1:
        _worker(mode, out)  # here, in this process
    else:
        subprocess.run([*TORCHRUN, __file__, mode, str(out)], **RUN)
    return json.loads((out / "losses.json").read_text())


def test_fsdp_and_ddp_train_like_one_process_and_resume_exactly(tmp_path):
    runs = {name: _run(mode, tmp_path / name, procs) for name, mode, procs in SETUPS}
    single, ddp, fsdp = (runs[name]["full"] for name, _, _ in SETUPS)
    assert len(single) == len(ddp) == len(fsdp) == STEPS
    print("\nstep  single      ddp         fsdp")
    for i, (a, b, c) in enumerate(zip(single, ddp, fsdp), 1):
        print(f"{i:4d}  {a:.7f}  {b:.7f}  {c:.7f}")
    assert single[-1] < single[0] - 1.0  # it learns
    # Same global batch, same initial weights: only the order of the floating-point reductions
    # differs (per-process means averaged, sharded gradient norms), so fp32 tolerance.
    torch.testing.assert_close(torch.tensor(ddp), torch.tensor(single), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.tensor(fsdp), torch.tensor(single), rtol=1e-5, atol=1e-5)
    # Resuming is the same computation as not stopping: weights and optimizer state are copied
    # exactly and re-sharded into the same shards, and the batches depend only on the step.
    for name, run in runs.items():
        assert run["resumed"] == run["full"], name

    # The FSDP checkpoint is the full, unsharded model, loadable into one process.
    state = torch.load(tmp_path / "fsdp" / "ckpt.pt", weights_only=True)
    model = build_model("gpt", "tiny", vocab_size=VOCAB, dropout=0.0)
    model.load_state_dict(state["model"])
    assert state["model"]["embed.weight"] is state["model"]["head.weight"]  # tied: one tensor
    assert all(isinstance(name, str) for name in state["optimizer"]["state"])  # keyed by name


def _step(model, optimizer, step: int) -> None:
    x, y = _batch(step)
    model(x, targets=y).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def test_one_process_state_dicts_round_trip_in_both_forms():
    def fresh():
        torch.manual_seed(0)
        model = build_model("gpt", "tiny", vocab_size=VOCAB, dropout=0.0)
        return model, make_optimizer(model, 3e-3, 0.1, (0.9, 0.95))

    model, optimizer = fresh()
    assert parallel.wrap(model, DistInfo(), torch.device("cpu"), "fsdp") is model  # one process
    # Before the first step: nothing to save, and asking must not create a stepped state
    # (that would change Adam's bias correction of every later step).
    empty = copy.deepcopy(parallel.optimizer_state_dict(model, optimizer, "fsdp"))
    assert empty["state"] == {} and not optimizer.state
    assert all(isinstance(name, str) for g in empty["param_groups"] for name in g["params"])
    _step(model, optimizer, 0)
    saved = {
        "model": copy.deepcopy(parallel.model_state_dict(model, "ddp")),
        "named": copy.deepcopy(parallel.optimizer_state_dict(model, optimizer, "ddp")),
        "numbered": copy.deepcopy(optimizer.state_dict()),  # optimizer.load_state_dict's form
    }
    assert saved["model"]["embed.weight"] is saved["model"]["head.weight"]  # tied: one tensor
    _step(model, optimizer, 1)
    for form in ("named", "numbered"):
        other, other_opt = fresh()
        other.load_state_dict(saved["model"])
        parallel.load_optimizer_state(other, other_opt, saved[form], "ddp")
        _step(other, other_opt, 1)  # the same computation as the uninterrupted step
        for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
            assert torch.equal(a, b), (form, name)
    # An optimizer saved before its first step loads as one that never stepped.
    other, other_opt = fresh()
    parallel.load_optimizer_state(other, other_opt, empty, "fsdp")
    assert not other_opt.state
    reference, reference_opt = fresh()
    _step(other, other_opt, 0)
    _step(reference, reference_opt, 0)
    for a, b in zip(reference.parameters(), other.parameters()):
        assert torch.equal(a, b)


def test_clip_grad_norm_and_no_sync_with_one_process():
    torch.manual_seed(0)
    model = build_model("gpt", "tiny", vocab_size=VOCAB, dropout=0.0)
    x, y = _batch(0)
    with parallel.no_sync(model, "fsdp", sync=False):  # nothing to synchronize: a no-op
        model(x, targets=y).loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    norm = parallel.clip_grad_norm(model, 0.1, "fsdp")
    expected = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    torch.testing.assert_close(norm, expected)
    assert norm > 0.1
    clipped = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(p.grad) for p in model.parameters()])
    )
    torch.testing.assert_close(clipped, torch.tensor(0.1), rtol=1e-4, atol=1e-6)


def test_an_unknown_mode_is_a_config_error():
    model = build_model("gpt", "tiny", vocab_size=VOCAB)
    with pytest.raises(ConfigError, match=r"train.parallel='zero'.*ddp, fsdp"):
        parallel.wrap(model, DistInfo(), torch.device("cpu"), "zero")


if __name__ == "__main__":
    _worker(sys.argv[1], Path(sys.argv[2]))
