"""The install requirements in pyproject.toml: the torch the code needs, the extras' packages.

Read from pyproject.toml itself, not from the installed metadata, which an editable install only
refreshes when it is reinstalled.
"""

import importlib.metadata
from pathlib import Path

import pytest
import torch

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
packaging_requirements = pytest.importorskip("packaging.requirements")
packaging_version = pytest.importorskip("packaging.version")
Requirement, Version = packaging_requirements.Requirement, packaging_version.Version

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
EXTRAS = PROJECT["optional-dependencies"]


def requirement(requirements: list[str], name: str) -> Requirement:
    (found,) = [Requirement(r) for r in requirements if Requirement(r).name == name]
    return found


def floor(req: Requirement) -> Version:
    return max(Version(spec.version) for spec in req.specifier if spec.operator == ">=")


def test_torch_floor_is_the_first_release_with_rms_norm():
    # seqlab's norms use nn.RMSNorm, new in torch 2.4 (the README says 2.4 too).
    torch_req = requirement(PROJECT["dependencies"], "torch")
    assert floor(torch_req) == Version("2.4")
    assert hasattr(torch.nn, "RMSNorm")
    # The pin that CI and the README install with must satisfy it.
    pins = [line for line in (ROOT / "constraints.txt").read_text().splitlines() if line.startswith("torch")]
    for pin in pins:
        (spec,) = Requirement(pin).specifier
        assert torch_req.specifier.contains(spec.version), pin


def test_hf_and_dev_extras_bring_what_transformers_trainer_needs():
    for extra in ("hf", "dev"):
        assert {"transformers", "accelerate"} <= {Requirement(r).name for r in EXTRAS[extra]}, extra
    try:
        declared = importlib.metadata.requires("transformers") or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("transformers is not installed: nothing to compare the accelerate floor with")
    # transformers' own floor for accelerate (what Trainer checks at import time).
    wanted = max(floor(Requirement(r.split(";")[0])) for r in declared if Requirement(r).name == "accelerate")
    for extra in ("hf", "dev"):
        assert floor(requirement(EXTRAS[extra], "accelerate")) >= wanted, extra
