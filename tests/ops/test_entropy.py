"""Tests of seqlab.ops.entropy: hand-computed entropies, H_sample / H_usage, the sign and mode
of lambda, Switch load balancing, z-loss, and the seed's entropy_regularization_loss
(defect 1: the seed's module crashed on import; defect 6: entropy could only be minimized).
"""

import math

import pytest
import torch
from torch import nn

from seqlab.ops.entropy import (
    compute_entropy,
    entropy_penalty,
    entropy_regularization_loss,
    gate_entropies,
    load_balancing_loss,
    router_z_loss,
    sample_entropy,
    usage_entropy,
)


def test_module_imports_and_compute_entropy_is_callable():
    # Defect 1: entropy_regularization.py used nn without importing it.
    import seqlab.ops.entropy as entropy

    assert callable(entropy.compute_entropy) and callable(entropy.entropy_regularization_loss)


@pytest.mark.parametrize(
    "probs, bits",
    [
        ([0.25, 0.25, 0.25, 0.25], 2.0),
        ([1.0, 0.0, 0.0, 0.0], 0.0),
        ([0.5, 0.25, 0.25], 1.5),
        ([0.5, 0.5], 1.0),
    ],
)
def test_compute_entropy_hand_values_in_bits(probs, bits):
    torch.testing.assert_close(compute_entropy(torch.tensor(probs)), torch.tensor(bits))


def test_compute_entropy_batched_and_finite_gradient_at_zero():
    p = torch.tensor([[1.0, 0.0], [0.5, 0.5]], requires_grad=True)
    h = compute_entropy(p)
    torch.testing.assert_close(h, torch.tensor([0.0, 1.0]))
    h.sum().backward()
    assert torch.isfinite(p.grad).all()


def test_sample_and_usage_entropy():
    # Two sharp decisions on different experts: each decision 0 bits, usage balanced (1 bit).
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(sample_entropy(p), torch.tensor(0.0))
    torch.testing.assert_close(usage_entropy(p), torch.tensor(1.0))
    # Leading dims are all decisions: [b, t, e] averages over b and t.
    q = torch.tensor([[[0.5, 0.5], [1.0, 0.0]], [[0.5, 0.5], [0.0, 1.0]]])
    torch.testing.assert_close(sample_entropy(q), torch.tensor(0.5))
    torch.testing.assert_close(usage_entropy(q), torch.tensor(1.0))


def test_entropy_penalty_modes():
    p = torch.tensor([[0.5, 0.25, 0.25], [1.0, 0.0, 0.0]])  # H = 1.5, 0; mean gate [0.75, .125, .125]
    h_sample = 0.75
    h_usage = -(0.75 * math.log2(0.75) + 2 * 0.125 * math.log2(0.125))
    torch.testing.assert_close(entropy_penalty(p, 0.1, "sample"), torch.tensor(0.1 * h_sample))
    torch.testing.assert_close(entropy_penalty(p, -0.1, "sample"), torch.tensor(-0.1 * h_sample))
    torch.testing.assert_close(entropy_penalty(p, 0.1, "balance"), torch.tensor(0.1 * (h_sample - h_usage)))
    with pytest.raises(ValueError, match="entropy mode"):
        entropy_penalty(p, 0.1, "usage")


def test_lambda_sign_flips_the_gradient_on_router_logits():
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 0.3, -0.4]])
    grads = {}
    for lam in (0.1, -0.1):
        z = logits.clone().requires_grad_(True)
        entropy_penalty(z.softmax(-1), lam, "sample").backward()
        grads[lam] = z.grad
    assert grads[0.1].abs().sum() > 0
    torch.testing.assert_close(grads[-0.1], -grads[0.1])
    # lambda > 0 sharpens (raises the top logit), lambda < 0 flattens (lowers it).
    assert grads[0.1][0, 0] < 0 < grads[-0.1][0, 0]


@pytest.mark.parametrize("lam, direction", [(1.0, -1), (-1.0, 1)])
def test_entropy_can_be_minimized_and_maximized(lam, direction):
    # Defect 6: the seed could only minimize entropy; a negative lambda must raise it.
    torch.manual_seed(0)
    logits = (torch.randn(8, 4) * 1.5).requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=0.1)
    before = float(sample_entropy(logits.detach().softmax(-1)))
    for _ in range(30):
        opt.zero_grad()
        entropy_penalty(logits.softmax(-1), lam, "sample").backward()
        opt.step()
    after = float(sample_entropy(logits.detach().softmax(-1)))
    assert direction * (after - before) > 0.3, (before, after)


def test_load_balancing_loss_uniform_is_one_collapsed_is_num_experts():
    e = 4
    uniform = torch.full((8, e), 1 / e)
    index = torch.arange(8)[:, None] % e  # every expert gets 2 of 8 tokens
    torch.testing.assert_close(load_balancing_loss(uniform, index, e), torch.tensor(1.0))
    collapsed = torch.zeros(8, e)
    collapsed[:, 0] = 1
    torch.testing.assert_close(
        load_balancing_loss(collapsed, torch.zeros(8, 2, dtype=torch.long), e), torch.tensor(4.0)
    )


def test_router_z_loss_value():
    logits = torch.zeros(3, 4)
    torch.testing.assert_close(router_z_loss(logits), torch.tensor(math.log(4) ** 2))


def test_entropy_regularization_loss_adds_every_layer_term():
    class Holder(nn.Module):
        def __init__(self, aux):
            super().__init__()
            self.last_aux_losses = aux

    model = nn.Sequential(
        Holder({"entropy": torch.tensor(0.5)}), nn.Linear(2, 2), Holder({"z": torch.tensor(2.0)})
    )
    primary = torch.tensor(1.0)
    torch.testing.assert_close(entropy_regularization_loss(model, primary), torch.tensor(3.5))
    assert entropy_regularization_loss(nn.Linear(2, 2), primary) is primary


def test_gate_entropies_in_one_pass_equal_the_separate_functions():
    probs = torch.randn(3, 5, 4).softmax(-1)
    h_sample, h_usage = gate_entropies(probs)
    torch.testing.assert_close(h_sample, sample_entropy(probs))
    torch.testing.assert_close(h_usage, usage_entropy(probs))
    torch.testing.assert_close(
        entropy_penalty(probs, 0.3, "balance", h_sample, h_usage), entropy_penalty(probs, 0.3, "balance")
    )
