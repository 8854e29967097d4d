"""Entropy of router (gate) distributions and the regularizers of a mixture of experts.

LFM_Entropy (seed 000, davidwynter/LFM_Entropy) regularizes the entropy of
the MoE gate g [..., e] (a distribution over e experts per decision) to push experts toward
specialization or diversity:

    compute_entropy(p) = -sum_e p_e log2 p_e            bits, 0 log 0 = 0
    H_sample = mean over decisions of H(g)              how sharp each decision is
    H_usage  = H(mean over decisions of g)              how evenly experts are used overall
    "sample"  mode: lambda * H_sample       lambda > 0 specializes, lambda < 0 diversifies
    "balance" mode: lambda * (H_sample - H_usage)   sharp decisions, balanced usage (lambda > 0)

plus the Switch Transformer load-balancing loss E * sum_e f_e P_e (Fedus et al. 2021) and the
router z-loss mean(logsumexp(logits)^2) (Zoph et al. 2022, ST-MoE). A "decision" is one
routed unit: a sequence for a per-sequence gate, a token for a per-token gate.

Departures from the seed: its entropy_regularization.py used `nn` without importing it (the
package could not be imported); its term was always + lambda * H, in natural log, so the
"diversity" direction its README promises could not be expressed. Here the sign of lambda
picks the direction, and entropies are in bits.

`entropy_regularization_loss(model, primary_loss)` is the seed's public function, for the
seed's own loop (`loss = entropy_regularization_loss(model, mse(model(x), y))`). It needs no
nn.Module API beyond `.modules()`: it adds the `last_aux_losses` dict of every seed-style
module in the model, i.e. seqlab.models.lfm.LFModel called the seed's way (without a
Context), which keeps its latest forward's MoE terms there: the one place in seqlab where a
module holds on to its losses. Every other model returns them in its ModelOutput.
"""

import math

import torch
from torch import Tensor

__all__ = [
    "ENTROPY_MODES",
    "compute_entropy",
    "entropy_penalty",
    "entropy_regularization_loss",
    "gate_entropies",
    "load_balancing_loss",
    "router_z_loss",
    "sample_entropy",
    "usage_entropy",
]

ENTROPY_MODES = ("sample", "balance")
LN2 = math.log(2.0)


def compute_entropy(probs: Tensor, dim: int = -1) -> Tensor:
    """Entropy in bits of the distributions `probs` along `dim` (0 log 0 = 0).

    probs [..., e] -> [...]. The log is taken of max(p, tiny): p = 0 contributes 0 to the value
    and a finite gradient (log tiny), never the NaN of 0 * log 0.
    """
    tiny = torch.finfo(probs.dtype).tiny if probs.is_floating_point() else 1e-38
    return -(probs * probs.clamp_min(tiny).log()).sum(dim) / LN2


def sample_entropy(probs: Tensor) -> Tensor:
    """H_sample: mean over decisions of H(g). probs [..., e] -> scalar (bits)."""
    return compute_entropy(probs).mean()


def usage_entropy(probs: Tensor) -> Tensor:
    """H_usage: entropy of the mean gate over decisions. probs [..., e] -> scalar (bits)."""
    return compute_entropy(probs.reshape(-1, probs.shape[-1]).mean(0))


def gate_entropies(probs: Tensor) -> tuple[Tensor, Tensor]:
    """(H_sample, H_usage) of probs [..., e] in one pass: the same values as sample_entropy and
    usage_entropy (every row's entropy and the mean gate's, computed together)."""
    rows = probs.reshape(-1, probs.shape[-1])
    h = compute_entropy(torch.cat([rows, rows.mean(0, keepdim=True)]))  # [n + 1]
    return h[:-1].mean(), h[-1]


def entropy_penalty(
    probs: Tensor,
    lambda_entropy: float,
    mode: str = "sample",
    h_sample: Tensor | None = None,
    h_usage: Tensor | None = None,
) -> Tensor:
    """The entropy term added to the loss. probs [..., e] -> scalar.

    "sample": lambda * H_sample (lambda > 0: specialization; lambda < 0: - |lambda| H_sample,
    diversity). "balance": lambda * (H_sample - H_usage). h_sample, h_usage: the entropies of
    probs when the caller has them already (with their graph), e.g. from gate_entropies.
    """
    if mode not in ENTROPY_MODES:
        raise ValueError(f"unknown entropy mode {mode!r}; choose one of {ENTROPY_MODES}")
    h_sample = sample_entropy(probs) if h_sample is None else h_sample
    if mode == "sample":
        return lambda_entropy * h_sample
    return lambda_entropy * (h_sample - (usage_entropy(probs) if h_usage is None else h_usage))


def load_balancing_loss(probs: Tensor, expert_index: Tensor, num_experts: int) -> Tensor:
    """Switch load-balancing loss E * sum_e f_e P_e (1 when usage is uniform, E when collapsed).

    probs [n, e]: router probabilities per decision; P_e = their mean over decisions.
    expert_index [n, k]: the experts each decision was sent to; f_e = the fraction of the
    n k assignments that went to e. f is a count (no gradient); the gradient flows through P.
    """
    probs = probs.reshape(-1, num_experts)
    counts = torch.bincount(expert_index.reshape(-1), minlength=num_experts)
    f = counts.to(probs.dtype) / expert_index.numel()
    return num_experts * (f * probs.mean(0)).sum()


def router_z_loss(logits: Tensor) -> Tensor:
    """ST-MoE router z-loss: mean over decisions of logsumexp(logits)^2. logits [..., e]."""
    return torch.logsumexp(logits.float(), dim=-1).square().mean()


def entropy_regularization_loss(model, primary_loss: Tensor) -> Tensor:
    """primary_loss + every auxiliary loss of the model's latest seed-style forward.

    Collects `last_aux_losses` (a dict of scalar tensors) from `model.modules()` (LFModel keeps
    them when called without a Context); a model without such modules returns primary_loss
    unchanged. Call it after the forward whose loss it completes.
    """
    total = primary_loss
    for module in model.modules():
        for value in (getattr(module, "last_aux_losses", None) or {}).values():
            total = total + value
    return total
