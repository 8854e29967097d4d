"""Exceptions a user can hit. Each message names the problem and how to fix it.

Depends on nothing else in seqlab, so every layer may raise these.
"""


class SeqlabError(Exception):
    """Base class of every error seqlab raises on purpose."""


class ConfigError(SeqlabError, ValueError):
    """A configuration key is unknown, has the wrong type or an invalid value."""


class DataError(SeqlabError, ValueError):
    """Input data is missing, empty, too short or malformed."""


class TokenRangeError(SeqlabError, ValueError):
    """Token ids given to a model lie outside its vocabulary."""


class CheckpointError(SeqlabError, RuntimeError):
    """A checkpoint is missing, truncated, corrupt or belongs to another model."""


class TrainingDiverged(SeqlabError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""
