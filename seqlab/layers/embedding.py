"""Token-id validation shared by every model with a token embedding."""

import torch

from seqlab.errors import TokenRangeError


def check_token_ids(input_ids: torch.Tensor, vocab_size: int) -> None:
    """Raise a clear error instead of an index error deep inside nn.Embedding."""
    if input_ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TokenRangeError(f"input_ids must be an integer tensor, got dtype {input_ids.dtype}")
    if input_ids.numel() == 0:
        raise TokenRangeError("input_ids is empty: give at least one token")
    lo, hi = (int(v) for v in torch.aminmax(input_ids))  # one pass, one host sync
    if lo < 0 or hi >= vocab_size:
        raise TokenRangeError(
            f"token ids must lie in [0, {vocab_size - 1}] (the model's vocab_size is {vocab_size}), "
            f"got min {lo} and max {hi}. Encode the text with the tokenizer saved with the model, "
            f"or build the model with a larger vocab_size."
        )
