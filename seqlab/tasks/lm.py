"""Causal language modeling: next-token prediction on a token stream.

Batches are random windows of block_size + 1 tokens (x = window[:-1], y = window[1:]), drawn
by position from a deterministic train/val split (data.val_fraction, 90/10 by default).
Metrics: loss (nats/token), bits per token (bits per character/byte for char/byte tokenizers)
and perplexity.
"""

import math
from typing import Any

import numpy as np
import torch

from seqlab.data import (
    build_tokenizer,
    check_length,
    encode_corpus,
    load_corpus,
    split_ids,
    tokenizer_from_dict,
)
from seqlab.models.generation import generate


def detach_metrics(out_metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in out_metrics.items()}


class CausalLMTask:
    name = "lm"
    primary_loss_key = "lm_loss"  # the loss without the model's auxiliary terms

    def __init__(self, train_ids: np.ndarray, val_ids: np.ndarray, tokenizer, block_size: int):
        check_length(train_ids, block_size, "train")
        check_length(val_ids, block_size, "validation")
        self.splits = {
            "train": torch.from_numpy(train_ids.astype(np.int64)),
            "val": torch.from_numpy(val_ids.astype(np.int64)),
        }
        self.tokenizer = tokenizer
        self.block_size = block_size

    @classmethod
    def from_source(
        cls,
        source: str | None,
        block_size: int,
        tokenizer: str = "char",
        vocab_size: int | None = None,
        val_fraction: float = 0.1,
        tokenizer_state: dict | None = None,
    ) -> "CausalLMTask":
        """Load text from `source` (None = embedded corpus), tokenize, split by position.

        `tokenizer_state` (saved with a run) reuses a tokenizer instead of building one.
        """
        text = load_corpus(source)
        tok = (
            tokenizer_from_dict(tokenizer_state)
            if tokenizer_state
            else build_tokenizer(tokenizer, text, vocab_size)
        )
        ids = encode_corpus(text, tok)
        train_ids, val_ids = split_ids(ids, val_fraction)
        return cls(train_ids, val_ids, tok, block_size)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def batch(self, split: str, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        data = self.splits[split]
        starts = torch.randint(len(data) - self.block_size, (batch_size,), generator=generator)
        offsets = torch.arange(self.block_size + 1)
        window = data[starts[:, None] + offsets]  # [b, block_size + 1]
        return {"input_ids": window[:, :-1], "targets": window[:, 1:]}

    def loss(self, model, batch):
        out = model(batch["input_ids"], targets=batch["targets"])
        metrics = {"lm_loss": out.loss.detach()}
        metrics.update({k: v.detach() for k, v in out.aux_losses.items()})
        metrics.update(detach_metrics(out.metrics))
        return out.total_loss(), metrics

    def eval_summary(self, mean_loss: float) -> dict[str, float]:
        return {"bits_per_token": mean_loss / math.log(2), "perplexity": math.exp(min(mean_loss, 50.0))}

    def sample(
        self,
        model,
        prompt: str = "\n",
        max_new_tokens: int = 200,
        temperature: float = 0.8,
        top_k: int | None = 50,
        top_p: float | None = None,
        seed: int = 0,
    ) -> str:
        device = next(model.parameters()).device
        ids = torch.tensor([self.tokenizer.encode(prompt) or [0]], device=device)
        gen = torch.Generator(device=device).manual_seed(seed)
        out = generate(model, ids, max_new_tokens, temperature, top_k, top_p, generator=gen)
        return self.tokenizer.decode(out[0].tolist())

    def state_dict(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer.to_dict()}
