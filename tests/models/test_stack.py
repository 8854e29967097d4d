"""The `stack` model: the layer grammar, every mixer with every feed-forward, mixed decoding."""

import pytest
import torch

from seqlab.errors import ConfigError
from seqlab.layers.ffn import FFNS
from seqlab.layers.mixers import MIXERS
from seqlab.models import build_config, build_model, count_parameters
from seqlab.models.generation import generate
from seqlab.models.stack import LayerSpec, parse_layers

VOCAB = 41

README_EXAMPLES = {
    "leap_with_attention": "leap*2, attention, leap",
    "attention_moe": "attention+moe(num_experts=4,top_k=2)*4",
    "window_with_global": "attention(window=16)*3, attention",
}


def test_grammar_expands_repeats_options_and_feed_forwards():
    layers = parse_layers("leap*2, attention(window=16)+moe(top_k=2, num_experts=8), none+swiglu")
    assert layers == [
        LayerSpec("leap"),
        LayerSpec("leap"),
        LayerSpec("attention", {"window": 16}, "moe", {"top_k": 2, "num_experts": 8}),
        LayerSpec("none", {}, "swiglu", {}),
    ]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("", "cannot read"),
        ("lep*2", "unknown mixer 'lep'"),
        ("attention+mpl", "unknown feed-forward 'mpl'"),
        ("attention(window)", "key=value"),
        ("attention*0", "repeats"),
        ("none+none", "neither"),
        ("attention((", "cannot read"),
    ],
)
def test_bad_layer_specs_are_one_line_config_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        build_config("stack", "tiny", layers=spec)


def test_unknown_layer_option_names_the_layer():
    with pytest.raises(ConfigError, match="layer 1.*window_size"):
        build_model("stack", "tiny", vocab_size=VOCAB, layers="attention, attention(window_size=3)")


def test_layers_fix_the_depth_and_default_is_gpt_sized():
    assert build_config("stack", "baby", layers="leap*3, attention").num_layers == 4
    gpt = build_model("gpt", "baby", vocab_size=65)
    stack = build_model("stack", "baby", vocab_size=65)
    assert count_parameters(stack) == count_parameters(gpt)


@pytest.mark.parametrize("example", sorted(README_EXAMPLES))
def test_readme_examples_train_one_step_and_decode(example):
    torch.manual_seed(0)
    model = build_model("stack", "tiny", vocab_size=VOCAB, layers=README_EXAMPLES[example])
    ids = torch.randint(0, VOCAB, (2, 17))
    out = model(ids[:, :-1], targets=ids[:, 1:])
    out.total_loss().backward()
    assert torch.isfinite(out.total_loss())
    if "moe" in README_EXAMPLES[example]:
        assert any(k.endswith("load_balance") for k in out.aux_losses)
    model.eval()
    _assert_cached_equals_recomputed(model, ids)


def _assert_cached_equals_recomputed(model, ids):
    with torch.no_grad():
        full = model(ids).logits
        cache = model.make_cache(ids.shape[0], ids.shape[1])
        parts = [model(ids[:, :4], cache=cache).logits]
        for i in range(4, ids.shape[1]):
            parts.append(model(ids[:, i : i + 1], cache=cache).logits)
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-4, atol=1e-5)


def test_recurrent_leap_state_beside_attention_kv_caches_decodes_like_recompute(assert_same_greedy):
    torch.manual_seed(1)
    model = build_model(
        "stack", "tiny", vocab_size=VOCAB, layers="leap(window=4), attention, fastformer, leap"
    ).eval()
    ids = torch.randint(0, VOCAB, (3, 20))
    _assert_cached_equals_recomputed(model, ids)
    cached = generate(model, ids[:, :5], 12, temperature=0)
    uncached = generate(model, ids[:, :5], 12, temperature=0, use_cache=False)
    assert_same_greedy(model, cached, uncached)


@pytest.mark.parametrize("ffn", sorted(FFNS))
@pytest.mark.parametrize("mixer", sorted(MIXERS))
def test_every_mixer_composes_with_every_feed_forward(mixer, ffn):
    torch.manual_seed(0)
    model = build_model("stack", "tiny", vocab_size=VOCAB, layers=f"{mixer}+{ffn}, attention")
    ids = torch.randint(0, VOCAB, (2, 13))
    out = model(ids[:, :-1], targets=ids[:, 1:])
    loss = out.total_loss()
    loss.backward()
    assert torch.isfinite(loss)
    # Causal: a change at position 8 leaves the logits before it untouched.
    model.eval()
    other = ids.clone()
    other[:, 8:] = (other[:, 8:] + 3) % VOCAB
    with torch.no_grad():
        a, b = model(ids).logits, model(other).logits
    torch.testing.assert_close(a[:, :8], b[:, :8], rtol=1e-5, atol=1e-6)
    if model.can_decode:
        _assert_cached_equals_recomputed(model, ids)
