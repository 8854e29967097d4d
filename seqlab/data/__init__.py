"""seqlab.data: corpora, tokenizers and time series.

Depends on nothing else in seqlab but `seqlab.errors`. Typical use:

    text = load_corpus()                     # embedded Shakespeare, or a path, or "hf:..."
    tokenizer = build_tokenizer("char", text)
    train_ids, val_ids = split_ids(encode_corpus(text, tokenizer), val_fraction=0.1)
    data = load_token_source(path, "byte")   # what a tokenizer reads: raw bytes for "byte",
                                             # else text decoded with encoding= (default utf-8)
    values = load_series("sunspots")         # [t, features]: a built-in series or a CSV file
"""

from seqlab.data.corpus import (
    check_encoding,
    default_corpus,
    load_corpus,
    load_corpus_bytes,
    load_token_source,
    play_to_text,
)
from seqlab.data.series import BUILTIN_SERIES, SeriesData, load_series, read_series
from seqlab.data.splits import check_length, encode_corpus, split_ids
from seqlab.data.tokenizer import (
    TOKENIZER_KINDS,
    BPETokenizer,
    ByteTokenizer,
    CharTokenizer,
    Tokenizer,
    build_tokenizer,
    load_tokenizer,
    tokenizer_from_dict,
)

__all__ = [
    "BUILTIN_SERIES",
    "TOKENIZER_KINDS",
    "BPETokenizer",
    "ByteTokenizer",
    "CharTokenizer",
    "SeriesData",
    "Tokenizer",
    "build_tokenizer",
    "check_encoding",
    "check_length",
    "default_corpus",
    "encode_corpus",
    "load_corpus",
    "load_corpus_bytes",
    "load_series",
    "load_token_source",
    "load_tokenizer",
    "play_to_text",
    "read_series",
    "split_ids",
    "tokenizer_from_dict",
]
