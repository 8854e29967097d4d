"""The model contract, over the whole registry: every registered model, preset "tiny".

A new registry entry is covered here without writing a test. For each model:
forward / backward / optimizer step with a finite loss; causality for causal models (future
inputs never change past outputs, and past outputs send no gradient to future inputs); cached
== recomputed decoding for models that decode; a save / load round trip gives identical
outputs; bf16 autocast runs; a bad config value is a ConfigError.

Inputs come from the model's task: token ids for "lm", a float series for "forecast"; a new
task adds its example input to EXAMPLES (and the test fails, naming it, until it does).
"""

import dataclasses
import math

import pytest
import torch
from safetensors.torch import load_model, save_model
from torch import nn

from seqlab.errors import ConfigError
from seqlab.models import MODELS, build_config, model_entry

VOCAB = 37
B, T = 2, 12

NAMES = sorted(MODELS)


def _lm_example(cfg, generator):
    ids = torch.randint(0, cfg.vocab_size, (B, T + 1), generator=generator)
    return {"inputs": ids[:, :-1]}, ids[:, 1:]


def _forecast_example(cfg, generator):
    x = torch.randn(B, T + 1, cfg.num_features, generator=generator)
    return {"inputs": x[:, :-1]}, x[:, 1:]


EXAMPLES = {"lm": _lm_example, "forecast": _forecast_example}
SIZES = {"lm": {"vocab_size": VOCAB}, "forecast": {"num_features": 3}}


def _grid_example(cfg, generator):
    # A non-square grid [b, gy, gx] of token ids; targets: the same grid, a few cells ignored.
    grid = torch.randint(0, cfg.vocab_size, (B, 5, 7), generator=generator)
    targets = grid.masked_fill(torch.rand(grid.shape, generator=generator) < 0.3, -100)
    return {"inputs": grid}, targets


EXAMPLES["grid"] = _grid_example
SIZES["grid"] = {"vocab_size": VOCAB}


def _seq2seq_example(cfg, generator):
    # Source ids [b, s] and targets [b, t] of another length (ids >= 3: no pad, eos or unk),
    # the last two of one row ignored; decoder_input_ids feed the decoder in pieces when caching.
    source = torch.randint(3, cfg.vocab_size, (B, T), generator=generator)
    targets = torch.randint(3, cfg.vocab_size, (B, T - 3), generator=generator)
    targets[1, -2:] = -100
    decoder_input_ids = torch.randint(3, cfg.vocab_size, (B, T - 3), generator=generator)
    return {"inputs": source, "decoder_input_ids": decoder_input_ids}, targets


EXAMPLES["seq2seq"] = _seq2seq_example
SIZES["seq2seq"] = {"vocab_size": VOCAB}


def build(name: str, **overrides):
    entry = model_entry(name)
    if entry.task not in EXAMPLES:
        pytest.fail(f"task {entry.task!r} of model {name!r} has no example input in test_contract.EXAMPLES")
    try:
        cfg = build_config(name, "tiny", **{**SIZES[entry.task], **overrides})
    except ImportError as e:  # an optional peer (x-transformers) that is not installed
        pytest.skip(f"{name}: {e}")
    torch.manual_seed(0)
    return entry.model(cfg).eval(), cfg


def example(name: str, cfg, seed: int = 0):
    return EXAMPLES[model_entry(name).task](cfg, torch.Generator().manual_seed(seed))


def run(model, inputs: torch.Tensor, **kwargs):
    return model(inputs, **kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_and_step_give_a_finite_loss(name):
    model, cfg = build(name)
    model.train()
    batch, targets = example(name, cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    out = run(model, batch["inputs"], targets=targets)
    loss = out.total_loss()
    assert loss.ndim == 0 and math.isfinite(float(loss))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is None or torch.isfinite(g).all() for g in grads)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def _input_leaf(model, inputs):
    """(call, leaf): run the model so that grad w.r.t. `leaf` [b, t, ...] is per input position."""
    if inputs.is_floating_point():
        leaf = inputs.clone().requires_grad_(True)
        return (lambda: model(leaf)), leaf
    embed = next(m for m in model.modules() if isinstance(m, nn.Embedding))
    holder = {}

    def hook(module, args, output):
        output.retain_grad()
        holder["leaf"] = output
        return output

    handle = embed.register_forward_hook(hook)
    return (lambda: (model(inputs), handle.remove())[0]), holder


@pytest.mark.parametrize("name", NAMES)
def test_causal_models_never_look_ahead(name):
    model, cfg = build(name)
    if not getattr(model, "causal", True):
        pytest.skip(f"{name} is not causal")
    batch, _ = example(name, cfg)
    x = batch["inputs"]
    s = T // 2
    y = x.clone()
    if x.is_floating_point():
        y[:, s:] = torch.randn_like(y[:, s:]) * 3
    else:
        y[:, s:] = (y[:, s:] + 1 + torch.arange(T - s)) % cfg.vocab_size
    with torch.no_grad():
        a, b = model(x).logits, model(y).logits
    torch.testing.assert_close(a[:, :s], b[:, :s], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(a[:, s:], b[:, s:])

    call, leaf = _input_leaf(model, x)
    out = call()
    leaf = leaf if isinstance(leaf, torch.Tensor) else leaf["leaf"]
    out.logits[:, :s].float().square().sum().backward()
    assert torch.count_nonzero(leaf.grad[:, s:]) == 0
    assert torch.count_nonzero(leaf.grad[:, :s]) > 0


@pytest.mark.parametrize("name", NAMES)
def test_cached_decoding_equals_recomputing(name):
    model, cfg = build(name)
    if not getattr(model, "can_decode", False):
        pytest.skip(f"{name} does not decode incrementally")
    batch, _ = example(name, cfg)
    x = batch["inputs"]
    call = model
    if getattr(model, "is_seq2seq", False):
        # An encoder-decoder encodes its source once; its decoder tokens are fed in pieces.
        source, x = x, batch["decoder_input_ids"]
        call = lambda ids, **kwargs: model(source, decoder_input_ids=ids, **kwargs)
    with torch.no_grad():
        full = call(x).logits
        cache = model.make_cache(B, x.shape[1])
        prefill = 5
        steps = [call(x[:, :prefill], cache=cache).logits]
        for i in range(prefill, x.shape[1]):
            steps.append(call(x[:, i : i + 1], cache=cache).logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip_gives_identical_outputs(name, tmp_path):
    model, cfg = build(name)
    batch, _ = example(name, cfg)
    path = tmp_path / "model.safetensors"
    save_model(model, str(path))
    torch.manual_seed(123)  # other initial weights: the load must overwrite every one
    fresh = model_entry(name).model(cfg).eval()
    missing, unexpected = load_model(fresh, str(path))
    assert not missing and not unexpected
    with torch.no_grad():
        torch.testing.assert_close(
            fresh(batch["inputs"]).logits, model(batch["inputs"]).logits, rtol=0, atol=0
        )


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_runs(name):
    model, cfg = build(name)
    model.train()
    batch, targets = example(name, cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = run(model, batch["inputs"], targets=targets).total_loss()
    assert math.isfinite(float(loss))
    loss.backward()


SIZE_FIELDS = ("vocab_size", "dim", "num_layers", "num_heads", "max_seq_len", "num_experts", "num_features")


@pytest.mark.parametrize("name", NAMES)
def test_bad_config_values_are_config_errors(name):
    entry = model_entry(name)
    fields = {f.name for f in dataclasses.fields(entry.config)}
    bad = [(key, -1) for key in SIZE_FIELDS if key in fields]
    if "dropout" in fields:
        bad.append(("dropout", 2.0))
    assert bad, f"{name}'s config has none of the standard size fields"
    for key, value in bad:
        with pytest.raises(ConfigError, match=key):
            build_config(name, "tiny", **{**SIZES[entry.task], key: value})
