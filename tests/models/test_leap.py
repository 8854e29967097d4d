"""LEAP model and layer: invariants of the spec and regressions for the seed's defects."""

import pytest
import torch

from seqlab.errors import ConfigError
from seqlab.layers.leap import MultiheadLeap
from seqlab.models.fastformer import FastformerConfig, FastformerForCausalLM
from seqlab.models.generation import generate
from seqlab.models.leap import LeapConfig, LeapForCausalLM


def make(fastformer=False, **kw):
    torch.manual_seed(0)
    base = dict(hidden_size=64, vocab_size=50, n_head=2, n_layer=4, n_positions=48, hidden_dropout_prob=0.0)
    base.update(kw)
    if fastformer:
        return FastformerForCausalLM(FastformerConfig(**base)).eval()
    return LeapForCausalLM(LeapConfig(**base)).eval()


POSITIONS = [
    dict(),
    dict(position="rotary"),
    dict(position="decay"),
    dict(position="none"),
    dict(rescale=10),
    dict(fastformer=True),
    dict(fastformer=True, position="decay"),
]
IDS = ["learned-elu", "rotary", "decay", "none", "exp-rescale10", "fastformer", "fastformer-decay"]


def test_seed_usage_example_with_rescale_10_works():
    # Defect 1: the seed README's own example (rescale=10) raised TypeError.
    cfg = LeapConfig(
        hidden_size=128,
        vocab_size=100,
        n_head=4,
        use_local_att=True,
        window_sizes=None,
        n_positions=64,
        n_layer=4,
        hidden_dropout_prob=0.1,
        initializer_range=None,
        rescale=10,
    )
    assert cfg.focus == "exp" and cfg.rescale == 10 and cfg.dim == 128
    out = LeapForCausalLM(cfg)(torch.randint(0, 100, (2, 16)), labels=torch.randint(0, 100, (2, 16)))
    assert torch.isfinite(out.loss)


def test_default_window_schedule_and_config_errors():
    assert LeapConfig(n_layer=6, n_positions=64, hidden_size=64, n_head=2).layer_windows() == [
        None,
        4,
        8,
        16,
        None,
        4,
    ]
    assert LeapConfig(n_layer=3, use_local_att=False, hidden_size=64, n_head=2).layer_windows() == [None] * 3
    assert LeapConfig(hidden_size=256).initializer_range == 1 / 16
    with pytest.raises(ConfigError, match="window_sizes has 2 entries but n_layer"):
        LeapConfig(n_layer=3, window_sizes=[4, 8], hidden_size=64, n_head=2)
    with pytest.warns(UserWarning, match="head dim is 8"):
        LeapConfig(hidden_size=64, n_head=8)
    # Unknown keyword arguments are accepted like the seed (and Hugging Face) configs do.
    assert LeapConfig(hidden_size=64, n_head=2, torch_dtype="float32").extra == {"torch_dtype": "float32"}


@pytest.mark.parametrize("kw", POSITIONS, ids=IDS)
def test_recurrent_decoding_equals_parallel_forward(kw):
    model = make(**kw)
    x = torch.randint(0, 50, (2, 37))
    full = model(x).logits
    cache = model.make_cache(2)
    pieces = [model(x[:, :9], cache=cache).logits]
    pieces += [model(x[:, i : i + 1], cache=cache).logits for i in range(9, 37)]
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("kw", POSITIONS, ids=IDS)
def test_cached_greedy_generation_equals_recomputing_the_prefix(kw):
    model = make(**kw)
    x = torch.randint(0, 50, (2, 6))
    assert torch.equal(
        generate(model, x, 30, temperature=0), generate(model, x, 30, temperature=0, use_cache=False)
    )


@pytest.mark.parametrize("kw", POSITIONS, ids=IDS)
def test_future_tokens_change_no_past_output_and_send_no_gradient(kw):
    model = make(**kw)
    x = torch.randint(0, 50, (1, 30))
    y = x.clone()
    y[0, 17:] = (y[0, 17:] + 7) % 50
    torch.testing.assert_close(model(x).logits[:, :17], model(y).logits[:, :17], atol=0, rtol=0)
    h = model.embed(x).detach().requires_grad_(True)
    handle = model.embed.register_forward_hook(lambda m, i, o: h)
    try:
        model(x).logits[0, 16].sum().backward()
    finally:
        handle.remove()
    assert h.grad[0, 17:].abs().max() == 0 and h.grad[0, :17].abs().max() > 0


def test_windowed_layer_ignores_tokens_outside_its_window():
    torch.manual_seed(0)
    layer = MultiheadLeap(32, 2, window_size=4, dropout=0.0).eval()
    x = torch.randn(1, 20, 32)
    y = x.clone()
    y[0, :10] = torch.randn(10, 32)
    torch.testing.assert_close(layer(x)[:, 13:], layer(y)[:, 13:], atol=0, rtol=0)
    assert not torch.allclose(layer(x)[:, 10:13], layer(y)[:, 10:13])


@pytest.mark.parametrize("kw", POSITIONS, ids=IDS)
def test_left_padded_batch_equals_unpadded_sequence(kw):
    # Defect 3: the seed ignored attention_mask, so left padding changed the last logits.
    model = make(**kw)
    seq = torch.randint(1, 50, (1, 12))
    padded = torch.cat([torch.zeros(1, 5, dtype=torch.long), seq], 1)
    mask = torch.cat([torch.zeros(1, 5, dtype=torch.long), torch.ones(1, 12, dtype=torch.long)], 1)
    torch.testing.assert_close(
        model(padded, attention_mask=mask).logits[:, 5:], model(seq).logits, atol=2e-5, rtol=1e-4
    )


def test_labels_are_never_mutated_and_pads_are_ignored():
    model = make()
    x = torch.randint(0, 50, (2, 10))
    labels = x.clone()
    mask = torch.ones_like(x)
    mask[1, :4] = 0
    before = labels.clone()
    out = model(x, attention_mask=mask, labels=labels)
    assert torch.equal(labels, before)
    logits = out.logits[:, :-1]
    expected = torch.nn.functional.cross_entropy(
        torch.cat([logits[0], logits[1, 3:]]), torch.cat([x[0, 1:], x[1, 4:]])
    )
    torch.testing.assert_close(out.loss, expected)


def test_layer_has_an_output_projection():
    # Defect 5: the seed's layer had no output projection.
    layer = MultiheadLeap(32, 2, window_size=None)
    assert layer.proj.weight.shape == (32, 32)
    assert sum(p.numel() for p in layer.parameters()) == 32 * 128 + 32 * 32 + 32


def test_bidirectional_layer_sees_both_sides():
    torch.manual_seed(0)
    enc = MultiheadLeap(32, 2, window_size=None, dropout=0.0, causal=False).eval()
    x = torch.randn(1, 10, 32)
    y = x.clone()
    y[0, 8] = torch.randn(32)
    assert not torch.allclose(enc(x)[:, :8], enc(y)[:, :8])  # the past sees the future
    with pytest.raises(RuntimeError, match="no recurrent form"):
        enc.init_state(1)


def test_explainability_maps_match_the_layer_output():
    torch.manual_seed(0)
    layer = MultiheadLeap(32, 2, window_size=3, dropout=0.0).eval()
    x = torch.randn(1, 9, 32)
    out, maps = layer(x, return_maps=True)
    attn, gate = maps["attention"], maps["gate"]  # [b, h, t, t], [b, t, h]
    assert attn.shape == (1, 2, 9, 9) and gate.shape == (1, 9, 2)
    assert torch.all(attn.triu(1) == 0) and torch.all(attn.tril(-3) == 0)  # causal, window 3
    from einops import rearrange

    _, _, _, v = rearrange(layer.qfkv(x), "b t (four h d) -> four b t h d", four=4, h=2)
    y = gate.unsqueeze(-1) * torch.einsum("bhtj,bjhd->bthd", attn, v)
    torch.testing.assert_close(layer.proj(rearrange(y, "b t h d -> b t (h d)")), out, atol=1e-5, rtol=1e-5)


def test_learned_positions_beyond_n_positions_are_a_clear_error():
    model = make()
    with pytest.raises(ValueError, match="n_positions"):
        model(torch.randint(0, 50, (1, 49)))


def test_generation_past_n_positions_with_learned_positions_crops_like_uncached():
    model = make()  # n_positions 48, learned
    x = torch.randint(0, 50, (1, 10))
    cached = generate(model, x, 60, temperature=0)
    assert cached.shape == (1, 70)
    assert torch.equal(cached, generate(model, x, 60, temperature=0, use_cache=False))


def test_explainability_maps_with_decay_positions_match_the_output():
    torch.manual_seed(0)
    layer = MultiheadLeap(32, 2, window_size=None, dropout=0.0, decay=True).eval()
    x = torch.randn(1, 9, 32)
    out, maps = layer(x, return_maps=True)
    from einops import rearrange

    _, _, _, v = rearrange(layer.qfkv(x), "b t (four h d) -> four b t h d", four=4, h=2)
    y = maps["gate"].unsqueeze(-1) * torch.einsum("bhtj,bjhd->bthd", maps["attention"], v)
    torch.testing.assert_close(layer.proj(rearrange(y, "b t h d -> b t (h d)")), out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("window", [1, 3, 7, None])
@pytest.mark.parametrize(
    "focus", [dict(), dict(focus="exp", rescale=10.0), dict(decay=True)], ids=["elu", "exp", "decay"]
)
def test_layer_recurrent_step_equals_parallel_forward(window, focus):
    torch.manual_seed(0)
    layer = MultiheadLeap(64, 2, window_size=window, dropout=0.0, **focus).eval()
    x = torch.randn(2, 19, 64)
    state = layer.init_state(2)
    stepped = torch.cat(
        [layer.step(x[:, :1], state)] + [layer.step(x[:, i : i + 1], state) for i in range(1, 19)], 1
    )
    torch.testing.assert_close(stepped, layer(x), atol=1e-5, rtol=1e-5)
    if window is not None:
        assert state.last_k.shape[1] == window  # O(W) state
    else:
        assert state.last_k is None and state.sum_k.shape == (2, 2, 32)  # O(1) state


@pytest.mark.parametrize("kw", [dict(), dict(fastformer=True)], ids=["leap", "fastformer"])
def test_cache_map_batch_reorders_every_sample_state(kw):
    # Beam search reorders the decoding state by sample; the continuation must follow the reorder.
    model = make(**kw)
    x = torch.randint(0, 50, (3, 9))
    cache = model.make_cache(3)
    model(x, cache=cache)
    order = torch.tensor([2, 0, 1])
    cache.map_batch(lambda t: t.index_select(0, order))
    assert cache.length == 9
    nxt = torch.randint(0, 50, (3, 1))
    reordered = model(nxt, cache=cache).logits
    fresh = model.make_cache(3)
    model(x[order], cache=fresh)
    torch.testing.assert_close(reordered, model(nxt, cache=fresh).logits)


@pytest.mark.parametrize("kw", [dict(), dict(fastformer=True)], ids=["leap", "fastformer"])
def test_cache_reset_gives_an_empty_context(kw):
    model = make(**kw)
    x, y = torch.randint(0, 50, (2, 7)), torch.randint(0, 50, (2, 5))
    cache = model.make_cache(2)
    model(x, cache=cache)
    cache.reset()
    assert cache.length == 0
    torch.testing.assert_close(model(y, cache=cache).logits, model(y, cache=model.make_cache(2)).logits)
