"""LFModel (the seed's API) and the "lfm" / "lfm_series" models: the seed's usage, lifted dimension
constraints, causality, aux losses and metrics in ModelOutput (from the Context, not the
modules), cached decoding == recomputing, the lfm_series backbone registered once, config
checks, and a short training run.
"""

import pytest
import torch
import torch.nn.functional as F

from seqlab.errors import ConfigError
from seqlab.models import MODELS, build_config, build_model
from seqlab.models.generation import generate
from seqlab.models.lfm import LFMConfig, LFMForCausalLM, LFModel, LFMSeriesConfig
from seqlab.ops.entropy import entropy_regularization_loss

# The seed's hyperparameters.json and training.json shapes.
SEED_HPARAMS = dict(
    token_dim=64, channel_dim=64, expert_dim=64, adapt_dim=32, num_experts=4, lambda_entropy=0.01
)


def test_seed_usage_mse_plus_entropy_regularization():
    torch.manual_seed(0)
    model = LFModel(**SEED_HPARAMS)
    x, target = torch.randn(16, 10, 64), torch.randn(16, 10, 64)
    y = model(x)
    assert isinstance(y, torch.Tensor) and y.shape == (16, 10, 64)
    mse = F.mse_loss(y, target)
    loss = entropy_regularization_loss(model, mse)
    aux = model.aux_losses()
    assert set(aux) == {"moe0/entropy"}
    torch.testing.assert_close(loss, mse + aux["moe0/entropy"])
    loss.backward()
    assert model.blocks[1].ffn.router.weight.grad.abs().sum() > 0  # layer 0's MoE block
    assert torch.isfinite(loss) and float(y.detach().std()) < 10  # defect 5: no exploding activations


@pytest.mark.parametrize("causal", [True, False])
def test_dimension_constraints_are_lifted(causal):
    # The seed needed token_dim == channel_dim == expert_dim; any combination works here.
    model = LFModel(24, 40, 16, 8, 3, num_layers=2, causal=causal, max_seq_len=12, num_heads=2, top_k=2)
    x = torch.randn(3, 7, 24)
    assert model(x).shape == (3, 7, 24)
    assert model.adapt_input(x).shape == ((3, 7, 8) if causal else (3, 8))
    assert set(model.metrics()) >= {"moe0/h_sample", "moe1/h_usage", "moe1/load2"}


def test_lfmodel_errors_name_the_problem():
    model = LFModel(8, 8, 8, 4, 2, max_seq_len=6)
    with pytest.raises(ValueError, match="max_seq_len 6"):
        model(torch.randn(1, 7, 8))
    with pytest.raises(ValueError, match="token_dim=8"):
        model(torch.randn(1, 5, 9))
    with pytest.raises(ConfigError, match="positive"):
        LFModel(8, 0, 8, 4, 2)


@pytest.mark.parametrize("moe", [dict(), dict(gate="token", top_k=2)], ids=["sequence-dense", "token-top2"])
def test_causal_lfmodel_future_does_not_change_past(moe):
    torch.manual_seed(0)
    model = LFModel(16, 16, 16, 8, 4, num_layers=2, max_seq_len=16, num_heads=2, **moe).eval()
    x = torch.randn(2, 12, 16)
    y = model(x)
    x2 = x.clone()
    x2[:, 7:] = torch.randn(2, 5, 16) * 3
    torch.testing.assert_close(model(x2)[:, :7], y[:, :7])
    assert (model(x2)[:, 7:] - y[:, 7:]).abs().max() > 1e-3


def make_lm(**kw):
    torch.manual_seed(0)
    return build_model("lfm", "tiny", vocab_size=65, **kw)


def test_presets_match_gpt_and_config_checks():
    for name in ("tiny", "baby", "small"):
        for key in ("dim", "num_layers", "max_seq_len"):
            assert MODELS["lfm"].presets[name][key] == MODELS["gpt"].presets[name][key]
    with pytest.raises(ConfigError, match="top_k"):
        LFMConfig(num_experts=2, top_k=3)
    with pytest.raises(ConfigError, match="gate"):
        build_config("lfm", "tiny", gate="batch")
    with pytest.raises(ConfigError, match="divisible"):
        LFMConfig(dim=30, num_heads=4)
    for key, value in (("rank", 0), ("load_balance_coef", -0.1), ("z_loss_coef", -1.0), ("expert_dim", 0)):
        with pytest.raises(ConfigError, match=key):
            LFMConfig(**{key: value})
    with pytest.raises(ConfigError, match="num_features"):
        LFMSeriesConfig(num_features=0)


@pytest.mark.parametrize(
    "moe", [dict(), dict(gate="token", top_k=2, load_balance_coef=0.01, z_loss_coef=1e-3)]
)
def test_lm_logits_are_causal_and_output_carries_moe_terms(moe):
    model = make_lm(**moe).eval()
    ids = torch.randint(0, 65, (2, 20))
    out = model(ids, targets=torch.randint(0, 65, (2, 20)))
    assert out.logits.shape == (2, 20, 65) and torch.isfinite(out.loss)
    ids2 = ids.clone()
    ids2[:, 11:] = (ids2[:, 11:] + 7) % 65
    torch.testing.assert_close(model(ids2).logits[:, :11], out.logits[:, :11])
    expected_aux = {"entropy"} | ({"load_balance", "z_loss"} if moe else set())
    assert set(out.aux_losses) == {f"moe{i}/{k}" for i in range(2) for k in expected_aux}
    for i in range(2):
        keys = {f"moe{i}/h_sample", f"moe{i}/h_usage"} | {f"moe{i}/load{e}" for e in range(4)}
        assert keys <= set(out.metrics)
    assert all(v.dim() == 0 for v in out.metrics.values())
    torch.testing.assert_close(out.total_loss(), out.loss + sum(out.aux_losses.values()))
    # Straight from the Context: the registered model leaves nothing on its modules, even
    # after a seed-style (context-free) call of its backbone kept losses there.
    model.backbone(model.embed(ids))
    assert model.backbone.aux_losses()
    model(ids)
    assert model.backbone.last_aux_losses == {} and model.backbone.aux_losses() == {}


def test_lm_loss_decreases_on_a_fixed_batch():
    model = make_lm()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 65, (4, 33), generator=gen)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        out = model(ids[:, :-1], targets=ids[:, 1:])
        loss = out.total_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0] - 0.5, losses


def test_lm_generates_and_rejects_long_or_bad_inputs():
    model = make_lm()
    out = generate(model, torch.zeros(1, 3, dtype=torch.long), 40, temperature=0)
    assert out.shape == (1, 43)  # prefix cropped to max_seq_len (32) as it grows
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match="vocab_size"):
        model(torch.full((1, 4), 65))
    assert isinstance(model, LFMForCausalLM) and model.head.weight is model.embed.weight


@pytest.mark.parametrize(
    "moe", [dict(), dict(gate="token", top_k=2, load_balance_coef=0.01)], ids=["sequence-dense", "token-top2"]
)
def test_lm_cached_decoding_equals_recomputed_logits(moe):
    model = make_lm(**moe).eval()
    ids = torch.randint(0, 65, (3, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids)
        cache = model.make_cache(3, 8)  # capacity below the length: the states grow
        parts = [model(ids[:, :7], cache=cache)]
        parts += [model(ids[:, i : i + 1], cache=cache) for i in range(7, 29)]
        parts.append(model(ids[:, 29:], cache=cache))  # a multi-token call after decoding
    torch.testing.assert_close(torch.cat([p.logits for p in parts], 1), full.logits, rtol=1e-5, atol=1e-5)
    # The aux losses and metrics of a cached call are those of its own tokens.
    for key in parts[0].aux_losses:
        assert torch.isfinite(parts[-1].aux_losses[key])
    assert cache.length == 32 and set(cache.extra) == {"adapt_sum", "adapt_count"}
    assert sum(s is not None for s in cache.layers) == 2  # token mixing keeps a state, the MoE none
    with pytest.raises(ConfigError, match="max_seq_len 32"):  # one row of M per position
        model(ids[:, :1], cache=cache)


def test_lm_generation_past_max_seq_len_recomputes_a_cropped_prefix():
    model = make_lm()
    assert model.can_decode and model.max_positions == 32
    prompt = torch.randint(0, 65, (2, 5), generator=torch.Generator().manual_seed(2))
    cached = generate(model, prompt, 40, temperature=0)
    recomputed = generate(model, prompt, 40, temperature=0, use_cache=False)
    assert cached.shape == (2, 45)
    if not torch.equal(cached, recomputed):
        # Two code paths: only a near tie (fp32 round-off) may send greedy decoding another way.
        step = int((cached != recomputed).any(0).nonzero()[0])
        with torch.no_grad():
            top2 = model(recomputed[:, max(0, step - 32) : step]).logits[:, -1].topk(2, dim=-1).values
        assert (top2[:, 0] - top2[:, 1]).min() < 1e-5, f"cached generation differs at {step}"


def test_lfm_series_registers_its_backbone_once_and_decodes():
    model = build_model("lfm_series", "tiny", num_features=3).eval()
    keys = list(model.state_dict())
    assert all(k.startswith("net.") for k in keys), [k for k in keys if not k.startswith("net.")][:3]
    assert len(keys) == len({id(t) for t in model.state_dict().values()})
    assert model.backbone is model.net.backbone
    x = torch.randn(2, 12, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(x)
        cache = model.make_cache(2, 12)
        steps = [model(x[:, :4], cache=cache).logits] + [
            model(x[:, i : i + 1], cache=cache).logits for i in range(4, 12)
        ]
    torch.testing.assert_close(torch.cat(steps, 1), full.logits, rtol=1e-5, atol=1e-5)
    assert {"moe0/entropy", "moe1/entropy"} == set(full.aux_losses) and "moe1/load3" in full.metrics


def test_bidirectional_lfmodel_cannot_decode():
    model = LFModel(8, 8, 8, 4, 2, causal=False, max_seq_len=6)
    assert not model.can_decode
    with pytest.raises(ValueError, match="cannot decode"):
        model.make_cache(1, 4)
