"""Baseline transformer invariants: causality, cached == full, sliding window, RoPE set_base."""

import pytest
import torch

from seqlab.errors import ConfigError, TokenRangeError
from seqlab.layers.rotary import RotaryEmbedding
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


def test_kv_cached_generation_equals_uncached_greedy(model):
    x = torch.randint(0, 40, (2, 5))
    cached = generate(model, x, 25, temperature=0)
    uncached = generate(model, x, 25, temperature=0, use_cache=False)
    assert torch.equal(cached, uncached)


def test_sliding_window_ignores_tokens_outside_the_window():
    torch.manual_seed(0)
    model = build_model("gpt", "tiny", vocab_size=40, window=4, num_layers=1).eval()
    x = torch.randint(0, 40, (1, 20))
    y = x.clone()
    y[0, :10] = (y[0, :10] + 1) % 40  # one layer, window 4: positions >= 13 cannot see 0..9
    torch.testing.assert_close(model(x).logits[:, 13:], model(y).logits[:, 13:])
    assert not torch.allclose(model(x).logits[:, 10:13], model(y).logits[:, 10:13])


def test_rope_set_base_recomputes_buffers_in_place():
    rope = RotaryEmbedding(16, 32, base=10000)
    cos_ptr, sin_ptr = rope.cos.data_ptr(), rope.sin.data_ptr()
    rope.set_base(500.0)
    fresh = RotaryEmbedding(16, 32, base=500.0)
    assert (rope.cos.data_ptr(), rope.sin.data_ptr()) == (cos_ptr, sin_ptr)  # same storage
    torch.testing.assert_close(rope.cos, fresh.cos)
    torch.testing.assert_close(rope.sin, fresh.sin)
    model = build_model("gpt", "tiny", vocab_size=40).eval()
    x = torch.randint(0, 40, (1, 16))
    before = model(x).logits
    model.rotary.set_base(100.0)
    assert not torch.allclose(before, model(x).logits)
    assert "rotary.cos" not in model.state_dict()


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
