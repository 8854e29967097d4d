"""The `hybrid` model: layer patterns, set_window / set_base as saved state, and a short
training run whose loss falls. The registry contract (causality, cache, save/load, bf16) runs
for it in test_contract.py."""

import pytest
import torch

from seqlab.errors import ConfigError
from seqlab.layers.attention import Attention
from seqlab.layers.hybrid import HybridAttention
from seqlab.models import build_config, build_model
from seqlab.models.hybrid import parse_pattern


def test_pattern_repeats_over_the_depth():
    assert parse_pattern("local,global", 5) == ["local", "global", "local", "global", "local"]
    model = build_model("hybrid", "tiny", vocab_size=11, num_layers=3, pattern="hybrid,local,global")
    kinds = [type(b.mixer) for b in model.blocks]
    assert kinds == [HybridAttention, Attention, Attention]
    assert [b.mixer.window for b in model.blocks] == [8, 8, None]
    with pytest.raises(ConfigError, match="model.pattern='hybrid,sparse'.*'sparse'"):
        build_config("hybrid", "tiny", pattern="hybrid,sparse")
    with pytest.raises(ConfigError, match="model.window must be an int >= 1"):
        build_config("hybrid", "tiny", window=0)
    with pytest.raises(ConfigError, match="even head dim"):
        build_config("hybrid", "tiny", dim=30, num_heads=2)


def test_presets_have_gpts_sizes():
    for preset in ("tiny", "baby", "small"):
        h, g = build_config("hybrid", preset), build_config("gpt", preset)
        assert (h.dim, h.num_layers, h.num_heads, h.max_seq_len) == (
            g.dim,
            g.num_layers,
            g.num_heads,
            g.max_seq_len,
        )
        assert h.window == h.max_seq_len // 4


def test_set_window_and_set_base_are_saved_with_the_model():
    model = build_model("hybrid", "tiny", vocab_size=11, pattern="local,global")
    model.set_window(5)
    model.set_base(2000.0)
    assert [b.mixer.window for b in model.blocks] == [5, None]  # the global layer stays global
    torch.manual_seed(1)
    fresh = build_model("hybrid", "tiny", vocab_size=11, pattern="local,global")
    fresh.load_state_dict(model.state_dict())
    assert [b.mixer.window for b in fresh.blocks] == [5, None] and fresh.rotary.base == 2000.0
    x = torch.randint(0, 11, (2, 20))
    torch.testing.assert_close(fresh(x).logits, model(x).logits, rtol=0, atol=0)


def test_cached_generation_past_the_window_equals_recomputing():
    torch.manual_seed(0)
    model = build_model("hybrid", "tiny", vocab_size=11, window=3).eval()
    x = torch.randint(0, 11, (2, 24))
    with torch.no_grad():
        full = model(x).logits
        cache = model.make_cache(2, 8)
        steps = [model(x[:, :4], cache=cache).logits] + [
            model(x[:, i : i + 1], cache=cache).logits for i in range(4, 24)
        ]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-5)


def test_a_short_training_run_lowers_the_loss():
    torch.manual_seed(0)
    model = build_model("hybrid", "tiny", vocab_size=11)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    # A periodic sequence, longer than the window.
    ids = torch.arange(33) % 11
    x, y = ids[None, :-1].repeat(4, 1), ids[None, 1:].repeat(4, 1)
    first = None
    for _ in range(60):
        loss = model(x, targets=y).loss
        first = first if first is not None else float(loss.detach())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss.detach()) < first - 1.0, (first, float(loss.detach()))
