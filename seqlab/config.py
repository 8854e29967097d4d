"""Typed configuration: dataclasses built from dicts, JSON/YAML files and dotted overrides.

Unknown keys and wrong types raise ConfigError naming the key (with the closest valid key
suggested). Depends on nothing else in seqlab but errors, so every layer may use it.
"""

import dataclasses
import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any

from seqlab.errors import ConfigError


def _suggest(key: str, choices) -> str:
    close = difflib.get_close_matches(key, list(choices), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def unknown_key_error(key: str, choices, where: str) -> ConfigError:
    return ConfigError(
        f"unknown key {key!r} in {where}.{_suggest(key, choices)} Valid keys: {', '.join(sorted(choices))}"
    )


def parse_scalar(text: str) -> Any:
    """Parse a command-line value: JSON/YAML scalars (1, 1e-3, true, null, [1, 2]) or a bare string."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check `value` against a dataclass field annotation; convert where lossless (int -> float)."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key)
            except ConfigError:
                pass  # try the next member of the union; the error below names them all
        raise ConfigError(f"{key}: expected {_type_name(annotation)}, got {value!r} ({type(value).__name__})")
    if origin in (list, tuple):
        if isinstance(value, (list, tuple)):
            (item_type, *_) = typing.get_args(annotation) or (Any,)
            return [coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
        raise ConfigError(f"{key}: expected a list, got {value!r} ({type(value).__name__})")
    if origin is dict or annotation is dict:
        if isinstance(value, dict):
            return dict(value)
        raise ConfigError(f"{key}: expected a mapping, got {value!r} ({type(value).__name__})")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif isinstance(annotation, type) and isinstance(value, annotation):
        return value
    raise ConfigError(f"{key}: expected {_type_name(annotation)}, got {value!r} ({type(value).__name__})")


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def from_dict(cls, data: dict[str, Any], where: str | None = None):
    """Build dataclass `cls` from `data`, recursing into nested dataclass fields."""
    where = where or cls.__name__
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise unknown_key_error(key, fields, where)
        ann = hints[key]
        if dataclasses.is_dataclass(ann):
            kwargs[key] = from_dict(ann, value, f"{where}.{key}")
        else:
            kwargs[key] = coerce(value, ann, f"{where}.{key}")
    return cls(**kwargs)


def to_dict(obj) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def merge(obj, updates: dict[str, Any], where: str | None = None):
    """A copy of dataclass `obj` with (possibly nested) `updates` applied and type-checked."""
    data = to_dict(obj)
    _deep_update(data, updates)
    return from_dict(type(obj), data, where)


def _deep_update(base: dict, updates: dict) -> None:
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and base.get(key):
            _deep_update(base[key], value)
        else:
            base[key] = value


def dotted_to_nested(pairs: list[str]) -> dict[str, Any]:
    """["train.lr=3e-4", "model.dim=64"] -> {"train": {"lr": 3e-4}, "model": {"dim": 64}}."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} must look like section.key=value, e.g. train.lr=3e-4")
        key, value = pair.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = parse_scalar(value)
    return out


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or YAML config file into a dict."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError(
            f"config file {str(path)!r} is not valid {path.suffix.lstrip('.') or 'YAML'}: {e}"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at its top level")
    return data


def check_fields(
    cfg,
    *,
    positive_ints: tuple[str, ...] = (),
    above: dict[str, float] | None = None,
    unit: tuple[str, ...] = (),
    choices: dict[str, tuple] | None = None,
    where: str = "model",
) -> None:
    """Validate config fields, raising ConfigError naming `where.key`, the value and the range.

    positive_ints: ints >= 1. above: {key: bound} floats strictly above bound. unit: floats in
    [0, 1) (dropout-like). choices: {key: allowed values}.
    """
    for key in positive_ints:
        value = getattr(cfg, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{where}.{key} must be an int >= 1, got {value!r}")
    for key, bound in (above or {}).items():
        value = getattr(cfg, key)
        if not value > bound:  # also catches NaN
            raise ConfigError(f"{where}.{key} must be > {bound}, got {value!r}")
    for key in unit:
        value = getattr(cfg, key)
        if not 0 <= value < 1:
            raise ConfigError(f"{where}.{key} must lie in [0, 1), got {value!r}")
    for key, allowed in (choices or {}).items():
        value = getattr(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{where}.{key} must be one of {', '.join(map(str, allowed))}, got {value!r}")
