"""Baseline transformer invariants: causality, cached == full, sliding window, left padding,
saved window and RoPE base, config validation."""

import pytest
import torch

from seqlab.errors import ConfigError, TokenRangeError
from seqlab.layers.attention import Attention
from seqlab.layers.cache import KVState
from seqlab.models import build_model
from seqlab.models.generation import generate, sample_next


@pytest.fixture(
    params=[{}, {"mlp": "swiglu", "norm": "rmsnorm"}, {"window": 5}], ids=["gelu-ln", "swiglu-rms", "window5"]
)
def model(request):
    torch.manual_seed(0)
    return build_model("gpt", "tiny", vocab_size=40, **request.param).eval()


def test_changing_future_tokens_never_changes_past_logits(model):
    x = torch.randint(0, 40, (2, 24))
    y = x.clone()
    y[:, 13:] = torch.randint(0, 40, (2, 11))
    torch.testing.assert_close(model(x).logits[:, :13], model(y).logits[:, :13])
    assert not torch.allclose(model(x).logits[:, 13:], model(y).logits[:, 13:])


def test_no_gradient_flows_from_the_future(model):
    x = torch.randint(0, 40, (1, 20))
    h = model.embed(x).detach().requires_grad_(True)
    # A forward hook substitutes the embedding output with a leaf we can take gradients of.
    handle = model.embed.register_forward_hook(lambda module, inputs, output: h)
    try:
        logits = model(x).logits
    finally:
        handle.remove()
    logits[0, 9].sum().backward()
    assert h.grad[0, 10:].abs().max() == 0
    assert h.grad[0, :10].abs().max() > 0


def test_kv_cached_forward_equals_full_recomputation(model):
    x = torch.randint(0, 40, (2, 30))
    full = model(x).logits
    cache = model.make_cache(2, 8)  # smaller than needed: the cache must grow
    pieces = [model(x[:, :11], cache=cache).logits]
    for i in range(11, 30):
        pieces.append(model(x[:, i : i + 1], cache=cache).logits)
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)


def test_kv_cached_generation_equals_uncached_greedy(model, assert_same_greedy):
    x = torch.randint(0, 40, (2, 5))
    cached = generate(model, x, 25, temperature=0)
    uncached = generate(model, x, 25, temperature=0, use_cache=False)
    assert_same_greedy(model, cached, uncached)


def test_sliding_window_ignores_tokens_outside_the_window():
    torch.manual_seed(0)
    model = build_model("gpt", "tiny", vocab_size=40, window=4, num_layers=1).eval()
    x = torch.randint(0, 40, (1, 20))
    y = x.clone()
    y[0, :10] = (y[0, :10] + 1) % 40  # one layer, window 4: positions >= 13 cannot see 0..9
    torch.testing.assert_close(model(x).logits[:, 13:], model(y).logits[:, 13:])
    assert not torch.allclose(model(x).logits[:, 10:13], model(y).logits[:, 10:13])


def test_windowed_decoding_past_the_window_equals_recomputation_and_forgets_old_keys():
    torch.manual_seed(0)
    model = build_model("gpt", "tiny", vocab_size=40, window=3).eval()
    x = torch.randint(0, 40, (2, 40))  # longer than max_seq_len: rotary tables grow
    full = model(x).logits
    cache = model.make_cache(2, 40)
    pieces = [model(x[:, :9], cache=cache).logits]
    pieces += [model(x[:, i : i + 1], cache=cache).logits for i in range(9, 40)]
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == 40
    assert all(isinstance(s, KVState) and s.stored <= 6 for s in cache.layers)


def _greedy(model, ids, steps, attention_mask=None):
    """Greedy continuation through the cache, prefilling with a padding mask if given."""
    cache = model.make_cache(ids.shape[0], ids.shape[1] + steps)
    logits = model(ids, attention_mask=attention_mask, cache=cache).logits[:, -1]
    out = []
    for _ in range(steps):
        nxt = logits.argmax(-1)
        out.append(nxt)
        logits = model(nxt[:, None], cache=cache).logits[:, -1]
    return torch.stack(out, 1)


def test_left_padded_prompts_give_the_unpadded_logits_and_continuation(model):
    prompts = [torch.randint(1, 40, (n,)) for n in (9, 4, 6)]
    width = max(len(p) for p in prompts)
    ids = torch.zeros(3, width, dtype=torch.long)
    mask = torch.zeros(3, width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :], mask[i, width - len(p) :] = p, 1
    padded_logits = model(ids, attention_mask=mask).logits
    assert torch.isfinite(padded_logits).all()
    batch = _greedy(model, ids, 12, attention_mask=mask)
    for i, p in enumerate(prompts):
        alone = model(p[None]).logits
        torch.testing.assert_close(padded_logits[i, width - len(p) :], alone[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(batch[i], _greedy(model, p[None], 12)[0])


def test_set_window_and_set_base_survive_a_state_dict_round_trip():
    torch.manual_seed(0)
    model = build_model("gpt", "tiny", vocab_size=40).eval()
    x = torch.randint(0, 40, (1, 24))
    before = model(x).logits
    model.set_window(4)
    model.set_base(500.0)
    changed = model(x).logits
    assert not torch.allclose(before, changed)
    state = model.state_dict()
    assert "rotary.cos" not in state
    assert float(state["rotary.base_value"]) == 500.0
    assert all(int(state[f"blocks.{i}.mixer.window_size"]) == 4 for i in range(2))
    fresh = build_model("gpt", "tiny", vocab_size=40).eval()
    fresh.load_state_dict(state)
    assert fresh.rotary.base == 500.0
    assert all(block.mixer.window == 4 for block in fresh.blocks)
    torch.testing.assert_close(fresh(x).logits, changed)
    model.set_window(None)
    assert all(block.mixer.window is None for block in model.blocks)
    with pytest.raises(ValueError, match="window"):
        model.set_window(0)


def test_blocks_are_the_shared_block_with_attention():
    model = build_model("gpt", "tiny", vocab_size=40)
    assert all(isinstance(block.mixer, Attention) for block in model.blocks)
    assert model.causal and model.can_decode


@pytest.mark.parametrize(
    "overrides,key",
    [
        (dict(dim=30, num_heads=4), "num_heads"),
        (dict(dim=30, num_heads=10), "even head dim"),
        (dict(num_layers=0), "num_layers"),
        (dict(dropout=1.0), "dropout"),
        (dict(mlp="relu"), "model.mlp"),
        (dict(norm="batchnorm"), "model.norm"),
        (dict(window=0), "model.window"),
        (dict(rope_base=1.0), "rope_base"),
        (dict(mlp_ratio=0.0), "mlp_ratio"),
    ],
)
def test_bad_config_values_raise_config_errors_naming_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key):
        build_model("gpt", "tiny", **overrides)


def test_out_of_vocabulary_ids_raise_a_clear_error(model):
    with pytest.raises(TokenRangeError, match=r"\[0, 39\].*max 40"):
        model(torch.tensor([[1, 2, 40]]))
    with pytest.raises(TokenRangeError, match="min -1"):
        model(torch.tensor([[-1, 2]]))


def test_sampling_filters():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    assert sample_next(logits, temperature=0).item() == 3
    gen = torch.Generator().manual_seed(0)
    draws = {sample_next(logits, 1.0, top_k=2, generator=gen).item() for _ in range(200)}
    assert draws == {2, 3}
    # top_p = 0.5: the top token holds 64% of the mass, so it alone is kept.
    draws = {sample_next(logits, 1.0, top_p=0.5, generator=gen).item() for _ in range(100)}
    assert draws == {3}
    with pytest.raises(ConfigError, match="top_p"):
        sample_next(logits, 1.0, top_p=1.5)


def test_unknown_model_and_preset_list_the_choices():
    with pytest.raises(ConfigError, match="choose one of: gpt"):
        build_model("gtp")
    with pytest.raises(ConfigError, match="tiny, baby, small"):
        build_model("gpt", "huge")
    with pytest.raises(ConfigError, match="Did you mean 'num_layers'"):
        build_model("gpt", "tiny", num_layer=3)


def test_bf16_autocast_on_cpu_matches_fp32_attention_path():
    # On CPU, attention under bf16 autocast runs in fp32 (the bf16 kernel is ~5x slower);
    # the result must stay close to the fp32 model and be returned in bf16 like the projections.
    torch.manual_seed(0)
    model = build_model("gpt", "tiny", vocab_size=40).eval()
    x = torch.randint(0, 40, (2, 20))
    ref = model(x).logits
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x).logits
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, atol=0.05, rtol=0.05)
