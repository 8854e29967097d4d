"""The near-tie check that greedy comparisons across code paths use (tests/conftest.py)."""

import pytest
import torch

from seqlab.models import build_model
from seqlab.models.generation import generate


def test_a_changed_token_that_was_no_tie_fails_and_an_equal_continuation_passes(assert_same_greedy):
    torch.manual_seed(0)
    model = build_model("gpt", "tiny", vocab_size=23).eval()
    out = generate(model, torch.randint(0, 23, (2, 4)), 8, temperature=0)
    assert_same_greedy(model, out, out.clone())
    wrong = out.clone()
    wrong[1, 6] = (wrong[1, 6] + 1) % 23
    with pytest.raises(AssertionError, match="differ at step 6"):
        assert_same_greedy(model, out, wrong)
