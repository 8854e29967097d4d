"""seqlab's t5 (T5 v1.1): config checks, its pieces against their formulas, the seed's defects
3-5 pinned (distinct and chained layers, a causal decoder fed the shifted target, positions
entering once), cached == recomputed decoding, padded == unpadded sources, and a loss that falls.

Exactness against Hugging Face's T5 is in test_t5_hf.py."""

import math

import pytest
import torch
import torch.nn.functional as F

from seqlab.errors import ConfigError
from seqlab.layers.mlp import GatedGELU
from seqlab.layers.relative_bias import RelativePositionBias
from seqlab.models import build_config, build_model
from seqlab.models.t5 import DECODER_START_ID, PAD_ID, T5Model, shift_right

V = 29


def tiny(**overrides) -> T5Model:
    torch.manual_seed(0)
    return build_model("t5", "tiny", vocab_size=V, dropout=0.0, **overrides).eval()


def source(b=2, s=7, seed=1):
    return torch.randint(3, V, (b, s), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "key, value",
    [
        ("vocab_size", 2),
        ("head_dim", 0),
        ("num_decoder_layers", 0),
        ("dropout", 1.5),
        ("eps", 0.0),
        ("ffn", "relu"),
        ("self_attention", "lstm"),
        ("position", "absolute"),
        ("relative_attention_max_distance", 4),
    ],
)
def test_bad_config_values_name_the_key(key, value):
    with pytest.raises(ConfigError, match=key):
        build_config("t5", "tiny", **{key: value})


def test_num_decoder_layers_defaults_to_num_layers():
    assert build_config("t5", "tiny", num_layers=3).num_decoder_layers == 3


def test_rmsnorm_is_t5s_formula():
    model = tiny()
    norm = model.encoder[0].norm1
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 5, 32) * 4
    expected = (
        x.double() * torch.rsqrt(x.double().pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight.double()
    )
    torch.testing.assert_close(norm(x).double(), expected, rtol=1e-6, atol=1e-6)


def test_feed_forward_is_gated_gelu_with_the_tanh_approximation():
    model = tiny()
    ffn = model.encoder[0].ffn
    assert isinstance(ffn, GatedGELU)
    x = torch.randn(2, 4, 32)
    gate, value = (x @ w.T for w in ffn.fc.weight.chunk(2))
    tanh_gelu = 0.5 * gate * (1 + torch.tanh(math.sqrt(2 / math.pi) * (gate + 0.044715 * gate**3)))
    torch.testing.assert_close(ffn(x), (tanh_gelu * value) @ ffn.proj.weight.T, rtol=1e-5, atol=1e-6)


def test_attention_logits_are_not_scaled_by_one_over_sqrt_d():
    model = tiny()
    for block in [*model.encoder, *model.decoder]:
        assert block.mixer.scale == 1.0


def test_shift_right_starts_with_pad_and_maps_ignored_labels_to_pad():
    labels = torch.tensor([[5, 6, 7, -100], [8, -100, -100, -100]])
    assert shift_right(labels).tolist() == [
        [DECODER_START_ID, 5, 6, 7],
        [DECODER_START_ID, 8, PAD_ID, PAD_ID],
    ]
    assert labels[0, 3] == -100  # the caller's tensor is left alone


def test_loss_is_the_mean_cross_entropy_over_labels_that_are_not_ignored():
    model = tiny()
    labels = source(2, 5, seed=2)
    labels[1, 3:] = -100
    out = model(source(), labels=labels)
    keep = labels != -100
    expected = F.cross_entropy(out.logits[keep], labels[keep])
    torch.testing.assert_close(out.loss, expected)


def test_without_targets_the_decoder_runs_one_start_step():
    model = tiny()
    src = source()
    out = model(src)
    assert out.logits.shape == (2, 1, V) and out.loss is None
    start = torch.full((2, 1), DECODER_START_ID)
    torch.testing.assert_close(out.logits, model(src, decoder_input_ids=start).logits, rtol=0, atol=0)


# Defect 3: one layer instance shared by all layers and both stacks; decoder layers not chained.


def test_every_layer_of_both_stacks_has_its_own_weights():
    model = tiny(num_layers=3)
    blocks = [*model.encoder, *model.decoder]
    assert len(model.encoder) == 3 and len(model.decoder) == 6  # 3 decoder layers: self + cross/FFN
    assert len({id(b) for b in blocks}) == len(blocks)
    owners = {}
    for name, p in model.named_parameters():
        assert p.data_ptr() not in owners, f"{name} shares storage with {owners[p.data_ptr()]}"
        owners[p.data_ptr()] = name
    # Different weights, not just different objects.
    assert not torch.equal(model.encoder[0].mixer.qkv.weight, model.encoder[1].mixer.qkv.weight)
    assert not torch.equal(model.decoder[0].mixer.qkv.weight, model.decoder[2].mixer.qkv.weight)


def test_each_layer_reads_the_previous_layers_output():
    model = tiny(num_layers=3)
    seen = []
    hooks = [
        block.register_forward_hook(lambda mod, args, out: seen.append((mod, args[0], out)))
        for block in [*model.encoder, *model.decoder]
    ]
    with torch.no_grad():
        model(source(), labels=source(2, 4, seed=3))
    for h in hooks:
        h.remove()
    encoder_calls = seen[: len(model.encoder)]
    decoder_calls = seen[len(model.encoder) :]
    for calls in (encoder_calls, decoder_calls):
        for (_, _, out), (_, nxt_in, _) in zip(calls, calls[1:]):
            assert nxt_in is out
    # The decoder's cross-attention reads the encoder's final (normed) output.
    assert [m for m, _, _ in decoder_calls] == list(model.decoder)


# Defect 4: no causal mask; the decoder fed the unshifted target (a copy task in disguise).


def test_future_targets_never_change_earlier_logits():
    model = tiny()
    src, labels = source(), source(2, 8, seed=4)
    s = 4
    changed = labels.clone()
    changed[:, s:] = (changed[:, s:] + 5) % (V - 3) + 3
    with torch.no_grad():
        a, b = model(src, labels=labels).logits, model(src, labels=changed).logits
    # Logits at step t read labels[:t] only (the decoder input is shifted by one).
    torch.testing.assert_close(a[:, : s + 1], b[:, : s + 1], rtol=0, atol=0)
    assert not torch.allclose(a[:, s + 1 :], b[:, s + 1 :])


def test_the_logits_at_step_t_cannot_see_labels_t():
    model = tiny()
    src, labels = source(), source(2, 6, seed=5)
    for t in range(labels.shape[1] - 1):
        changed = labels.clone()
        changed[:, t] = (changed[:, t] + 7) % (V - 3) + 3
        with torch.no_grad():
            a, b = model(src, labels=labels).logits, model(src, labels=changed).logits
        torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], rtol=0, atol=0)
        assert not torch.allclose(a[:, t + 1], b[:, t + 1])


def test_no_gradient_flows_from_a_step_to_later_decoder_inputs():
    model = tiny()
    dec = source(2, 6, seed=6)
    captured = {}

    def keep(module, args, output):
        if args[0] is dec:  # the decoder's embedding call (the encoder's reads the source)
            output.retain_grad()
            captured["embedded"] = output

    handle = model.embed.register_forward_hook(keep)
    out = model(source(), decoder_input_ids=dec)
    handle.remove()
    t = 2
    out.logits[:, t].square().sum().backward()
    grad = captured["embedded"].grad  # [b, t, c]
    assert torch.count_nonzero(grad[:, t + 1 :]) == 0
    assert torch.count_nonzero(grad[:, : t + 1]) > 0


# Defect 5: positions added twice.


def test_positions_enter_once_through_one_relative_bias_per_stack():
    model = tiny(num_layers=3)
    embeddings = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    biases = [m for m in model.modules() if isinstance(m, RelativePositionBias)]
    # The token embedding and the two bias tables; no absolute position table anywhere.
    assert len(embeddings) == 3 and len(biases) == 2
    assert {m.bidirectional for m in biases} == {True, False}
    calls = []
    hooks = [m.register_forward_hook(lambda mod, args, out: calls.append(mod)) for m in biases]
    with torch.no_grad():
        model(source(), labels=source(2, 5, seed=7))
    for h in hooks:
        h.remove()
    # Computed once per stack per forward and shared by its 3 layers.
    assert calls == [model.encoder_bias, model.decoder_bias]


def test_only_position_differences_matter_so_left_padding_changes_nothing():
    # An absolute position embedding would shift every token of a left-padded source.
    model = tiny()
    src, labels = source(1, 6), source(1, 4, seed=8)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), src], 1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 6, dtype=torch.long)], 1)
    with torch.no_grad():
        alone = model(src, labels=labels).logits
        shifted = model(padded, mask, labels=labels).logits
    torch.testing.assert_close(shifted, alone, rtol=1e-5, atol=1e-5)


def test_without_the_bias_the_encoder_has_no_notion_of_order():
    model = tiny()
    with torch.no_grad():
        model.encoder_bias.embedding.weight.zero_()
    src = source(1, 6)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    with torch.no_grad():
        torch.testing.assert_close(
            model.encode(src[:, perm]), model.encode(src)[:, perm], rtol=1e-5, atol=1e-5
        )


# Padding and decoding.


def test_padded_sources_give_each_sources_own_logits():
    model = tiny()
    lengths = [7, 4, 2]
    sources = [source(1, n, seed=10 + n) for n in lengths]
    labels = source(3, 5, seed=20)
    batch = torch.zeros(3, 7, dtype=torch.long)
    mask = torch.zeros(3, 7, dtype=torch.long)
    for i, (src, n) in enumerate(zip(sources, lengths)):
        batch[i, :n], mask[i, :n] = src[0], 1
    with torch.no_grad():
        together = model(batch, mask, labels=labels).logits
        for i, src in enumerate(sources):
            alone = model(src, labels=labels[i : i + 1]).logits
            torch.testing.assert_close(together[i : i + 1], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("position", ["relative", "rotary"])
def test_cached_decoding_equals_recomputing(position):
    model = tiny(position=position)
    src = source(2, 7)
    mask = torch.ones_like(src)
    mask[1, 5:] = 0
    dec = source(2, 9, seed=9)
    with torch.no_grad():
        full = model(src, mask, decoder_input_ids=dec).logits
        cache = model.make_cache(2, 4)  # smaller than needed: the buffers grow
        steps = [model(src, mask, decoder_input_ids=dec[:, :3], cache=cache).logits]
        for i in range(3, 9):
            steps.append(model(None, mask, decoder_input_ids=dec[:, i : i + 1], cache=cache).logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)
    assert cache.length == 9


def test_a_cache_encodes_its_source_once():
    model = tiny()
    calls = []
    handle = model.encoder[0].register_forward_hook(lambda *a: calls.append(1))
    cache = model.make_cache(2)
    with torch.no_grad():
        for _ in range(3):
            model(source(), decoder_input_ids=torch.full((2, 1), 5), cache=cache)
    handle.remove()
    assert len(calls) == 1


def test_token_ids_out_of_range_are_errors():
    from seqlab.errors import TokenRangeError

    model = tiny()
    with pytest.raises(TokenRangeError):
        model(torch.tensor([[3, V]]))
    with pytest.raises(TokenRangeError):
        model(source(), labels=torch.tensor([[3, V + 4], [3, 4]]))


def test_dropout_is_active_in_training_only():
    torch.manual_seed(0)
    model = build_model("t5", "tiny", vocab_size=V, dropout=0.3)
    src, labels = source(), source(2, 5, seed=11)
    model.train()
    a, b = model(src, labels=labels).logits, model(src, labels=labels).logits
    assert not torch.allclose(a, b)
    model.eval()
    torch.testing.assert_close(model(src, labels=labels).logits, model(src, labels=labels).logits)


def test_a_short_training_run_learns_to_reverse():
    torch.manual_seed(0)
    model = build_model("t5", "tiny", vocab_size=12, dropout=0.0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(40):
        src = torch.randint(3, 12, (16, 5), generator=g)
        out = model(src, labels=src.flip(1))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    # Falls, and below guessing among the 9 symbols (log 9 = 2.2).
    assert last < 0.7 * first and last < math.log(9)


def test_the_self_attention_mixer_comes_from_the_registry_with_its_options():
    model = tiny(self_attention_options={"window": 3})
    assert all(block.mixer.window == 3 for block in [model.encoder[0], model.decoder[0]])
    assert model.decoder[1].mixer.cross and model.decoder[1].mixer.window is None
    src, dec = source(2, 7), source(2, 6, seed=12)
    with torch.no_grad():
        full = model(src, decoder_input_ids=dec).logits
        cache = model.make_cache(2)
        steps = [model(src, decoder_input_ids=dec[:, i : i + 1], cache=cache).logits for i in range(6)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="model.self_attention"):
        tiny(self_attention_options={"heads": 3})
    with pytest.raises(ConfigError, match="causal only"):
        tiny(self_attention="fastformer")  # the encoder's self-attention is bidirectional
