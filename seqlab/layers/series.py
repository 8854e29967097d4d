"""Adapter from a series of feature vectors to a sequence backbone and back, for forecasting.

x [b, t, f] -> Linear(f, c) -> backbone [b, t, c] -> Linear(c, f) -> next-value prediction [b, t, f].
"""

from torch import Tensor, nn


class SeriesModel(nn.Module):
    """features -> width -> backbone -> features: x [b, t, f] -> next-value prediction [b, t, f].

    With residual=True (the default) the output is x + delta, the last value plus a learned
    change; the output projection starts at zero, so the untrained model IS the naive forecast
    and training has to beat it. residual=False predicts the next value directly.

    forward(x) calls backbone(h); forward(x, ctx, cache) calls backbone(h, ctx, cache), for a
    backbone that reports into a seqlab.layers.block.Context and decodes from a Cache (LFModel).
    aux_losses() / metrics() pass on those a seed-style backbone kept from its latest call.
    """

    def __init__(self, backbone: nn.Module, num_features: int, dim: int, residual: bool = True):
        super().__init__()
        self.input = nn.Linear(num_features, dim)
        self.backbone = backbone
        self.output = nn.Linear(dim, num_features)
        self.residual = residual
        if residual:
            nn.init.zeros_(self.output.weight)
            nn.init.zeros_(self.output.bias)

    def forward(self, x: Tensor, ctx=None, cache=None) -> Tensor:
        h = self.input(x)  # [b, t, c]
        h = self.backbone(h) if ctx is None and cache is None else self.backbone(h, ctx, cache)
        delta = self.output(h)  # [b, t, f]
        return x + delta if self.residual else delta

    def aux_losses(self) -> dict[str, Tensor]:
        return self.backbone.aux_losses() if hasattr(self.backbone, "aux_losses") else {}

    def metrics(self) -> dict[str, Tensor]:
        return self.backbone.metrics() if hasattr(self.backbone, "metrics") else {}
