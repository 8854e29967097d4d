"""Building a layer from a registry of factories by name: shared by the mixer and
feed-forward registries (seqlab.layers.mixers, seqlab.layers.ffn)."""

import inspect
from collections.abc import Callable

from torch import nn


def build(registry: dict[str, Callable[..., nn.Module]], what: str, kind: str, dim: int, options: dict):
    """registry[kind](dim, **options); a wrong kind or option is a ValueError naming it.

    The options are checked against the factory's signature before the call, so a TypeError
    raised inside a layer is still a traceback of that layer, not an "unknown option"."""
    if kind not in registry:
        raise ValueError(f"unknown {what} {kind!r}; choose one of {', '.join(registry)}")
    factory = registry[kind]
    try:
        inspect.signature(factory).bind(dim, **options)
    except TypeError as e:
        raise ValueError(f"{what} {kind!r}: {e}") from None
    return factory(dim, **options)


__all__ = ["build"]
