"""kat5: t5 with every feed-forward a KAN, parameter-matched to t5, its KAN regularization in
aux_losses, and the seed's defects 3 and 4 pinned for it too (the rest of the model is t5's,
tested in test_t5.py)."""

import pytest
import torch

from seqlab.errors import ConfigError
from seqlab.layers.kan import KANFeedForward
from seqlab.layers.mlp import GatedGELU
from seqlab.models import MODELS, build_config, build_model, count_parameters

V = 31


def tiny(**overrides):
    torch.manual_seed(0)
    return build_model("kat5", "tiny", vocab_size=V, dropout=0.0, **overrides).eval()


@pytest.mark.parametrize("preset", sorted(MODELS["kat5"].presets))
def test_parameter_count_matches_t5_at_every_preset(preset):
    t5 = count_parameters(build_model("t5", preset, vocab_size=V))
    kat5 = count_parameters(build_model("kat5", preset, vocab_size=V))
    assert abs(kat5 - t5) <= 0.02 * t5


def test_parameter_count_matches_t5_under_the_same_overrides():
    sizes = dict(vocab_size=V, dim=48, ffn_dim=100, num_layers=3, num_decoder_layers=2)
    t5 = count_parameters(build_model("t5", "tiny", **sizes))
    kat5 = count_parameters(build_model("kat5", "tiny", **sizes))
    assert abs(kat5 - t5) <= 0.02 * t5


def test_every_feed_forward_of_both_stacks_is_its_own_kan():
    model = tiny()
    ffns = [block.ffn for block in [*model.encoder, *model.decoder] if block.ffn is not None]
    assert len(ffns) == 4 and all(isinstance(f, KANFeedForward) for f in ffns)
    assert len({id(f) for f in ffns}) == len(ffns)
    assert not any(isinstance(m, GatedGELU) for m in model.modules())
    first = [f.layers[0].spline_weight for f in ffns]
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(first, first[1:]))


def test_kan_regularization_enters_the_loss_through_aux_losses():
    model = tiny(kan_reg_coef=1e-2).train()
    src = torch.randint(3, V, (2, 6))
    labels = torch.randint(3, V, (2, 5))
    out = model(src, labels=labels)
    names = sorted(out.aux_losses)
    assert names == ["decoder0/kan_reg", "decoder1/kan_reg", "encoder0/kan_reg", "encoder1/kan_reg"]
    torch.testing.assert_close(out.total_loss(), out.loss + sum(out.aux_losses.values()))
    sum(out.aux_losses.values()).backward()
    spline = model.encoder[0].ffn.layers[0].spline_weight
    assert spline.grad is not None and spline.grad.abs().sum() > 0


def test_regularization_off_adds_no_aux_loss():
    model = tiny(kan_reg_coef=0.0)
    out = model(torch.randint(3, V, (2, 6)), labels=torch.randint(3, V, (2, 5)))
    assert out.aux_losses == {}


def test_kan_hidden_dim_can_be_set_directly():
    model = tiny(kan_hidden_dim=7)
    assert model.encoder[0].ffn.layers[0].out_features == 7
    with pytest.raises(ConfigError, match="kan_hidden_dim"):
        build_config("kat5", "tiny", kan_hidden_dim=0)


def test_the_decoder_is_causal_and_reads_the_shifted_target():
    model = tiny()
    src, labels = torch.randint(3, V, (2, 6)), torch.randint(3, V, (2, 7))
    t = 3
    changed = labels.clone()
    changed[:, t] = (changed[:, t] + 4) % (V - 3) + 3
    with torch.no_grad():
        a, b = model(src, labels=labels).logits, model(src, labels=changed).logits
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], rtol=0, atol=0)
    assert not torch.allclose(a[:, t + 1], b[:, t + 1])


def test_a_short_training_run_lowers_the_loss():
    torch.manual_seed(0)
    model = build_model("kat5", "tiny", vocab_size=12, dropout=0.0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        src = torch.randint(3, 12, (16, 5), generator=g)
        out = model(src, labels=src.flip(1))
        opt.zero_grad()
        out.total_loss().backward()
        opt.step()
        losses.append(out.loss.item())
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


def test_ffn_options_reg_coef_overrides_kan_reg_coef():
    model = tiny(kan_reg_coef=1e-2, ffn_options={"reg_coef": 0.0})
    out = model(torch.randint(3, V, (2, 6)), labels=torch.randint(3, V, (2, 5)))
    assert out.aux_losses == {}
    with pytest.raises(ConfigError, match="kan_reg_coef"):
        build_config("kat5", "tiny", kan_reg_coef=-1.0)
