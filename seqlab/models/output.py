"""The one output type every seqlab model returns, so the trainer needs no model-specific code.

- logits: [b, t, v] for token models (or [b, t, c] predictions for regression models)
- loss: the primary loss when targets were given, else None
- aux_losses: named scalar tensors the trainer ADDS to the loss (MoE entropy, balance, ...)
- metrics: named scalars the trainer only LOGS (gate entropy, expert load, ...)
- cache: the decoding state after this call (seqlab.layers.cache.Cache), if one was passed
- maps: per-layer explainability maps (LEAP's focus maps) when the forward was asked for them

It can also be read the way Hugging Face's ModelOutput is, so `transformers.Trainer` (whose
compute_loss does `outputs[0]` on anything that is not a dict) and other HF-style code can
train a seqlab model directly: `out["loss"]` / `out["logits"]` read the fields by name,
`out.keys()` names the fields that are set (not None, dicts not empty) in HF's order (loss
first, then logits, aux_losses, metrics, cache, maps), and `out[0]`, `out[1:]`,
`out.to_tuple()` and iteration go over their values: `out[0]` is the loss when there is one,
else the logits. `out["loss"]` is the primary loss only; aux_losses are NOT folded in (seqlab's
trainer adds them via total_loss(); a model with aux losses trained by another loop must add
them itself).
"""

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F


@dataclass
class ModelOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    cache: Any = None
    maps: list | None = None  # per-layer explainability maps, when asked for (return_maps=True)

    def total_loss(self) -> torch.Tensor:
        if self.loss is None:
            raise ValueError("the model computed no loss: pass targets to its forward")
        return self.loss + sum(self.aux_losses.values()) if self.aux_losses else self.loss

    # Hugging Face ModelOutput-style access (see the module docstring).
    _HF_ORDER = ("loss", "logits", "aux_losses", "metrics", "cache", "maps")

    def keys(self) -> list[str]:
        """The names of the fields that are set, in HF's order (loss first)."""
        return [
            name
            for name in self._HF_ORDER
            if getattr(self, name) is not None and not _empty_dict(getattr(self, name))
        ]

    def to_tuple(self) -> tuple:
        """The values of keys(), like HF's ModelOutput.to_tuple(): (loss, logits, ...) with a loss."""
        return tuple(getattr(self, name) for name in self.keys())

    def __getitem__(self, key):
        if isinstance(key, str):
            if key not in self._HF_ORDER:
                raise KeyError(f"ModelOutput has no field {key!r}; fields: {', '.join(self._HF_ORDER)}")
            return getattr(self, key)
        return self.to_tuple()[key]

    def __iter__(self):
        return iter(self.to_tuple())


def _empty_dict(value) -> bool:
    return isinstance(value, dict) and not value


def lm_loss(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy of logits [b, t, v] against already-shifted targets [b, t], in fp32: the
    mean over the counted targets, or their sum (reduction="sum")."""
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(),
        targets.reshape(-1),
        ignore_index=ignore_index,
        reduction=reduction,
    )
