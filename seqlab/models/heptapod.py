"""`heptapod`: a transformer over 2D grids of tokens (HeptapodLM's NonLinearTransformer, repaired).

Seed: kyegomez/HeptapodLM (PyPI nonlinear-transformer), "every token sees its neighbours in all
directions". The model here:

    x = embed(grid) [+ embed_condition(condition)]              [b, gy, gx, c]
    repeat `iterations` times (the same weights each pass):
        for each of num_layers blocks:  x = x + attn(norm x);  x = x + mlp(norm x)
    logits = head(norm x)                                       [b, gy, gx, v]

attn is seqlab.layers.local2d.Local2DAttention: multi-head q/k/v/o projections, axial 2D rotary
positions on q and k, and a window x window neighbourhood of every cell (shifted inward at the
borders); with global_every = N, every N-th block (N-1, 2N-1, ...) attends to the whole grid
instead. causal=True makes every block raster-causal (a cell sees cells at or before it in
raster order), for raster-order training. The condition grid (condition_vocab_size > 0, for
grid-to-grid tasks) has the grid's shape; its embedding is added to the token embedding.

Where this departs from the seed (each a defect of the original): the blocks have projections
and heads and honour the window (the original's attention had none and looped over cells in
Python); the positions are a rotation of q and k (the original added raw column angles to the
residual stream, and crashed on non-square grids); each sublayer adds its residual once (the
original added it twice, so activations grew several-fold per layer); `iterations` reapplies
the whole block stack with shared weights (the README's "feedback loops").

Initialization is gpt's: weights ~ N(0, init_std), the residual output projections
~ N(0, init_std / sqrt(2 * num_layers * iterations)) (that many residual additions), the output
head tied to the token embedding.

Shapes: grid [b, gy, gx] long (gy <= max_grid[0], gx <= max_grid[1]), targets [b, gy, gx]
(-100 = ignore), padding_mask [b, gy, gx] bool (True = a real cell) -> logits [b, gy, gx, v].
"""

import math
from dataclasses import dataclass, field

from torch import Tensor, nn

from seqlab.config import check_fields
from seqlab.errors import ConfigError
from seqlab.layers.block import Block, Context
from seqlab.layers.embedding import check_token_ids
from seqlab.layers.ffn import make_ffn
from seqlab.layers.local2d import Local2DAttention
from seqlab.layers.norm import NORMS, make_norm
from seqlab.layers.rotary2d import Rotary2D
from seqlab.models.output import ModelOutput, lm_loss
from seqlab.ops.local2d import IMPLS

MLPS = {"gelu": "mlp", "swiglu": "swiglu"}


@dataclass
class HeptapodConfig:
    vocab_size: int = 16
    condition_vocab_size: int = 0  # > 0: a condition grid (grid-to-grid) of this vocabulary
    max_grid: int | list[int] = field(default_factory=lambda: [32, 32])  # [gy, gx] (an int: square)
    dim: int = 128
    num_layers: int = 4  # distinct blocks (the seed's depth)
    num_heads: int = 4
    window: int = 7  # side of each cell's neighbourhood (odd)
    iterations: int = 1  # passes of the whole block stack, weights shared
    global_every: int = 0  # every N-th block attends to the whole grid; 0 = none
    causal: bool = False  # raster-causal attention (a cell sees cells at or before it)
    mlp: str = "gelu"  # "gelu" | "swiglu"
    mlp_ratio: float = 4.0
    norm: str = "layernorm"  # "layernorm" | "rmsnorm"
    dropout: float = 0.0
    bias: bool = False
    rope_base: float = 10000.0
    init_std: float = 0.02
    impl: str = "tiled"  # seqlab.ops.local2d implementation

    def __post_init__(self):
        check_fields(
            self,
            positive_ints=("vocab_size", "dim", "num_layers", "num_heads", "window", "iterations"),
            above={"mlp_ratio": 0, "rope_base": 1, "init_std": 0},
            unit=("dropout",),
            choices={"mlp": tuple(MLPS), "norm": NORMS, "impl": IMPLS},
        )
        if self.window % 2 == 0:
            raise ConfigError(
                f"model.window must be odd (a window of 2r+1 cells centred on each cell), got {self.window}"
            )
        for key in ("condition_vocab_size", "global_every"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"model.{key} must be an int >= 0 (0 = none), got {value!r}")
        grid = [self.max_grid] * 2 if isinstance(self.max_grid, int) else list(self.max_grid)
        if len(grid) != 2 or any(isinstance(g, bool) or not isinstance(g, int) or g < 1 for g in grid):
            raise ConfigError(
                f"model.max_grid must be an int >= 1 or [rows, cols] of ints >= 1, got {self.max_grid!r}"
            )
        self.max_grid = grid
        if self.dim % self.num_heads or (self.dim // self.num_heads) % 4:
            raise ConfigError(
                f"model.num_heads={self.num_heads} must divide model.dim={self.dim} into heads of a "
                "multiple of 4 dims (2D rotary positions: two axes x rotation pairs); "
                "change model.dim or model.num_heads"
            )
        if int(self.mlp_ratio * self.dim) < 1:
            raise ConfigError(f"model.mlp_ratio * model.dim must be >= 1, got {self.mlp_ratio} * {self.dim}")


PRESETS = {
    "tiny": dict(dim=32, num_layers=2, num_heads=2),
    "baby": dict(dim=128, num_layers=4, num_heads=4),
    "small": dict(dim=384, num_layers=6, num_heads=6),
}


def heptapod_block(cfg: HeptapodConfig, index: int) -> Block:
    is_global = cfg.global_every > 0 and (index + 1) % cfg.global_every == 0
    attn = Local2DAttention(
        cfg.dim,
        cfg.num_heads,
        None if is_global else cfg.window,
        causal=cfg.causal,
        dropout=cfg.dropout,
        bias=cfg.bias,
        impl=cfg.impl,
    )
    ffn = make_ffn(
        MLPS[cfg.mlp], cfg.dim, hidden_dim=int(cfg.mlp_ratio * cfg.dim), dropout=cfg.dropout, bias=cfg.bias
    )
    return Block(cfg.dim, attn, ffn, cfg.norm, bias=cfg.bias, name=f"block{index}")


class HeptapodModel(nn.Module):
    grid_model = True  # reads [b, gy, gx] grids (a task tells grid models by config.max_grid)
    can_decode = False

    def __init__(self, cfg: HeptapodConfig):
        super().__init__()
        self.config = cfg
        self.causal = cfg.causal
        self.max_grid = tuple(cfg.max_grid)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.condition_embed = (
            nn.Embedding(cfg.condition_vocab_size, cfg.dim) if cfg.condition_vocab_size else None
        )
        self.dropout = nn.Dropout(cfg.dropout)
        self.rotary = Rotary2D(cfg.dim // cfg.num_heads, max(self.max_grid), cfg.rope_base)
        self.blocks = nn.ModuleList(heptapod_block(cfg, i) for i in range(cfg.num_layers))
        self.norm = make_norm(cfg.norm, cfg.dim, cfg.bias)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.head.weight = self.embed.weight
        self.apply(self._init_weights)
        std = cfg.init_std / math.sqrt(2 * cfg.num_layers * cfg.iterations)
        for block in self.blocks:
            nn.init.normal_(block.mixer.proj.weight, mean=0.0, std=std)
            nn.init.normal_(block.ffn.proj.weight, mean=0.0, std=std)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def _check_inputs(self, grid: Tensor, condition: Tensor | None, padding_mask: Tensor | None) -> None:
        if grid.dim() != 3:
            raise ConfigError(
                f"heptapod takes grids [batch, rows, cols] of token ids, got shape {tuple(grid.shape)}"
            )
        gy, gx = grid.shape[1:]
        if gy > self.max_grid[0] or gx > self.max_grid[1]:
            raise ConfigError(
                f"a {gy}x{gx} grid is larger than model.max_grid={list(self.max_grid)}; "
                f"raise model.max_grid (rows, cols) or crop the grid"
            )
        check_token_ids(grid, self.config.vocab_size)
        if self.condition_embed is None and condition is not None:
            raise ConfigError(
                "this heptapod has no condition embedding (model.condition_vocab_size=0): "
                "set model.condition_vocab_size to the condition grid's vocabulary, or pass no condition"
            )
        if self.condition_embed is not None:
            if condition is None:
                raise ConfigError(
                    f"this heptapod is conditioned (model.condition_vocab_size="
                    f"{self.config.condition_vocab_size}): pass condition, a grid of the input's shape"
                )
            if condition.shape != grid.shape:
                raise ConfigError(
                    f"condition {tuple(condition.shape)} must have the grid's shape {tuple(grid.shape)}"
                )
            check_token_ids(condition, self.config.condition_vocab_size)
        if padding_mask is not None and padding_mask.shape != grid.shape:
            raise ConfigError(
                f"padding_mask {tuple(padding_mask.shape)} must have the grid's shape {tuple(grid.shape)}"
            )

    def forward(
        self,
        grid: Tensor,
        condition: Tensor | None = None,
        targets: Tensor | None = None,
        padding_mask: Tensor | None = None,
        return_maps: bool = False,
    ) -> ModelOutput:
        self._check_inputs(grid, condition, padding_mask)
        _, gy, gx = grid.shape
        x = self.embed(grid)  # [b, gy, gx, c]
        if self.condition_embed is not None:
            x = x + self.condition_embed(condition)
        x = self.dropout(x)
        ctx = Context(
            rotary=self.rotary(gy, gx),
            padding_mask=None if padding_mask is None else padding_mask.bool(),
            maps=[] if return_maps else None,
        )
        for _ in range(self.config.iterations):
            for block in self.blocks:
                x = block(x, ctx)
        logits = self.head(self.norm(x))  # [b, gy, gx, v]
        loss = lm_loss(logits, targets) if targets is not None else None
        return ModelOutput(logits, loss, aux_losses=ctx.aux, metrics=ctx.metrics, maps=ctx.maps)


__all__ = ["HeptapodConfig", "HeptapodModel", "PRESETS"]
