"""The registry's presets: every model's presets share width and depth with its baseline's.

(Forward, backward and an optimizer step of every registered model are in test_contract.py.)"""

import pytest

from seqlab.models import MODELS


@pytest.mark.parametrize("name", list(MODELS))
def test_presets_share_width_and_depth_with_baseline(name):
    # Comparisons against the baseline are at equal size: same width and depth per preset. The
    # baseline of encoder-decoders is t5; of every other model, gpt.
    base = MODELS["t5" if MODELS[name].task == "seq2seq" else "gpt"].presets
    for preset, values in MODELS[name].presets.items():
        if preset in base:
            for key in ("dim", "num_layers", "max_seq_len"):
                if key in values:
                    assert values[key] == base[preset][key], (name, preset, key)
