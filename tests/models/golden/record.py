"""Record golden outputs of every registered model, to pin numerics across refactors.

Run once at a commit whose numerics are the reference (`python tests/models/golden/record.py`).
Each case stores, in one safetensors file: the model's weights as that commit names them
(`w.<key>`), the fixed input, the logits, the aux losses and metrics (`aux.<name>`,
`metric.<name>`) and a greedy continuation (`greedy`). The config is in the file's metadata.
tests/models/test_golden.py loads the weights into today's model (mapping renamed keys) and
asserts the same outputs to fp32 tolerance.
"""

import json
import subprocess
from pathlib import Path

import torch
from safetensors.torch import save_file

from seqlab.models import build_model
from seqlab.models.generation import generate

HERE = Path(__file__).parent
VOCAB = 65

# name -> (model, overrides): the tiny preset plus options that take other code paths.
CASES = {
    "gpt": ("gpt", {}),
    "gpt_swiglu_rms_window": ("gpt", dict(mlp="swiglu", norm="rmsnorm", window=5, bias=True)),
    "leap": ("leap", {}),
    "leap_rotary_rescale": ("leap", dict(position="rotary", rescale=10.0, num_heads=2)),
    "leap_decay_windows": ("leap", dict(position="decay", window_sizes=[4, 8])),
    "fastformer": ("fastformer", {}),
    "lfm": ("lfm", {}),
    "lfm_topk_token": ("lfm", dict(top_k=2, gate="token", load_balance_coef=0.01, z_loss_coef=0.001)),
    "lfm_series": ("lfm_series", dict(num_features=3)),
}


def record(case: str, name: str, overrides: dict) -> None:
    torch.manual_seed(0)
    kwargs = dict(overrides) if name == "lfm_series" else {"vocab_size": VOCAB, **overrides}
    model = build_model(name, "tiny", **kwargs).eval()
    gen = torch.Generator().manual_seed(1)
    if name == "lfm_series":
        x = torch.randn(2, 24, 3, generator=gen)
        out = model(x)
    else:
        x = torch.randint(0, VOCAB, (2, 24), generator=gen)
        out = model(x)
    tensors = {f"w.{k}": v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    tensors["input"] = x
    tensors["logits"] = out.logits.detach().contiguous()
    tensors.update({f"aux.{k}": v.detach().reshape(()) for k, v in out.aux_losses.items()})
    tensors.update({f"metric.{k}": torch.as_tensor(v).detach().reshape(()) for k, v in out.metrics.items()})
    if name != "lfm_series":
        tensors["greedy"] = generate(model, x[:, :6], 10, temperature=0)
    # Tied weights are one tensor under two names; store each name as its own copy.
    tensors = {k: v.clone() for k, v in tensors.items()}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
    meta = {"model": name, "overrides": json.dumps(kwargs), "commit": commit.strip()}
    save_file(tensors, str(HERE / f"{case}.safetensors"), metadata=meta)


if __name__ == "__main__":
    for case, (name, overrides) in CASES.items():
        record(case, name, overrides)
        print("recorded", case)
