"""The feed-forward registry: every FFNS entry builds, maps [b, t, c] -> [b, t, c], reports its aux
losses and metrics through the Context (under the block's name), composes inside a Block, and
rejects options it does not know. A new entry is covered here without writing a test.
"""

import pytest
import torch

from seqlab.layers.block import Block, Context
from seqlab.layers.ffn import FFNS, make_ffn

DIM, ADAPT = 16, 6
# Options an entry needs beyond (dim, hidden_dim, dropout, bias), and aux losses it must report
# with its defaults; an entry not listed here needs nothing (whatever it reports is checked).
NEEDS = {"adaptive": dict(adapt_dim=ADAPT)}
REPORTS = {"moe": {"load_balance"}}


def build(kind: str, **options):
    torch.manual_seed(0)
    return make_ffn(kind, DIM, hidden_dim=24, **{**NEEDS.get(kind, {}), **options})


def context(adapt: bool = True) -> Context:
    return Context(adapt=torch.randn(2, 5, ADAPT) if adapt else None)


@pytest.mark.parametrize("kind", sorted(FFNS))
def test_every_entry_maps_b_t_c_and_reports_through_the_context(kind):
    ffn = build(kind)
    x = torch.randn(2, 5, DIM, requires_grad=True)
    ctx = context()
    y = ffn(x, ctx)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert REPORTS.get(kind, set()) <= set(ctx.aux)
    assert all(v.dim() == 0 and torch.isfinite(v) and v.requires_grad for v in ctx.aux.values())
    assert all(not torch.is_tensor(v) or not v.requires_grad for v in ctx.metrics.values())
    (y.square().sum() + sum(ctx.aux.values(), torch.zeros(()))).backward()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in ffn.parameters() if p.requires_grad)


@pytest.mark.parametrize("kind", sorted(FFNS))
def test_every_entry_composes_inside_a_block(kind):
    block = Block(DIM, None, build(kind), "layernorm", name="layer7")
    x = torch.randn(2, 5, DIM)
    ctx = context()
    y = block(x, ctx)
    assert y.shape == x.shape
    assert all(key.startswith("layer7/") for key in [*ctx.aux, *ctx.metrics])
    assert {f"layer7/{k}" for k in REPORTS.get(kind, set())} <= set(ctx.aux)
    # Pre-norm residual: the block adds the feed-forward of the normed input to x.
    torch.testing.assert_close(y, x + block.ffn(block.norm2(x), Context(adapt=ctx.adapt)))


@pytest.mark.parametrize("kind", sorted(FFNS))
def test_unknown_options_are_errors_naming_them(kind):
    with pytest.raises(ValueError, match=f"feed-forward {kind!r}.*nonsense"):
        build(kind, nonsense=1)


def test_moe_defaults_work_in_any_block_and_experts_come_from_the_registry():
    moe = build("moe")
    assert moe.gate == "token" and moe.top_k == 2 and len(moe.experts) == 4
    assert type(moe.experts[0]).__name__ == "MLP" and moe.experts[0].fc.out_features == 24
    y = moe(torch.randn(2, 5, DIM), context(adapt=False))  # no adapt input needed
    assert y.shape == (2, 5, DIM)
    ctx = context()
    swiglu = build("moe", expert="swiglu", num_experts=3, top_k=1, lambda_entropy=0.1, z_loss_coef=1e-3)
    swiglu(torch.randn(2, 5, DIM), ctx)
    assert type(swiglu.experts[2]).__name__ == "SwiGLU"
    assert set(ctx.aux) == {"entropy", "load_balance", "z_loss"}
    assert {"h_sample", "h_usage", "load0", "load1", "load2"} <= set(ctx.metrics)


def test_moe_of_adaptive_experts_with_a_sequence_gate_reads_ctx_adapt():
    moe = build("moe", expert="adaptive", gate="sequence", adapt_dim=ADAPT, rank=2, top_k=None)
    assert type(moe.experts[0]).__name__ == "ChannelMixing" and moe.experts[0].fc.rank == 2
    ctx = context()
    assert moe(torch.randn(2, 5, DIM), ctx).shape == (2, 5, DIM)
    with pytest.raises(ValueError, match="gate='token'"):
        moe(torch.randn(2, 5, DIM), context(adapt=False))


def test_adaptive_needs_its_adapt_input():
    assert make_ffn("adaptive", DIM).fc.adapt_dim == 32  # the default width of the adapt input
    with pytest.raises(ValueError, match="ctx.adapt"):
        build("adaptive")(torch.randn(2, 5, DIM), context(adapt=False))
    with pytest.raises(ValueError, match="adapt_dim=6"):
        build("adaptive")(torch.randn(2, 5, DIM), Context(adapt=torch.randn(2, 5, 7)))


def test_bad_kinds_and_experts_are_errors_naming_the_choices():
    with pytest.raises(ValueError, match="unknown feed-forward 'kan2'.*mlp"):
        make_ffn("kan2", DIM)
    with pytest.raises(ValueError, match="unknown expert 'moe'"):
        build("moe", expert="moe")
    with pytest.raises(ValueError, match="rank and generator"):
        build("moe", rank=4)
