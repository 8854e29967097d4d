"""The package's layers import only to the left: ops -> layers -> models -> tasks/train -> cli.

data, errors and config depend on nothing else in seqlab (config only on errors).
"""

import ast
from pathlib import Path

import seqlab

ROOT = Path(seqlab.__file__).parent
ORDER = ["ops", "layers", "models", "tasks", "train", "bench", "explain", "cli"]
# What each layer may import from seqlab (besides itself and the dependency-free modules).
FREE = {"errors", "config", "data", "__init__"}
ALLOWED = {
    "ops": set(),
    "layers": {"ops"},
    "models": {"ops", "layers"},
    "tasks": {"ops", "layers", "models"},
    "train": {"ops", "layers", "models", "tasks"},
    "bench": {"ops", "layers", "models", "tasks", "train"},
    "explain": {"ops", "layers", "models", "tasks", "train"},
    "cli": {"ops", "layers", "models", "tasks", "train", "bench", "explain"},
    "data": set(),
    "errors": set(),
    "config": set(),
}


def _seqlab_imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "seqlab" and len(parts) > 1:
                yield parts[1], node.lineno


def test_imports_only_point_left():
    violations = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        layer = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        if layer not in ALLOWED:
            continue
        for target, line in _seqlab_imports(path):
            if target == layer:
                continue
            free = (
                FREE
                if layer not in ("data", "errors", "config")
                else ({"errors"} if layer != "errors" else set())
            )
            if target in free or target in ALLOWED[layer]:
                continue
            violations.append(f"{rel}:{line} ({layer}) imports seqlab.{target}")
    assert not violations, "imports that point right:\n" + "\n".join(violations)


def test_every_package_file_has_a_docstring():
    missing = [
        str(p.relative_to(ROOT))
        for p in ROOT.rglob("*.py")
        if ast.get_docstring(ast.parse(p.read_text())) is None
    ]
    assert not missing, f"files without a module docstring: {missing}"
