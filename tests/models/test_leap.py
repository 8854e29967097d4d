"""LEAP and Fastformer models (DecoderLM + Blocks): invariants of the spec (causality,
recurrent == parallel, cached == uncached generation, left padding), the config's validation
and seed names, fastformer by composition, and regressions for the seed's defects. The
mixers themselves are tested in tests/layers/test_leap_layers.py."""

import dataclasses

import pytest
import torch

from seqlab.errors import ConfigError
from seqlab.layers.block import Block
from seqlab.layers.cache import Cache
from seqlab.layers.fastformer import FastformerAttention, FastformerState
from seqlab.layers.leap import MultiheadLeap
from seqlab.models.decoder import DecoderLM
from seqlab.models.fastformer import FastformerConfig, FastformerForCausalLM
from seqlab.models.generation import generate
from seqlab.models.leap import LeapConfig, LeapForCausalLM
from seqlab.ops.leap import LeapState


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
def test_cached_greedy_generation_equals_recomputing_the_prefix(kw, assert_same_greedy):
    model = make(**kw)
    x = torch.randint(0, 50, (2, 6))
    cached = generate(model, x, 30, temperature=0)
    assert_same_greedy(model, cached, generate(model, x, 30, temperature=0, use_cache=False))


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


def test_learned_positions_beyond_n_positions_are_a_clear_error():
    model = make()
    with pytest.raises(ValueError, match="max_seq_len is 48 with learned positions"):
        model(torch.randint(0, 50, (1, 49)))


def test_generation_past_n_positions_with_learned_positions_crops_like_uncached(assert_same_greedy):
    model = make()  # n_positions 48, learned
    x = torch.randint(0, 50, (1, 10))
    cached = generate(model, x, 60, temperature=0)
    assert cached.shape == (1, 70)
    uncached = generate(model, x, 60, temperature=0, use_cache=False)
    # Up to n_positions = 48 fed tokens the paths differ (cache vs recompute), so the first 49
    # tokens are equal but for near ties; after that both recompute the same cropped prefix,
    # the same computation, so once the prefixes agree the rest is exactly equal.
    assert_same_greedy(model, cached[:, :49], uncached[:, :49])
    if torch.equal(cached[:, :49], uncached[:, :49]):
        assert torch.equal(cached, uncached)


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


@pytest.mark.parametrize("kw", POSITIONS, ids=IDS)
def test_left_padded_prompt_decodes_like_the_unpadded_one(kw):
    # Positions count real tokens (cache.seen), pads get zero focus: the padded row's
    # continuation equals the unpadded sequence's, step by step through the cache.
    model = make(**kw)
    seq = torch.randint(1, 50, (1, 14))
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), seq[:, :8]], 1)
    mask = (torch.arange(12) >= 4).long()[None]
    cache = model.make_cache(1)
    pieces = [model(padded, attention_mask=mask, cache=cache).logits[:, 4:]]
    pieces += [model(seq[:, i : i + 1], cache=cache).logits for i in range(8, 14)]
    torch.testing.assert_close(torch.cat(pieces, 1), model(seq).logits, atol=2e-5, rtol=1e-4)
    assert cache.length == 18 and cache.seen.tolist() == [14]


@pytest.mark.parametrize("kw", [dict(), dict(fastformer=True)], ids=["leap", "fastformer"])
def test_models_are_decoder_lms_of_blocks_with_one_state_per_layer(kw):
    model = make(**kw)
    mixer = FastformerAttention if kw else MultiheadLeap
    assert isinstance(model, DecoderLM) and model.causal and model.can_decode
    assert all(isinstance(b, Block) and isinstance(b.mixer, mixer) for b in model.blocks)
    assert [b.mixer.window for b in model.blocks] == model.config.layer_windows() == [None, 4, 8, 16]
    cache = model.make_cache(2)
    assert isinstance(cache, Cache) and len(cache.layers) == 4
    assert all(isinstance(s, FastformerState if kw else LeapState) for s in cache.layers)
    keys = set(model.state_dict())
    assert "blocks.0.mixer.proj.weight" in keys and "blocks.0.ffn.fc.weight" in keys


def test_fastformer_is_composed_not_inherited():
    assert not issubclass(FastformerConfig, LeapConfig)
    assert not issubclass(FastformerForCausalLM, LeapForCausalLM)
    cfg = FastformerConfig(hidden_size=64, n_head=2, n_layer=3, n_positions=32, rescale=None)
    assert (cfg.dim, cfg.num_heads, cfg.num_layers, cfg.max_seq_len, cfg.rescale) == (64, 2, 3, 32, 10.0)
    assert cfg.layer_windows() == [None, 4, 8]
    assert "rope_base" not in {f.name for f in dataclasses.fields(FastformerConfig)}
    with pytest.raises(ConfigError, match="position 'rotary' is not supported"):
        FastformerConfig(hidden_size=64, n_head=2, position="rotary")


def test_only_leap_supports_focus_maps():
    assert make().supports_focus_maps
    assert not make(fastformer=True).supports_focus_maps
    out = make()(torch.randint(0, 50, (1, 7)), return_maps=True)
    assert len(out.maps) == 4 and out.maps[0]["attention"].shape == (1, 2, 7, 7)
    assert make()(torch.randint(0, 50, (1, 7))).maps is None


def test_seed_argument_order_of_forward():
    # The seed's forward(input_ids, attention_mask, labels), positionally.
    model = make()
    x = torch.randint(1, 50, (2, 9))
    mask = torch.ones_like(x)
    mask[0, :2] = 0
    out = model(x, mask, x)
    expected = model(x, attention_mask=mask, labels=x)
    torch.testing.assert_close(out.loss, expected.loss, atol=0, rtol=0)
    # seqlab's already-shifted targets give the loss of the HF-style labels.
    torch.testing.assert_close(model(x[:, :-1], targets=x[:, 1:]).loss, model(x, labels=x).loss)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(hidden_size=0), r"dim \(hidden_size\) must be an int >= 1, got 0"),
        (dict(n_head=0), r"num_heads \(n_head\) must be an int >= 1, got 0"),
        (dict(n_layer=0), r"num_layers \(n_layer\) must be an int >= 1"),
        (dict(n_positions=0), r"max_seq_len \(n_positions\) must be an int >= 1"),
        (dict(vocab_size=0), r"vocab_size must be an int >= 1"),
        (dict(hidden_size=64, n_head=3), "must be divisible by num_heads"),
        (
            dict(hidden_dropout_prob=1.0),
            r"dropout \(hidden_dropout_prob\) must be a number in \[0, 1\), got 1.0",
        ),
        (dict(hidden_dropout_prob=-0.1), r"must be a number in \[0, 1\)"),
        (dict(initializer_range=0.0), r"init_std \(initializer_range\) must be a number > 0"),
        (dict(position="alibi"), "position must be one of learned, rotary, decay, none, got 'alibi'"),
        (dict(rescale=0), "rescale must be None"),
        (dict(rope_base=1.0), "rope_base must be a number > 1"),
        (dict(mlp_ratio=0.0), "mlp_ratio must be a number > 0"),
        (dict(window_sizes=[4, 0, 8, 16]), "window_sizes must be a list of positive ints"),
        (dict(use_local_att="yes"), "use_local_att must be true or false"),
        (dict(hidden_size=66, n_head=2, position="rotary"), "needs an even head dim"),
        (dict(hidden_size=64, dim=32), "got both hidden_size=64 and dim=32"),
    ],
)
def test_every_config_field_is_validated(kwargs, message):
    base = dict(hidden_size=64, n_head=2, vocab_size=50)
    with pytest.raises(ConfigError, match=message):
        LeapConfig(**{**base, **kwargs})


def test_fastformer_config_is_validated_too():
    with pytest.raises(ConfigError, match="FastformerConfig.num_heads"):
        FastformerConfig(hidden_size=64, n_head=0)
    with pytest.raises(ConfigError, match="FastformerConfig.rescale must be a number > 0"):
        FastformerConfig(hidden_size=64, n_head=2, rescale=-1.0)
