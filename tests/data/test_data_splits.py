"""Tests for seqlab.data.splits: whole-corpus encoding, the split, the length check."""

import time

import numpy as np
import pytest

from seqlab.data import ByteTokenizer, CharTokenizer, check_length, encode_corpus, split_ids
from seqlab.errors import DataError


def test_encode_corpus_is_fast_for_char_and_byte():
    text = "To be, or not to be, that is the question: é\n" * 110_000  # ~5M characters
    for tokenizer in (CharTokenizer.from_text(text), ByteTokenizer()):
        start = time.perf_counter()
        ids = encode_corpus(text, tokenizer)
        assert time.perf_counter() - start < 2.0
        assert ids.ndim == 1 and ids.dtype == np.int32
        line = text[:45]
        assert tokenizer.decode(ids[: len(tokenizer.encode(line))].tolist()) == line


def test_encode_empty_corpus():
    with pytest.raises(DataError, match="corpus is empty"):
        encode_corpus("", ByteTokenizer())


def test_split_is_positional_and_deterministic():
    ids = np.arange(1000, dtype=np.int64)
    train, val = split_ids(ids, val_fraction=0.1)
    assert (len(train), len(val)) == (900, 100)
    assert train.dtype == val.dtype == np.int64
    np.testing.assert_array_equal(np.concatenate([train, val]), ids)
    again_train, again_val = split_ids(ids, val_fraction=0.1)
    np.testing.assert_array_equal(again_val, val)
    assert val[0] == 900


@pytest.mark.parametrize("val_fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_rejects_bad_fraction(val_fraction):
    with pytest.raises(DataError, match=f"val_fraction={val_fraction} must lie strictly between"):
        split_ids(np.arange(10), val_fraction)


def test_corpus_shorter_than_one_window():
    check_length(np.arange(65), 64, "train")
    with pytest.raises(DataError, match=r"val split has 64 tokens.*max_seq_len=64 needs at least 65"):
        check_length(np.arange(64), 64, "val")
