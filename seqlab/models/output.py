"""The one output type every seqlab model returns, so the trainer needs no model-specific code.

- logits: [b, t, v] for token models (or [b, t, c] predictions for regression models)
- loss: the primary loss when targets were given, else None
- aux_losses: named scalar tensors the trainer ADDS to the loss (MoE entropy, balance, ...)
- metrics: named scalars the trainer only LOGS (gate entropy, expert load, ...)
- cache: the decoding state after this call (seqlab.layers.cache.Cache), if one was passed
- maps: per-layer explainability maps (LEAP's focus maps) when the forward was asked for them
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


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Cross-entropy of logits [b, t, v] against already-shifted targets [b, t], in fp32."""
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=ignore_index
    )
