"""Benchmark cases as data: (model, preset, dtype, overrides), the training recipe, the peer.

A case is trained with the real trainer under RECIPE (nanoGPT's shakespeare_char CPU recipe:
batch 12 x block 64, lr 1e-3 with 100 warmup steps and cosine decay to 1e-4 at the last step,
AdamW betas (0.9, 0.99), weight decay 0.1, clip 1.0, 20 eval batches every 250 steps), then
the case's own dotted overrides, exactly as `seqlab train --set` takes them. Every seqlab
case is paired with the same case run through the peer model, when x-transformers is
installed.
"""

import importlib.util
from dataclasses import dataclass, field

from seqlab.errors import ConfigError

PEER = "xtransformers"
DTYPES = ("float32", "bfloat16")

# Pinned here, not taken from TrainConfig's defaults, so bench numbers stay comparable
# across commits even if the trainer's defaults change.
RECIPE = (
    "train.batch_size=12",
    "train.grad_accum=1",
    "train.lr=1e-3",
    "train.min_lr=1e-4",
    "train.warmup_iters=100",
    "train.lr_decay_iters=null",
    "train.weight_decay=0.1",
    "train.beta1=0.9",
    "train.beta2=0.99",
    "train.grad_clip=1.0",
    "train.eval_interval=250",
    "train.eval_iters=20",
    "train.log_interval=10",
    "train.checkpoint_interval=null",
    "train.sample_tokens=0",
)

# Keys a case sets itself; an override may not change them behind the case's back.
RESERVED = ("model.name", "model.preset", "train.dtype", "train.max_iters", "train.max_time", "run_dir")


@dataclass(frozen=True)
class Case:
    model: str
    preset: str = "baby"
    dtype: str = "float32"  # float32 | bfloat16 (autocast, as in `seqlab train --dtype`)
    overrides: tuple[str, ...] = field(default_factory=tuple)  # e.g. ("train.lr=3e-4", "model.dim=64")

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ConfigError(f"bench dtype must be one of {DTYPES}, got {self.dtype!r}")
        for pair in self.overrides:
            if pair.split("=", 1)[0].strip() in RESERVED:
                raise ConfigError(
                    f"override {pair!r} sets a key the bench controls; use --model, --preset, --dtypes, "
                    f"--max-iters, --max-time or --out instead"
                )

    @property
    def name(self) -> str:
        return f"{self.model}-{self.preset}-{self.dtype}"

    @property
    def is_peer(self) -> bool:
        return self.model == PEER

    def peer(self) -> "Case":
        return Case(PEER, self.preset, self.dtype, self.overrides)


def peer_available() -> bool:
    return importlib.util.find_spec("x_transformers") is not None


def expand_cases(
    models: list[str],
    preset: str,
    dtypes: list[str],
    overrides: tuple[str, ...] = (),
    peer: bool = True,
) -> list[Case]:
    """Every model in every dtype, each followed by its peer case (run once per dtype)."""
    cases: list[Case] = []
    for dtype in dtypes:
        for model in models:
            case = Case(model, preset, dtype, tuple(overrides))
            for c in (case, case.peer()) if peer and not case.is_peer else (case,):
                if c not in cases:
                    cases.append(c)
    return cases
