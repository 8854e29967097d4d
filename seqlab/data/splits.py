"""Whole-corpus encoding, the train/validation split and the length check that guards batching.

Shapes: ids [t], a 1-D numpy int array over the whole corpus.
"""

from __future__ import annotations

import numpy as np

from seqlab.data.tokenizer import Tokenizer, raw_bytes_error
from seqlab.errors import DataError


def encode_corpus(text: str | bytes, tokenizer: Tokenizer) -> np.ndarray:
    """Encode a whole corpus to a 1-D id array (vectorized for char and byte tokenizers).

    text is a string, or raw bytes (`load_corpus_bytes`) for the byte tokenizer.
    """
    if not text:
        raise DataError("the corpus is empty (no text to encode); load a corpus with text in it")
    if isinstance(text, bytes) and tokenizer.kind != "byte":
        raise raw_bytes_error(tokenizer.kind)
    return tokenizer.encode_array(text)


def split_ids(ids: np.ndarray, val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Split by position: the first (1 - val_fraction) of the ids train, the rest validate.

    Contiguous, not shuffled, so validation text never leaks into training windows and the split
    is the same on every run. Returns views of `ids` with its dtype.
    """
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction={val_fraction} must lie strictly between 0 and 1, e.g. 0.1")
    ids = np.asarray(ids)
    n_train = int(len(ids) * (1 - val_fraction))
    return ids[:n_train], ids[n_train:]


def check_length(ids: np.ndarray, max_seq_len: int, split_name: str) -> None:
    """Fail early if a split cannot fill one training window (max_seq_len inputs + 1 target)."""
    if len(ids) < max_seq_len + 1:
        raise DataError(
            f"the {split_name} split has {len(ids)} tokens, shorter than one context window "
            f"(max_seq_len={max_seq_len} needs at least {max_seq_len + 1}); use a smaller "
            "max_seq_len or more data (or a larger val_fraction if this is the validation split)"
        )
