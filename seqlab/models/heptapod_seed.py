"""HeptapodLM's public API (PyPI nonlinear-transformer), as its README uses it, over HeptapodModel.

    model = NonLinearTransformer(vocab_size=100, embed_size=128, matrix_dim=10, heads=8,
                                 window_size=3, iterations=2)
    out = model(torch.randint(0, 100, (10, 10)))      # one grid [gy, gx] -> logits [gy, gx, v]
    out = model(torch.randint(0, 100, (4, 10, 10)))   # a batch [b, gy, gx] -> [b, gy, gx, v]

The original's constructor took none of these keywords (a TypeError). The seed's names are
mapped here and nowhere else:

    embed_size (alias dim)   -> dim              model width c
    matrix_dim (int or (gy, gx)) -> max_grid     the largest grid; smaller and non-square work
    heads                    -> num_heads
    window_size (odd)        -> window           neighbourhood side (3 -> radius 1), every block
    depth (default 2)        -> num_layers       distinct blocks
    iterations               -> iterations       passes of the block stack with shared weights

Like the original, calling the model returns the logits tensor (not a ModelOutput);
`model.model` is the seqlab HeptapodModel underneath (its forward takes targets and returns
the loss).
"""

from torch import Tensor, nn

from seqlab.errors import ConfigError
from seqlab.models.heptapod import HeptapodConfig, HeptapodModel


class NonLinearTransformer(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        embed_size: int | None = None,
        matrix_dim: int | tuple[int, int] = 10,
        heads: int = 8,
        window_size: int = 3,
        iterations: int = 2,
        *,
        dim: int | None = None,
        depth: int = 2,
        dropout: float = 0.0,
    ):
        super().__init__()
        if embed_size is not None and dim is not None and embed_size != dim:
            raise ConfigError(f"embed_size={embed_size} and its alias dim={dim} disagree: give one of them")
        width = embed_size if embed_size is not None else dim if dim is not None else 128
        grid = [matrix_dim, matrix_dim] if isinstance(matrix_dim, int) else list(matrix_dim)
        try:
            cfg = HeptapodConfig(
                vocab_size=vocab_size,
                max_grid=grid,
                dim=width,
                num_layers=depth,
                num_heads=heads,
                window=window_size,
                iterations=iterations,
                dropout=dropout,
            )
        except ConfigError as e:
            # Name the seed's own keywords, not the config keys they map to.
            message = str(e)
            for key, seed_name in (
                ("model.dim", "embed_size"),
                ("model.max_grid", "matrix_dim"),
                ("model.num_heads", "heads"),
                ("model.window", "window_size"),
                ("model.num_layers", "depth"),
                ("model.", ""),
            ):
                message = message.replace(key, seed_name)
            raise ConfigError(message) from None
        self.model = HeptapodModel(cfg)

    @property
    def config(self) -> HeptapodConfig:
        return self.model.config

    def forward(self, x: Tensor) -> Tensor:
        """Logits [gy, gx, v] for one grid [gy, gx], or [b, gy, gx, v] for a batch [b, gy, gx]."""
        if x.dim() not in (2, 3):
            raise ConfigError(
                f"NonLinearTransformer takes a grid [rows, cols] or a batch [batch, rows, cols], "
                f"got shape {tuple(x.shape)}"
            )
        single = x.dim() == 2
        try:
            logits = self.model(x[None] if single else x).logits
        except ConfigError as e:
            raise ConfigError(str(e).replace("model.max_grid", "matrix_dim")) from None
        return logits[0] if single else logits


__all__ = ["NonLinearTransformer"]
