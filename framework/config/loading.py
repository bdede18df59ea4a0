"""YAML files + dotted overrides -> a tree of frozen dataclasses, checked field by field.

`from_dict(cls, data)` builds a dataclass from plain data (what yaml.safe_load returns): nested
dataclasses, lists/tuples of them, dicts, Optional, `Literal` choices and plain scalars. Unknown keys,
wrong types and values outside a Literal raise ValueError naming the full dotted path, the expected
type and the fields (or choices) that exist, so a typo in a config file fails before any process group
starts. A dataclass may define a classmethod `expand_config(raw) -> raw` that rewrites its mapping first
(LossConfig expands `preset: name` into the preset's fields). `check_choices(obj)` applies the Literal
check to an instance built in code, so __post_init__ keeps one list of choices: the type.

Overrides use dotted paths with YAML values: `stages.warmup.optim.lr=2e-5` (a list element by its `name`
or its index), `checkpoint.keep_last=3`, `stages.0.data.sources=[ddtp]`.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def read_yaml(path: str | Path) -> dict:
    """The mapping at the top of a YAML file, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist; pass the path of a YAML run config "
                         "(examples in configs/)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must be a mapping of config sections, got {type(data).__name__}")
    return data


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Apply `dotted.path=value` overrides (values parsed as YAML) to a nested dict/list, in order."""
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise ValueError(f"override {override!r}: write it as dotted.key=value, e.g. stages.warmup.steps=100")
        parts = key.split(".")
        node: Any = data
        for depth, part in enumerate(parts[:-1]):
            node = _child(node, part, ".".join(parts[:depth + 1]), create=True)
        _set(node, parts[-1], yaml.safe_load(raw) if raw.strip() else None, key)
    return data


def _child(node: Any, part: str, path: str, create: bool) -> Any:
    if isinstance(node, list):
        return node[_list_index(node, part, path)]
    if not isinstance(node, dict):
        raise ValueError(f"override {path}: {path.rsplit('.', 1)[0]} is a value, not a section")
    if part not in node and create:
        node[part] = {}
    return node[part]


def _list_index(items: list, part: str, path: str) -> int:
    if part.lstrip("-").isdigit():
        index = int(part)
        if -len(items) <= index < len(items):
            return index
        raise ValueError(f"override {path}: index {index} is out of range (the list has {len(items)} items)")
    names = [item.get("name") if isinstance(item, dict) else None for item in items]
    if part in names:
        return names.index(part)
    raise ValueError(f"override {path}: no list item named {part!r}; names are {names} (or use an index)")


def _set(node: Any, part: str, value: Any, path: str) -> None:
    if isinstance(node, list):
        node[_list_index(node, part, path)] = value
    elif isinstance(node, dict):
        node[part] = value
    else:
        raise ValueError(f"override {path}: the parent is a value, not a section")


def from_dict(cls: type[T], data: Any, path: str = "") -> T:
    """Build dataclass `cls` from a mapping, converting nested fields; ValueError names the bad path."""
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ValueError(f"{path or cls.__name__}: expected a mapping of {cls.__name__} fields, "
                         f"got {type(data).__name__} {data!r}")
    expand = getattr(cls, "expand_config", None)
    if expand is not None:
        try:
            data = expand(dict(data))
        except ValueError as err:
            raise ValueError(f"{path}: {err}" if path else str(err)) from err
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - known)
    if unknown:
        where = path or cls.__name__
        raise ValueError(f"{where}: unknown field(s) {unknown}; {cls.__name__} has {sorted(known)}")
    kwargs = {name: convert(hints[name], value, _join(path, name)) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ValueError(f"{path or cls.__name__}: {err}") from err
    except ValueError as err:
        raise ValueError(f"{path}: {err}" if path else str(err)) from err


def convert(hint: Any, value: Any, path: str) -> Any:
    """`value` as type `hint` (dataclass, Optional/Union, list, tuple, dict, scalar)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin is typing.Literal:
        return _choice(args, value, path)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return convert(arg, value, path)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(f"{path}: {value!r} matches none of {_name(hint)} ({'; '.join(errors)})")
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, path)
    if origin in (list, tuple, Sequence):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{path}: expected a list ({_name(hint)}), got {value!r}")
        item = args[0] if args else Any
        items = [convert(item, v, f"{path}.{i}") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ValueError(f"{path}: expected a mapping ({_name(hint)}), got {value!r}")
        key_t, val_t = args or (Any, Any)
        return {convert(key_t, k, f"{path}.{k}"): convert(val_t, v, f"{path}.{k}") for k, v in value.items()}
    return _scalar(hint, value, path)


def _choice(choices: tuple, value: Any, path: str) -> Any:
    # By type too: True == 1 and 1.0 == 1 in Python, yet neither is the choice 1.
    if not any(value == c and type(value) is type(c) for c in choices):
        raise ValueError(f"{path}={value!r} is not one of {list(choices)}; use one of them")
    return value


def check_choices(obj: Any, prefix: str = "") -> None:
    """ValueError for a field of dataclass `obj` outside its Literal type (direct construction bypasses
    from_dict); `prefix` names the section in the message, e.g. 'engine'."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        hint = hints[f.name]
        args = typing.get_args(hint)
        optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args
        literal = next((a for a in args if typing.get_origin(a) is typing.Literal), None) if optional else hint
        value = getattr(obj, f.name)
        if typing.get_origin(literal) is typing.Literal and not (optional and value is None):
            _choice(typing.get_args(literal), value, _join(prefix or type(obj).__name__, f.name))


def _scalar(hint: Any, value: Any, path: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():  # JSON object keys are strings
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:  # YAML 1.1 reads 2e-5 (no dot) as a string
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is type(None):
        if value is None:
            return None
    else:
        return value
    raise ValueError(f"{path}: expected {_name(hint)}, got {value!r}")


def to_dict(obj: Any) -> Any:
    """Plain data (dicts, lists, scalars) of a dataclass tree, for YAML/JSON and MLflow params."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{'a.b.c': value} of a nested dict/list (list items by name when they have one)."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flatten(value, _join(prefix, str(key))))
    elif isinstance(data, list) and data and all(isinstance(v, dict) for v in data):
        for i, value in enumerate(data):
            out.update(flatten(value, _join(prefix, str(value.get("name", i)))))
    else:
        out[prefix] = data
    return out


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
