"""Tokenizers: characters, bytes (UTF-8 text or a file's raw bytes), and byte-level BPE trained locally.

Every tokenizer has `encode(text) -> list[int]`, `decode(ids) -> str`, `vocab_size`, `kind`,
`to_dict()` (JSON-serializable, rebuilds it exactly through `tokenizer_from_dict`) and
`save(path)` (read back with `load_tokenizer`). `encode_array(text)` is the fast path used on whole
corpora and returns a numpy array of `ID_DTYPE` (int32 fits any vocabulary at half the memory of
int64; convert batches with `.long()`).

The char tokenizer follows nanoGPT's shakespeare_char: the sorted set of characters of the
training text. BPE is the GPT-2 byte-level scheme from the Hugging Face `tokenizers` library
(an optional extra, imported only when used), so it encodes any text without unknown tokens.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from seqlab.errors import DataError

ID_DTYPE = np.int32
DEFAULT_BPE_VOCAB_SIZE = 1024


class Tokenizer:
    """What every tokenizer offers; subclasses define encode, decode, vocab_size and to_dict."""

    kind: str
    vocab_size: int

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def to_dict(self) -> dict:
        raise NotImplementedError

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self.encode(text), dtype=ID_DTYPE)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False), encoding="utf-8")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


class CharTokenizer(Tokenizer):
    """One id per character of a fixed alphabet (ids follow the sorted order of `chars`).

    A character outside the alphabet is an error, unless `unknown` names a character (added to
    the alphabet if needed) that stands in for every such character.
    """

    kind = "char"

    def __init__(self, chars: str, unknown: str | None = None):
        if unknown is not None and len(unknown) != 1:
            raise DataError(f"unknown={unknown!r} must be a single character, e.g. '?'")
        alphabet = set(chars) | ({unknown} if unknown else set())
        if not alphabet:
            raise DataError("a char tokenizer needs at least one character; build it from text")
        self.chars = "".join(sorted(alphabet))
        self.unknown = unknown
        self.vocab_size = len(self.chars)
        codes = np.array([ord(char) for char in self.chars])
        # Code point -> id lookup table (-1 = not in the alphabet): encodes 5M chars in ~0.1 s.
        self._table = np.full(codes.max() + 1, -1, dtype=ID_DTYPE)
        self._table[codes] = np.arange(self.vocab_size, dtype=ID_DTYPE)

    @classmethod
    def from_text(cls, text: str, unknown: str | None = None) -> CharTokenizer:
        if not text:
            raise DataError("cannot build a char tokenizer from empty text; pass the corpus text")
        return cls("".join(set(text)), unknown=unknown)

    def encode_array(self, text: str) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        known = codes < len(self._table)
        ids = np.full(len(codes), -1, dtype=ID_DTYPE)
        ids[known] = self._table[codes[known]]
        missing = ids < 0
        if missing.any():
            if self.unknown is None:
                chars = sorted({chr(code) for code in codes[missing]})
                shown = ", ".join(repr(char) for char in chars[:10])
                raise DataError(
                    f"{missing.sum()} characters are not in the char tokenizer's vocabulary "
                    f"({len(chars)} distinct: {shown}{', ...' if len(chars) > 10 else ''}); "
                    "build the tokenizer from text that contains them, give it an unknown "
                    "character (CharTokenizer(..., unknown='?')), or use the byte tokenizer"
                )
            ids[missing] = self._table[ord(self.unknown)]
        return ids

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def decode(self, ids: Sequence[int]) -> str:
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise DataError(
                f"token ids {bad[:5]} are outside the char vocabulary (size {self.vocab_size}); "
                "decode with the tokenizer the ids came from"
            )
        return "".join([self.chars[i] for i in ids])

    def to_dict(self) -> dict:
        return {"kind": self.kind, "chars": self.chars, "unknown": self.unknown}


class ByteTokenizer(Tokenizer):
    """Bytes as ids: 256 ids, nothing is ever unknown.

    Text is encoded as UTF-8; raw bytes (a corpus from `load_corpus_bytes`, binary included)
    are taken as they are.
    """

    kind = "byte"
    vocab_size = 256

    def encode_array(self, text: str | bytes) -> np.ndarray:
        data = text if isinstance(text, bytes) else text.encode("utf-8")
        return np.frombuffer(data, dtype=np.uint8).astype(ID_DTYPE)

    def encode(self, text: str | bytes) -> list[int]:
        return list(text if isinstance(text, bytes) else text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        # A model can emit a cut multi-byte character; "replace" shows it instead of failing.
        try:
            return bytes(ids).decode("utf-8", errors="replace")
        except ValueError:
            raise DataError(
                "byte token ids must lie in 0..255; decode with the tokenizer the ids came from"
            ) from None

    def to_dict(self) -> dict:
        return {"kind": self.kind}


def _import_tokenizers():
    try:
        import tokenizers
    except ImportError as error:
        raise DataError(
            "the BPE tokenizer needs the Hugging Face 'tokenizers' library: run "
            "`pip install 'seqlab[bpe]'`, or use the char or byte tokenizer"
        ) from error
    return tokenizers


# Cutting text after a newline that follows and precedes non-space characters never changes
# GPT-2 byte-level pre-tokens, so encoding pieces in a batch gives exactly the ids of one call.
_SAFE_CUT = re.compile(r"(?<=\S\n)(?=\S)")
_LINES_PER_CHUNK = 1024


class BPETokenizer(Tokenizer):
    """Byte-level BPE (GPT-2 scheme) wrapping a `tokenizers.Tokenizer`."""

    kind = "bpe"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @classmethod
    def train(cls, text: str, vocab_size: int = DEFAULT_BPE_VOCAB_SIZE) -> BPETokenizer:
        """Learn merges on `text` until the vocabulary holds `vocab_size` tokens (fewer if the
        text runs out of pairs to merge). The 256 byte tokens always come first."""
        tk = _import_tokenizers()
        if vocab_size <= 256:
            raise DataError(
                f"BPE vocab_size={vocab_size} leaves no room for merges beyond the 256 byte "
                "tokens; use a vocab_size above 256 (e.g. 1024) or the byte tokenizer"
            )
        if not text:
            raise DataError("cannot train a BPE tokenizer on empty text; pass the corpus text")
        tokenizer = tk.Tokenizer(tk.models.BPE())
        tokenizer.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = tk.decoders.ByteLevel()
        trainer = tk.trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(text.splitlines(keepends=True), trainer)
        return cls(tokenizer)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_array(self, text: str) -> np.ndarray:
        pieces = _SAFE_CUT.split(text)
        chunks = ["".join(pieces[i : i + _LINES_PER_CHUNK]) for i in range(0, len(pieces), _LINES_PER_CHUNK)]
        encodings = self.tokenizer.encode_batch(chunks, add_special_tokens=False)
        return np.concatenate([np.asarray(encoding.ids, dtype=ID_DTYPE) for encoding in encodings])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "tokenizer_json": self.tokenizer.to_str()}

    @classmethod
    def from_json(cls, tokenizer_json: str) -> BPETokenizer:
        tk = _import_tokenizers()
        try:
            return cls(tk.Tokenizer.from_str(tokenizer_json))
        except Exception as error:
            raise DataError(
                f"the saved BPE tokenizer is corrupt ({error}); train and save it again"
            ) from None


TOKENIZER_KINDS = ("char", "byte", "bpe")


def _unknown_kind(kind: str) -> DataError:
    return DataError(f"unknown tokenizer kind {kind!r}; choose one of {', '.join(TOKENIZER_KINDS)}")


def raw_bytes_error(kind: str) -> DataError:
    return DataError(
        f"the corpus is raw bytes, but only the byte tokenizer reads raw bytes, not {kind}; "
        "load it as text with load_corpus(source, encoding=...), or use the byte tokenizer"
    )


def build_tokenizer(kind: str, text: str | bytes, vocab_size: int | None = None) -> Tokenizer:
    """A tokenizer of `kind` ("char", "byte" or "bpe") fitted to `text`.

    vocab_size is the BPE target (default DEFAULT_BPE_VOCAB_SIZE); char and byte vocabularies are
    fixed by the text and by UTF-8, so a vocab_size that disagrees with them is an error. Raw
    bytes (from `load_corpus_bytes`) are only for the byte tokenizer.
    """
    if isinstance(text, bytes) and kind != "byte":
        raise raw_bytes_error(kind) if kind in TOKENIZER_KINDS else _unknown_kind(kind)
    if kind == "bpe":
        return BPETokenizer.train(text, vocab_size or DEFAULT_BPE_VOCAB_SIZE)
    if kind == "char":
        tokenizer = CharTokenizer.from_text(text)
    elif kind == "byte":
        tokenizer = ByteTokenizer()
    else:
        raise _unknown_kind(kind)
    if vocab_size is not None and vocab_size != tokenizer.vocab_size:
        raise DataError(
            f"vocab_size={vocab_size} does not fit the {kind} tokenizer, whose vocabulary is "
            f"{tokenizer.vocab_size} (set by the {'text' if kind == 'char' else 'UTF-8 bytes'}); "
            "leave vocab_size unset, or use the bpe tokenizer to choose a size"
        )
    return tokenizer


def tokenizer_from_dict(data: dict) -> Tokenizer:
    """Rebuild a tokenizer from its `to_dict()`."""
    kind = data.get("kind") if isinstance(data, dict) else None
    try:
        if kind == "char":
            return CharTokenizer(data["chars"], unknown=data.get("unknown"))
        if kind == "byte":
            return ByteTokenizer()
        if kind == "bpe":
            return BPETokenizer.from_json(data["tokenizer_json"])
    except KeyError as error:
        raise DataError(
            f"the {kind} tokenizer description lacks the key {error}; recreate it with to_dict()"
        ) from None
    raise _unknown_kind(kind)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Read a tokenizer written by `save(path)`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"tokenizer file {str(path)!r} does not exist; pass the path written by "
            "tokenizer.save(), or build a new tokenizer"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(
            f"tokenizer file {str(path)!r} is not valid JSON ({error}); it may be truncated: "
            "save the tokenizer again"
        ) from None
    return tokenizer_from_dict(data)
