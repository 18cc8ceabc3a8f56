"""Turn untrusted JSON-ish mappings into validated parameter dataclasses.

A pipeline declares its parameters as a dataclass whose `__post_init__` raises `ValueError` naming
the bad value. `parse_params` checks names and types first, so every failure becomes an
`InvalidParams` that names the field: the HTTP layer answers 422, the WebSocket layer a typed error.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from streamserve.core.errors import InvalidParams

P = TypeVar("P")


def _coerce(field: str, value: Any, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise InvalidParams(field, f"{value!r} is not one of {list(allowed)}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(field, value, arg)
            except InvalidParams as exc:
                errors.append(str(exc))
        raise InvalidParams(field, f"{value!r} does not fit {annotation}")
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise InvalidParams(field, f"expected a list, got {type(value).__name__} {value!r}")
        (inner, *_) = typing.get_args(annotation) or (Any,)
        items = [_coerce(f"{field}[{i}]", v, inner) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if annotation is bool:
        if not isinstance(value, bool):
            raise InvalidParams(field, f"expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise InvalidParams(field, f"expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidParams(field, f"expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise InvalidParams(field, f"expected a string, got {value!r}")
        return value
    return value


def parse_params(cls: type[P], raw: Mapping[str, Any] | None, base: P | None = None) -> P:
    """Build `cls` from `raw`, starting from `base` (for partial live updates) or the defaults.

    Unknown names, wrong types and values the dataclass rejects all raise `InvalidParams`.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    raw = dict(raw or {})
    if not isinstance(raw, dict):
        raise InvalidParams("params", f"expected an object, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise InvalidParams(unknown[0], f"unknown parameter; known: {', '.join(sorted(fields))}")
    values = {name: _coerce(name, value, hints[name]) for name, value in raw.items()}
    try:
        if base is not None:
            return dataclasses.replace(base, **values)  # type: ignore[type-var]
        return cls(**values)
    except InvalidParams:
        raise
    except (ValueError, TypeError) as exc:
        # __post_init__ names the bad value; find which field it is about if it says so.
        message = str(exc)
        field = next((name for name in values if message.startswith(name)), next(iter(values), "params"))
        raise InvalidParams(field, message) from exc


def _type_schema(ann: Any) -> dict[str, Any]:
    origin = typing.get_origin(ann)
    if origin is typing.Literal:
        return {"type": "enum", "choices": list(typing.get_args(ann))}
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        inner = _type_schema(args[0]) if len(args) == 1 else {"type": "any"}
        return {**inner, "nullable": True} if len(args) < len(typing.get_args(ann)) else inner
    if origin in (list, tuple):
        (item, *_) = typing.get_args(ann) or (Any,)
        return {"type": "list", "items": _type_schema(item)["type"]}
    names = {bool: "bool", int: "int", float: "float", str: "str"}
    return {"type": names.get(ann, getattr(ann, "__name__", str(ann)))}


def params_schema(cls: type) -> dict[str, Any]:
    """A small JSON description of a params dataclass, for the demo page and `/v1/pipelines`.

    Each field gives `type` (bool, int, float, str, enum with `choices`, list with `items`),
    `nullable` when None is allowed, `default`, and whatever the field's `metadata` adds
    (`min`, `max`, `step`, `description`).
    """
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        entry = _type_schema(hints[f.name])
        if f.default is not dataclasses.MISSING:
            entry["default"] = list(f.default) if isinstance(f.default, tuple) else f.default
        entry.update(f.metadata)
        out[f.name] = entry
    return out
