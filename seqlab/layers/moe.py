"""MixtureOfExperts with entropy-regularized gates (LFM_Entropy, seed 000), for any block.

    g = softmax(router(.)) over e experts
        gate="token":    router(x_t), one decision per token
        gate="sequence": router(ctx.adapt), the seed's: one decision per sequence for a
                         per-sample adapt input [b, a], one per prefix for a per-position
                         adapt input [b, t, a] (causal LFM)
    dense (top_k=None): y = sum_e g_e * expert_e(x)                     all experts computed
    top-k:              y = sum_{j<k} w_j * expert_{i_j}(x)             only k experts per token,
                        w = the k largest g renormalized (dispatch in seqlab.ops.moe)

A feed-forward of seqlab.layers.block: `forward(x, ctx)`. The experts come from a factory
(`expert()` -> a new feed-forward module, e.g. functools.partial(ChannelMixing, c, a, ...));
the default is the GELU MLP of seqlab.layers.mlp (hidden 4 c), which needs no adapt input, so
a token-gated MoE of MLPs works in any model. Each expert is called as a feed-forward,
`expert(x_rows, ctx_rows)`: for top-k routing ctx_rows carries the adapt input gathered with
the rows (adaptive experts, LFM's ChannelMixing, read it there), for dense routing the
block's own context. A sequence gate without ctx.adapt is an error that says to use
gate="token".

Auxiliary losses (seqlab.ops.entropy) go to `ctx.add_aux`, under the block's name ("moe0/..."):
"entropy" = lambda * H_sample ("sample" mode; lambda < 0 maximizes entropy) or
lambda * (H_sample - H_usage) ("balance"), when lambda != 0; "load_balance" = coef * E *
sum_e f_e P_e when load_balance_coef > 0; "z_loss" = coef * mean logsumexp^2 when
z_loss_coef > 0. Metrics go to `ctx.add_metric` (detached scalars): "h_sample", "h_usage"
(bits) and "load{e}" per expert: the fraction of routed assignments (top-k) or the mean gate
weight (dense). f_e and the load of a sparse per-sequence gate count sequences.

Departures from the seed: its experts were single AdaptiveLinears (with a per-sequence gate
the whole MoE collapsed to one linear map per sample); it broadcast g [b, e] against expert
outputs [b, t, c] as if e were the position axis (an error when b != t, silently wrong when
b == t, defect 3); here a sequence gate is indexed g[:, None, e]. Its entropy term could only
be minimized (defect 6). Top-k routing, the token gate, the balance mode, load-balancing and
z-loss are additions.

impl="fast" (default) dispatches top-k routing sorted by expert, and runs dense routing over
alike low-rank adaptive experts (LFM's) in the fused form of seqlab.ops.moe (every expert's
layers as a few large matmuls; without autograd, e.g. decoding, the experts' weights are
packed once and reused while they do not change). impl="reference" runs the readable loops.
Both are tested equal on outputs and gradients.

Shapes: x [b, t, c], ctx.adapt [b, a] or [b, t, a] -> [b, t, c].
"""

import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor, nn

from seqlab.layers.block import Context
from seqlab.layers.mixing import ChannelMixing, adapt_of
from seqlab.layers.mlp import MLP
from seqlab.ops.entropy import (
    ENTROPY_MODES,
    entropy_penalty,
    gate_entropies,
    load_balancing_loss,
    router_z_loss,
)
from seqlab.ops.moe import (
    DISPATCH_IMPLS,
    apply_packed_experts,
    dense_combine,
    expert_counts,
    moe_dispatch,
    pack_adaptive_experts,
    top_k_gates,
)

GATES = ("sequence", "token")


class MixtureOfExperts(nn.Module):
    def __init__(
        self,
        dim: int,
        num_experts: int,
        expert: Callable[[], nn.Module] | None = None,
        *,
        gate: str = "token",
        adapt_dim: int | None = None,
        top_k: int | None = None,
        lambda_entropy: float = 0.0,
        entropy_mode: str = "sample",
        load_balance_coef: float = 0.0,
        z_loss_coef: float = 0.0,
        impl: str = "fast",
    ):
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        if gate not in GATES:
            raise ValueError(f"unknown gate {gate!r}; choose one of {GATES}")
        if gate == "sequence" and not adapt_dim:
            raise ValueError(
                "gate='sequence' routes on the adapt input and needs its width: pass adapt_dim, or "
                "use gate='token' (routes on x)"
            )
        if entropy_mode not in ENTROPY_MODES:
            raise ValueError(f"unknown entropy_mode {entropy_mode!r}; choose one of {ENTROPY_MODES}")
        if top_k is not None and not 1 <= top_k <= num_experts:
            raise ValueError(
                f"top_k must be None (dense) or lie in [1, num_experts={num_experts}], got {top_k}"
            )
        if impl not in DISPATCH_IMPLS:
            raise ValueError(f"unknown dispatch impl {impl!r}; choose one of {DISPATCH_IMPLS}")
        for name, value in (("load_balance_coef", load_balance_coef), ("z_loss_coef", z_loss_coef)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0 (0 = off), got {value}")
        self.num_experts, self.gate, self.top_k, self.impl = num_experts, gate, top_k, impl
        self.lambda_entropy, self.entropy_mode = lambda_entropy, entropy_mode
        self.load_balance_coef, self.z_loss_coef = load_balance_coef, z_loss_coef
        self.router = nn.Linear(adapt_dim if gate == "sequence" else dim, num_experts)
        expert = expert or (lambda: MLP(dim, 4 * dim))
        self.experts = nn.ModuleList(expert() for _ in range(num_experts))
        # Dense routing over alike low-rank adaptive MLPs (LFM's experts) has a fused fast path.
        first = self.experts[0]
        self.fused_dense = all(
            isinstance(m, ChannelMixing)
            and m.fc.generator == m.proj.generator == "lowrank"
            and m.dropout.p == 0
            and [p.shape for p in m.parameters()] == [p.shape for p in first.parameters()]
            and (m.fc.bias is None) == (m.proj.bias is None)
            for m in self.experts
        )
        self._packed_cache = None  # (parameter versions, packed experts): see _packed_experts

    def extra_repr(self) -> str:
        return (
            f"gate={self.gate!r}, top_k={self.top_k}, lambda_entropy={self.lambda_entropy}, "
            f"entropy_mode={self.entropy_mode!r}"
        )

    def router_logits(self, x: Tensor, ctx: Context | None = None) -> Tensor:
        """Gate logits per decision: [b, e] (per-sample sequence gate) or [b, t, e]."""
        if self.gate == "token":
            return self.router(x)
        if ctx is None or ctx.adapt is None:
            raise ValueError(
                "MixtureOfExperts with gate='sequence' routes on ctx.adapt (LFM's adapt input), but the "
                "context has none: use gate='token' (routes on x) outside an LFM model"
            )
        return self.router(ctx.adapt)

    def forward(self, x: Tensor, ctx: Context | None = None) -> Tensor:
        ctx = Context() if ctx is None else ctx
        b, t, _ = x.shape
        logits = self.router_logits(x, ctx)
        probs = logits.softmax(
            -1, dtype=torch.promote_types(logits.dtype, torch.float32)
        )  # [b, e] or [b, t, e]: one distribution per decision
        index = None
        if self.top_k is None:
            # A per-sequence gate [b, e] applies to every position: gates[:, None, e] * y_e
            # [b, t, c] is the seed's intended g[:, e, None, None] * y_e.
            gates = probs if probs.dim() == 3 else probs[:, None, :]
            if self.fused_dense and self.impl == "fast":
                y = self._dense_adaptive(
                    x, gates.expand(b, t, -1).to(x.dtype), adapt_of(ctx, "MixtureOfExperts")
                )
            else:
                experts = [lambda z, expert=expert: expert(z, ctx) for expert in self.experts]
                y = dense_combine(x, gates.to(x.dtype), experts)
        else:
            weights, index = top_k_gates(probs, self.top_k)  # per decision, renormalized

            def per_token(z: Tensor) -> Tensor:
                # One row per token: a per-sequence decision (or adapt input) repeats over t.
                return (z if z.dim() == 3 else z[:, None, :].expand(b, t, z.shape[-1])).flatten(0, 1)

            # The adapt input travels with the rows it belongs to; the experts see it in a
            # context of their own rows (sharing the block's aux and metrics dicts).
            extra = (per_token(ctx.adapt),) if ctx.adapt is not None else ()

            def row_expert(expert):
                return lambda z, *a: expert(z, dataclasses.replace(ctx, adapt=a[0] if a else None))

            y = moe_dispatch(
                x.flatten(0, 1),
                per_token(index),
                per_token(weights).to(x.dtype),
                [row_expert(expert) for expert in self.experts],
                extra,
                impl=self.impl,
            ).view(b, t, -1)
        self._report(ctx, logits, probs, index)
        return y

    def _packed_experts(self) -> tuple:
        """(gate weight [2 e r, a], gate bias [2 e r], the experts packed for
        seqlab.ops.moe.apply_packed_experts): every expert's gates and weights side by side.

        Rebuilt on every call while autograd records (training: the packing is part of the
        graph, and any kept pack is dropped); without autograd (evaluation, decoding) kept
        until a parameter changes (its version or storage), so decoding does not repack them
        for every token. The pack is a copy of the experts' weights (not saved state)."""
        params = [p for m in self.experts for p in m.parameters()]
        key = None
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            self._packed_cache = None  # training changes the weights: never reuse a pack across it
        else:
            key = tuple((p.data_ptr(), p._version) for p in params)
            if self._packed_cache is not None and self._packed_cache[0] == key:
                return self._packed_cache[1]
        fc = [m.fc for m in self.experts]
        proj = [m.proj for m in self.experts]

        def stack(layers, name):
            return (
                None if getattr(layers[0], name) is None else torch.stack([getattr(m, name) for m in layers])
            )

        weights = [stack(layers, name) for layers in (fc, proj) for name in ("weight", "v", "u", "bias")]
        packed = (
            torch.cat([layer.gate.weight for layer in fc + proj]),
            torch.cat([layer.gate.bias for layer in fc + proj]),
            pack_adaptive_experts(*weights),
        )
        if key is not None:
            self._packed_cache = (key, packed)
        return packed

    def _dense_adaptive(self, x: Tensor, gates: Tensor, adapt: Tensor) -> Tensor:
        """Every ChannelMixing expert at once (seqlab.ops.moe, fused dense form): x [b, t, c],
        gates [b, t, e], adapt [b, a] or [b, t, a] -> [b, t, c]."""
        b, t, c = x.shape
        e, r = self.num_experts, self.experts[0].fc.rank
        gate_weight, gate_bias, packed = self._packed_experts()
        # Every expert's two gate layers on the adapt input in one matmul: [..., 2 e r].
        g = torch.nn.functional.linear(adapt, gate_weight, gate_bias)
        g = (g if g.dim() == 3 else g[:, None, :]).expand(b, t, -1).reshape(b * t, 2, e, r)
        y = apply_packed_experts(x.reshape(b * t, c), gates.reshape(b * t, e), g[:, 0], g[:, 1], packed)
        return y.view(b, t, -1)

    def _report(self, ctx: Context, logits: Tensor, probs: Tensor, index: Tensor | None) -> None:
        e = self.num_experts
        # Both entropies in one pass; the entropy term and the metrics share them.
        h_sample, h_usage = gate_entropies(probs)
        if self.lambda_entropy != 0:
            penalty = entropy_penalty(probs, self.lambda_entropy, self.entropy_mode, h_sample, h_usage)
            ctx.add_aux("entropy", penalty)
        if self.load_balance_coef > 0:
            routed = index if index is not None else probs.argmax(-1, keepdim=True)
            ctx.add_aux("load_balance", self.load_balance_coef * load_balancing_loss(probs, routed, e))
        if self.z_loss_coef > 0:
            ctx.add_aux("z_loss", self.z_loss_coef * router_z_loss(logits))
        with torch.no_grad():
            ctx.add_metric("h_sample", h_sample.detach())
            ctx.add_metric("h_usage", h_usage.detach())
            if index is not None:
                load = expert_counts(index, e).float() / index.numel()
            else:
                load = probs.reshape(-1, e).mean(0)
            for i, value in enumerate(load.unbind()):
                ctx.add_metric(f"load{i}", value)


__all__ = ["GATES", "MixtureOfExperts"]
