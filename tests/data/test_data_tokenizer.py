"""Tests for seqlab.data.tokenizer: round trips, save/load, and the errors users can hit."""

import json

import numpy as np
import pytest

from seqlab.data import (
    ByteTokenizer,
    CharTokenizer,
    build_tokenizer,
    load_tokenizer,
    tokenizer_from_dict,
)
from seqlab.errors import DataError

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
UNICODE = "naïve café — 日本語 🎉\n  tabs\tand  spaces  \n\n"


def test_char_round_trip_and_vocab():
    tokenizer = CharTokenizer.from_text(TEXT)
    assert tokenizer.vocab_size == len(set(TEXT))
    assert tokenizer.chars == "".join(sorted(set(TEXT)))
    ids = tokenizer.encode(TEXT)
    assert tokenizer.decode(ids) == TEXT
    np.testing.assert_array_equal(tokenizer.encode_array(TEXT), ids)
    assert CharTokenizer.from_text(UNICODE).decode(CharTokenizer.from_text(UNICODE).encode(UNICODE))


def test_char_unknown_character():
    tokenizer = CharTokenizer.from_text("abc")
    with pytest.raises(DataError, match=r"'z', 'é'.*byte tokenizer"):
        tokenizer.encode("abzé")
    with_unknown = CharTokenizer("abc", unknown="?")
    assert with_unknown.decode(with_unknown.encode("abzé")) == "ab??"


def test_char_decode_out_of_range():
    with pytest.raises(DataError, match=r"\[3\] are outside the char vocabulary \(size 3\)"):
        CharTokenizer("abc").decode([0, 3])


def test_byte_round_trip_non_ascii():
    tokenizer = ByteTokenizer()
    ids = tokenizer.encode(UNICODE)
    assert tokenizer.vocab_size == 256 and max(ids) > 127
    assert tokenizer.decode(ids) == UNICODE
    np.testing.assert_array_equal(tokenizer.encode_array(UNICODE), ids)
    assert tokenizer.decode(ids[:-1] + [0xE6]) == UNICODE[:-1] + "\ufffd"


def test_byte_tokenizer_takes_raw_bytes_as_they_are():
    tokenizer = ByteTokenizer()
    data = b"\x00\x89PNG\xff"
    assert tokenizer.encode(data) == [0, 0x89, 0x50, 0x4E, 0x47, 0xFF]
    np.testing.assert_array_equal(tokenizer.encode_array(data), tokenizer.encode(data))
    assert tokenizer.encode_array(data).dtype == np.int32


def test_bpe_train_round_trip_and_save(tmp_path):
    pytest.importorskip("tokenizers")
    text = (TEXT + UNICODE) * 20
    tokenizer = build_tokenizer("bpe", text, vocab_size=300)
    assert 256 < tokenizer.vocab_size <= 300
    ids = tokenizer.encode(text)
    assert len(ids) < len(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text
    # The batched whole-corpus path must give exactly the ids of one encode call.
    np.testing.assert_array_equal(tokenizer.encode_array(text), ids)
    # Byte-level: text never seen in training still round-trips.
    assert tokenizer.decode(tokenizer.encode("Zebra ✓")) == "Zebra ✓"
    tokenizer.save(tmp_path / "bpe.json")
    assert load_tokenizer(tmp_path / "bpe.json").encode(text) == ids


def test_bpe_vocab_too_small():
    pytest.importorskip("tokenizers")
    with pytest.raises(DataError, match="vocab_size=256 leaves no room"):
        build_tokenizer("bpe", TEXT, vocab_size=256)


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_save_load_round_trip(kind, tmp_path):
    if kind == "bpe":
        pytest.importorskip("tokenizers")
    tokenizer = build_tokenizer(kind, TEXT * 5, vocab_size=280 if kind == "bpe" else None)
    path = tmp_path / f"{kind}.json"
    tokenizer.save(path)
    loaded = load_tokenizer(path)
    assert (loaded.kind, loaded.vocab_size) == (kind, tokenizer.vocab_size)
    assert loaded.encode(TEXT) == tokenizer.encode(TEXT)
    assert tokenizer_from_dict(json.loads(json.dumps(tokenizer.to_dict()))).to_dict() == (tokenizer.to_dict())


def test_unknown_kind():
    with pytest.raises(DataError, match="unknown tokenizer kind 'word'; choose one of char, byte"):
        build_tokenizer("word", TEXT)
    with pytest.raises(DataError, match="unknown tokenizer kind 'word'"):
        tokenizer_from_dict({"kind": "word"})


def test_vocab_size_that_cannot_apply():
    with pytest.raises(DataError, match="vocab_size=1000 does not fit the byte tokenizer"):
        build_tokenizer("byte", TEXT, vocab_size=1000)


def test_load_missing_or_corrupt(tmp_path):
    with pytest.raises(DataError, match="tok.json' does not exist"):
        load_tokenizer(tmp_path / "tok.json")
    (tmp_path / "bad.json").write_text('{"kind": "ch', encoding="utf-8")
    with pytest.raises(DataError, match="bad.json' is not valid JSON"):
        load_tokenizer(tmp_path / "bad.json")
    with pytest.raises(DataError, match="lacks the key 'chars'"):
        tokenizer_from_dict({"kind": "char"})
