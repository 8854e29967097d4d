"""Causal language modeling: next-token prediction on a token stream.

Built from the run config: data.source read as data.tokenizer needs it (text decoded with
data.encoding, raw bytes for the byte tokenizer), a tokenizer fitted to it or, when a run is
reopened, the saved one (task.json["state"]["tokenizer"]), and a deterministic train/val split
by position (data.val_fraction, 90/10 by default).

Batches are random windows of context + 1 tokens (input_ids = window[:-1], targets =
window[1:], both [b, t]); context = task_options.context, default the model's max_seq_len.
The model must take at least the tokenizer's vocabulary (model_requirements: vocab_size).
Metrics: loss (nats/token), bits per token (bits per character/byte for char/byte
tokenizers) and perplexity. Samples are generated text from a prompt: train.sample_prompt,
or by default "\\n" when the vocabulary has it, else the first training token.
"""

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seqlab.data import (
    build_tokenizer,
    check_length,
    encode_corpus,
    load_token_source,
    split_ids,
    tokenizer_from_dict,
)
from seqlab.errors import CheckpointError, ConfigError, DataError
from seqlab.models.generation import generate
from seqlab.tasks.base import (
    AtLeast,
    Task,
    check_context,
    detach_metrics,
    reject_unknown_sample_options,
    sequence_context,
)

SAMPLE_OPTIONS = ("prompt", "max_new_tokens", "temperature", "top_k", "top_p", "seed")


class CausalLMTask(Task):
    name = "lm"
    primary_loss_key = "lm_loss"  # the loss without the model's auxiliary terms

    @dataclass
    class Options:
        context: int | None = None  # tokens per training example; None = the model's max_seq_len

        def __post_init__(self):
            check_context(self.context)

    def __init__(
        self,
        train_ids: np.ndarray,
        val_ids: np.ndarray,
        tokenizer,
        context: int,
        *,
        sample_prompt: str | None = None,
        sample_tokens: int = 200,
        seed: int = 0,
    ):
        check_length(train_ids, context, "train")
        check_length(val_ids, context, "validation")
        self.splits = {
            "train": torch.from_numpy(train_ids.astype(np.int64)),
            "val": torch.from_numpy(val_ids.astype(np.int64)),
        }
        self.tokenizer = tokenizer
        self.context = context
        self.sample_tokens, self.seed = sample_tokens, seed
        self.prompt_ids = self._default_prompt(sample_prompt)

    def _default_prompt(self, prompt: str | None) -> list[int]:
        """Ids of the configured prompt, checked now (before any training), or the automatic one."""
        if prompt:
            try:
                return self.tokenizer.encode(prompt)
            except DataError as e:
                raise ConfigError(f"train.sample_prompt={prompt!r} is not in the vocabulary: {e}") from None
        try:
            ids = self.tokenizer.encode("\n")
        except DataError:
            ids = []  # a corpus without newlines: start from its first token instead
        return ids or self.splits["train"][:1].tolist()

    @classmethod
    def from_config(cls, cfg, model_config, state: dict[str, Any] | None = None) -> "CausalLMTask":
        options = cls.parse_options(cfg.task_options)
        d = cfg.data
        saved = None
        if state is not None:
            if not isinstance(state.get("tokenizer"), dict):
                raise CheckpointError(
                    "the run's task.json holds no tokenizer for the lm task; the run directory is "
                    "incomplete or was edited: retrain"
                )
            saved = state["tokenizer"]
        source = load_token_source(d.source, saved or d.tokenizer, encoding=d.encoding)
        tokenizer = (
            tokenizer_from_dict(saved) if saved else build_tokenizer(d.tokenizer, source, d.vocab_size)
        )
        train_ids, val_ids = split_ids(encode_corpus(source, tokenizer), d.val_fraction)
        return cls(
            train_ids,
            val_ids,
            tokenizer,
            sequence_context(model_config, options.context),
            sample_prompt=cfg.train.sample_prompt,
            sample_tokens=cfg.train.sample_tokens,
            seed=cfg.train.seed,
        )

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def model_requirements(self) -> dict[str, Any]:
        return {"vocab_size": AtLeast(self.tokenizer.vocab_size)}

    def batch(self, split: str, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        data = self.splits[split]
        starts = torch.randint(len(data) - self.context, (batch_size,), generator=generator)
        offsets = torch.arange(self.context + 1)
        window = data[starts[:, None] + offsets]  # [b, context + 1]
        return {"input_ids": window[:, :-1], "targets": window[:, 1:]}

    def loss(self, model, batch):
        out = model(batch["input_ids"], targets=batch["targets"])
        metrics = {"lm_loss": out.loss.detach()}
        metrics.update({k: v.detach() for k, v in out.aux_losses.items()})
        metrics.update(detach_metrics(out.metrics))
        return out.total_loss(), metrics

    def count_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["input_ids"].numel()

    def eval_summary(self, mean_loss: float) -> dict[str, float]:
        return {"bits_per_token": mean_loss / math.log(2), "perplexity": math.exp(min(mean_loss, 50.0))}

    def decode_metrics(self, model, split: str, limit: int) -> dict[str, float]:
        return {}  # the loss says it all (no decoding metric)

    def sample(self, model, run_dir: Path | None = None, **options) -> str:
        """Text generated after a prompt. Options: prompt (default: the task's, see the module
        docstring), max_new_tokens (train.sample_tokens), temperature (0.8; 0 = greedy), top_k
        (50; null = none), top_p (null), seed (train.seed). Writes no files."""
        reject_unknown_sample_options(self.name, options, SAMPLE_OPTIONS)
        max_new_tokens = options.get("max_new_tokens", self.sample_tokens)
        top_k = options.get("top_k", 50)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ConfigError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ConfigError(f"top_k must be an int >= 1, or null for no top-k filtering; got {top_k!r}")
        prompt = options.get("prompt")
        if prompt:
            try:
                prompt_ids = self.tokenizer.encode(prompt)
            except DataError as e:
                raise ConfigError(f"the prompt {prompt!r} is not in the vocabulary: {e}") from None
        else:
            prompt_ids = self.prompt_ids
        device = next(model.parameters()).device
        ids = torch.tensor([prompt_ids], device=device)
        gen = torch.Generator(device=device).manual_seed(options.get("seed", self.seed))
        out = generate(
            model,
            ids,
            max_new_tokens,
            options.get("temperature", 0.8),
            top_k,
            options.get("top_p"),
            generator=gen,
        )
        return self.tokenizer.decode(out[0].tolist())

    def state_dict(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer.to_dict()}


__all__ = ["CausalLMTask", "detach_metrics"]
