"""Data parallelism for the trainer: DDP or FSDP2 behind one small interface.

Every process holds the same model and reads its own rows of the global batch; the gradient
of the global mean loss is the mean of the per-process gradients, so both modes train the
same model as one process at the same global batch (to fp32 reduction-order tolerance).

- "ddp": `DistributedDataParallel`. Every process keeps the whole model, the gradients
  are all-reduced (averaged) during backward.
- "fsdp": FSDP2, `torch.distributed.fsdp.fully_shard` on every seqlab Block, then on the
  root. Each process stores 1/world_size of every parameter (a DTensor sharded on dim 0) and
  of its optimizer state; a block's full weights are all-gathered just before its forward
  (and again for its backward) and freed after; gradients are reduce-scattered (averaged)
  into the shards. The root unit holds what is outside the blocks (embedding, final norm,
  head), so the embedding and the head may share one Parameter (tied weights).

With FSDP every forward is a collective (it all-gathers the weights): evaluation and
sampling must run on every process, not on rank 0 alone. With one process every function
here is the plain single-process behaviour.

State dicts are full (unsharded) and on CPU, keyed by parameter names, so one checkpoint
resumes under one process, DDP or FSDP alike: the model's as `nn.Module.state_dict()` gives
it (tied names alias one tensor), the optimizer's as
`torch.distributed.checkpoint.state_dict.get_optimizer_state_dict` gives it
({"state": {name: {...}}, "param_groups": [{..., "params": [names]}]}).

Call order in a training script:

    model = build(...).to(device); load weights here when resuming
    train_model = wrap(model, info, device, mode)      # before the optimizer: it must see
    optimizer = make_optimizer(train_model, ...)       # the sharded parameters
    load_optimizer_state(train_model, optimizer, saved, mode)   # when resuming
    for micro in range(accum):
        with no_sync(train_model, mode, sync=micro == accum - 1):
            loss = ...(train_model)
        loss.backward()
    clip_grad_norm(train_model, max_norm, mode); optimizer.step()
    model_state_dict(train_model, mode); optimizer_state_dict(train_model, optimizer, mode)
"""

import contextlib

import torch
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel as DDP

from seqlab.errors import ConfigError
from seqlab.layers.block import Block
from seqlab.train.distributed import DistInfo

MODES = ("ddp", "fsdp")

# Gathered to full tensors, on CPU (with several processes only rank 0 receives them).
_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"train.parallel={mode!r} is not a parallel mode; choose one of {', '.join(MODES)}")
    return mode


def wrap(model: nn.Module, info: DistInfo, device: torch.device, mode: str) -> nn.Module:
    """The module to train: DDP(model), or `model` itself sharded in place (FSDP2).

    Call it before building the optimizer: under FSDP the parameters become DTensor shards and
    the optimizer must hold those. `model` may be torch.compile's wrapper of the module: FSDP
    shards the module inside, so the module itself also runs sharded (evaluation, samples).
    With one process, `model` unchanged.
    """
    check_mode(mode)
    if not info.enabled:
        return model
    if mode == "ddp":
        return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    root = _inner(model)
    mesh = init_device_mesh(device.type, (info.world_size,))
    # Children before parents (reversed pre-order): a unit owns the parameters that no unit
    # below it has taken, so the innermost blocks must be sharded first and the root last.
    for module in reversed(list(root.modules())):
        if isinstance(module, Block) and module is not root:
            fully_shard(module, mesh=mesh)
    fully_shard(root, mesh=mesh)
    return model


def _inner(model: nn.Module) -> nn.Module:
    """The user's module under DDP and torch.compile wrappers (FSDP2 wraps nothing)."""
    while True:
        if isinstance(model, DDP):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def _is_sharded(model: nn.Module) -> bool:
    return isinstance(_inner(model), FSDPModule)


def _alias_tied(model: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    # Gathering copies each name separately; point the names of one shared Parameter at one
    # tensor again, as nn.Module.state_dict() does (safetensors then stores it once).
    first: dict[int, str] = {}
    for name, p in _inner(model).named_parameters(remove_duplicate=False):
        if id(p) not in first:
            first[id(p)] = name
        elif name in state and first[id(p)] in state:
            state[name] = state[first[id(p)]]
    return state


def model_state_dict(model: nn.Module, mode: str) -> dict[str, Tensor]:
    """The full model state on CPU, keyed like `nn.Module.state_dict()` of the unwrapped model.

    A collective under FSDP (every process must call it); with several processes only rank 0
    gets the tensors, the others an empty dict. Like state_dict(), a model already on the CPU
    may share its tensors with the dict: write or copy it before the next step.
    """
    check_mode(mode)
    state = get_model_state_dict(model, options=_FULL)
    return _alias_tied(model, dict(state))


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The name of each optimizer parameter, in the order optimizer.state_dict() numbers them."""
    names = {id(p): n for n, p in _inner(model).named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def _named(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> dict:
    """An optimizer.state_dict()-form (numbered) state keyed by parameter names instead."""
    names = _param_names(model, optimizer)
    return {
        "state": {names[i]: s for i, s in state["state"].items()},
        "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]],
    }


def _numbered(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> dict:
    """A name-keyed optimizer state in optimizer.load_state_dict()'s numbered form."""
    index = {n: i for i, n in enumerate(_param_names(model, optimizer))}
    return {
        "state": {index[n]: s for n, s in state["state"].items()},
        "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]],
    }


def _is_numbered(state: dict) -> bool:
    return any(isinstance(p, int) for g in state["param_groups"] for p in g["params"])


def optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer, mode: str) -> dict:
    """The full optimizer state on CPU, keyed by parameter name (see the module docstring).

    A collective under FSDP; with several processes only rank 0 gets the tensors.
    """
    check_mode(mode)
    if not optimizer.state:
        # Before the first step there is nothing to gather. get_optimizer_state_dict would
        # create the state with a zero-gradient step (step=1), and that changes every later
        # Adam update (bias correction); describe the empty state instead.
        return _named(model, optimizer, optimizer.state_dict())
    return get_optimizer_state_dict(model, optimizer, options=_FULL)


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict, mode: str) -> None:
    """Load a full optimizer state (from optimizer_state_dict, or optimizer.state_dict()'s
    numbered form) into `optimizer`, sharding it under FSDP. Every process passes the full
    state; a collective under FSDP."""
    check_mode(mode)
    if _is_numbered(state):
        if not _is_sharded(model):
            optimizer.load_state_dict(state)
            return
        state = _named(model, optimizer, state)
    if not state["state"]:
        # Saved before the first step: only the hyperparameters (set_optimizer_state_dict would
        # first create a stepped state, as in optimizer_state_dict).
        optimizer.load_state_dict(_numbered(model, optimizer, state))
        return
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def no_sync(train_model: nn.Module, mode: str, sync: bool):
    """Context for one micro-batch's forward: gradients are averaged across processes only
    when `sync` (the last micro-batch of a step); before that they accumulate locally.

    DDP decides in the forward (its no_sync()). FSDP2 decides in the backward, which may run
    after the `with` ends, so its flag (set_requires_gradient_sync) stays as set here until
    the next call; the last micro-batch's call (sync=True) turns it back on.
    """
    check_mode(mode)
    inner = _inner(train_model)
    if isinstance(inner, FSDPModule):
        inner.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()
    if isinstance(train_model, DDP) and not sync:
        return train_model.no_sync()
    return contextlib.nullcontext()


def clip_grad_norm(model: nn.Module, max_norm: float, mode: str) -> Tensor:
    """Scale the gradients so that their global 2-norm is at most max_norm; return that norm
    (before clipping) as a plain tensor. Under FSDP the norm is of the whole sharded gradient:
    each process's shard norms are reduced across processes."""
    check_mode(mode)
    params = [p for p in _inner(model).parameters() if p.grad is not None]
    total = torch.nn.utils.get_total_norm([p.grad for p in params])
    if isinstance(total, DTensor):
        total = total.full_tensor()  # the partial sums of squares of every shard, reduced
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


__all__ = [
    "MODES",
    "check_mode",
    "clip_grad_norm",
    "load_optimizer_state",
    "model_state_dict",
    "no_sync",
    "optimizer_state_dict",
    "wrap",
]
