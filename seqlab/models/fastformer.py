"""Fastformer causal LM: LEAP's repository's legacy model (spec specs/leap.md, "Fastformer").

The same model as `LeapForCausalLM` (embedding, positions, pre-norm blocks, tied head, the
seed's config keywords and window schedule) with the Fastformer additive-attention mixer in
place of MultiheadLeap. Shares LEAP's focus sums, so it trains in parallel and decodes with
O(1) recurrent state per layer. Shapes: input_ids [b, t] -> logits [b, t, v].
"""

from dataclasses import dataclass

from seqlab.errors import ConfigError
from seqlab.layers.fastformer import FastformerAttention
from seqlab.models.leap import PRESETS as LEAP_PRESETS
from seqlab.models.leap import LeapConfig, LeapForCausalLM


@dataclass(init=False)
class FastformerConfig(LeapConfig):
    """LeapConfig with Fastformer's pooling rescale c_r (default 10; None is read as 10)."""

    def _validate(self) -> None:
        if self.rescale is None:
            self.rescale = 10.0
        if self.position == "rotary":
            raise ConfigError("fastformer supports position learned | decay | none, not rotary")
        super()._validate()


PRESETS = {name: dict(values) for name, values in LEAP_PRESETS.items()}


class FastformerForCausalLM(LeapForCausalLM):
    mixer = FastformerAttention


__all__ = ["PRESETS", "FastformerConfig", "FastformerForCausalLM"]
