"""Smoke test over the whole model registry: tiny preset, forward, backward, one step, finite loss."""

import pytest
import torch

from seqlab.models import MODELS, build_model, count_parameters


def _tiny_batch(name):
    """A tiny model and a batch for its task: token ids (lm) or a 3-feature series (forecast)."""
    if MODELS[name].task == "forecast":
        model = build_model(name, "tiny", num_features=3)
        x = torch.randn(2, 16, 3)
        return model, x[:, :-1], x[:, 1:], (2, 15, 3)
    model = build_model(name, "tiny", vocab_size=50)
    x = torch.randint(0, 50, (2, 16))
    return model, x[:, :-1], x[:, 1:], (2, 15, 50)


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_trains_one_step(name):
    torch.manual_seed(0)
    model, inputs, targets, out_shape = _tiny_batch(name)
    assert "tiny" in MODELS[name].presets
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    out = model(inputs, targets=targets)
    loss = out.total_loss()
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert out.logits.shape == out_shape
    assert count_parameters(model) > 0


@pytest.mark.parametrize("name", list(MODELS))
def test_presets_share_width_and_depth_with_baseline(name):
    # Comparisons against the baseline are at equal size: same width and depth per preset.
    base = MODELS["gpt"].presets
    for preset, values in MODELS[name].presets.items():
        if preset in base:
            for key in ("dim", "num_layers", "max_seq_len"):
                if key in values:
                    assert values[key] == base[preset][key], (name, preset, key)
