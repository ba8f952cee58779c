"""Declaring API fields once: JSON name, documentation and OpenAPI constraints on the dataclass field itself.

Guarantees:
- `prop()` attaches a `FieldInfo` to a dataclass field; both the CRD generator (`rayop.api.crd`) and the decoder
  below read that one declaration, so the published schema and the Python types cannot disagree.
- `decode(cls, data, path)` turns decoded JSON into frozen dataclasses. It checks JSON types, integer ranges, enums,
  patterns, lengths and item counts exactly as the generated schema does, and raises only `DecodeError` naming the
  field path (`spec.workerGroups[1].minWorkers`). Unknown keys are ignored, as the API server prunes them.
- `encode(obj)` is the inverse: it drops unset (`None`) fields and returns plain JSON values.
- Pure: no I/O, no clock, no environment.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, Union

INT32_MAX = 2**31 - 1


class DecodeError(ValueError):
    """A value does not match the declared schema; `path` names the field."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


@dataclass(frozen=True)
class FieldInfo:
    """How one dataclass field appears in JSON and in the OpenAPI schema."""

    json: str
    doc: str
    minimum: float | None = None
    maximum: float | None = None
    enum: tuple[str, ...] | None = None
    pattern: str | None = None
    min_length: int | None = None
    max_length: int | None = None
    max_items: int | None = None
    max_properties: int | None = None
    default: Any = None
    required: bool = False
    int32: bool = True
    format: str | None = None
    # Free-form object kept as given (pod templates, metadata).
    preserve_unknown: bool = False
    # Map values (or the value itself) may be an integer or a string; decoded to str.
    int_or_string: bool = False
    # Value schema constraints for maps and lists.
    item_minimum: int | None = None
    item_max_length: int | None = None
    list_type: str | None = None
    list_map_keys: tuple[str, ...] | None = None
    # CEL rules on this field's own schema: (rule, message).
    rules: tuple[tuple[str, str], ...] = ()


def prop(json: str, doc: str, **kwargs: Any) -> Any:
    """A dataclass field, unset (None) by default, described by a `FieldInfo`."""
    return dataclasses.field(default=None, metadata={"rayop": FieldInfo(json=json, doc=doc, **kwargs)})


def info(f: dataclasses.Field[Any]) -> FieldInfo:
    value = f.metadata.get("rayop")
    if not isinstance(value, FieldInfo):
        raise TypeError(f"field {f.name} has no FieldInfo")
    return value


_HINTS: dict[type, dict[str, Any]] = {}


def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotations of an API dataclass, resolved once per class (`get_type_hints` evaluates every
    string annotation again on each call: it was most of a conversion's time when called per object). Read only."""
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def strip_optional(tp: object) -> object:
    """`X | None` -> X."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


T = TypeVar("T")


def decode(cls: type[T], data: object, path: str) -> T:
    """Decode `data` (a JSON object) into dataclass `cls`; raise `DecodeError` on any mismatch."""
    if not isinstance(data, Mapping):
        raise DecodeError(path, f"expected an object, got {_kind(data)}")
    hints = field_types(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        meta = info(f)
        sub = f"{path}.{meta.json}" if path else meta.json
        if meta.json not in data or data[meta.json] is None:
            if meta.required:
                raise DecodeError(sub, "is required")
            values[f.name] = meta.default
            continue
        values[f.name] = _decode_value(strip_optional(hints[f.name]), meta, data[meta.json], sub)
    return cls(**values)


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "an array"
    return type(value).__name__


def _decode_int(meta: FieldInfo, value: object, path: str, minimum: float | None = None) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DecodeError(path, f"expected an integer, got {_kind(value)}")
    low = meta.minimum if minimum is None else minimum
    if low is not None and value < low:
        raise DecodeError(path, f"must be greater than or equal to {low:g}")
    if meta.maximum is not None and value > meta.maximum:
        raise DecodeError(path, f"must be less than or equal to {meta.maximum:g}")
    if meta.int32 and not -(2**31) <= value <= INT32_MAX:
        raise DecodeError(path, "must fit in a 32-bit integer")
    return value


def _decode_str(meta: FieldInfo, value: object, path: str, max_length: int | None = None) -> str:
    if meta.int_or_string and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise DecodeError(path, f"expected a string, got {_kind(value)}")
    limit = meta.max_length if max_length is None else max_length
    if limit is not None and len(value) > limit:
        raise DecodeError(path, f"must be at most {limit} characters")
    if meta.min_length is not None and len(value) < meta.min_length:
        raise DecodeError(path, f"must be at least {meta.min_length} characters")
    if meta.enum is not None and value not in meta.enum:
        raise DecodeError(path, f"unsupported value {value!r}: must be one of {', '.join(meta.enum)}")
    if meta.pattern is not None and not re.search(meta.pattern, value):
        raise DecodeError(path, f"{value!r} does not match {meta.pattern}")
    return value


# `tp` is a type hint (a class, `tuple[X, ...]`, `Mapping[str, X]`, Any); the result is a value of that type, which
# only the dataclass field it goes into knows, hence Any.
def _decode_value(tp: object, meta: FieldInfo, value: object, path: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is int:
        return _decode_int(meta, value, path)
    if tp is str:
        return _decode_str(meta, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise DecodeError(path, f"expected a boolean, got {_kind(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DecodeError(path, f"expected a number, got {_kind(value)}")
        return float(value)
    if dataclasses.is_dataclass(tp):
        return decode(tp, value, path)  # type: ignore[arg-type]
    if origin is tuple:
        return _decode_tuple(typing.get_args(tp)[0], meta, value, path)
    if origin is Mapping or tp is Any or origin is dict:
        args = typing.get_args(tp)
        return _decode_mapping(args[1] if args else Any, meta, value, path)
    raise TypeError(f"unsupported field type {tp!r} at {path}")


def _decode_tuple(item_tp: object, meta: FieldInfo, value: object, path: str) -> tuple[Any, ...]:
    if not isinstance(value, (list, tuple)):
        raise DecodeError(path, f"expected an array, got {_kind(value)}")
    if meta.max_items is not None and len(value) > meta.max_items:
        raise DecodeError(path, f"must have at most {meta.max_items} items")
    items = []
    for i, item in enumerate(value):
        sub = f"{path}[{i}]"
        if item_tp is str:
            items.append(_decode_str(meta, item, sub, meta.item_max_length))
        else:
            items.append(_decode_value(item_tp, meta, item, sub))
    if meta.list_type == "set" and len(set(items)) != len(items):
        raise DecodeError(path, "must not contain duplicates")
    if meta.list_map_keys:
        seen: set[tuple[Any, ...]] = set()
        for i, item in enumerate(items):
            key = tuple(getattr(item, k) for k in meta.list_map_keys)
            if key in seen:
                raise DecodeError(f"{path}[{i}]", f"duplicate entry {key[0]!r}")
            seen.add(key)
    return tuple(items)


def _decode_mapping(value_tp: object, meta: FieldInfo, value: object, path: str) -> Mapping[Any, Any]:
    """An object; kept as given when its values are untyped (`Mapping[str, Any]`), else decoded value by value."""
    if not isinstance(value, Mapping):
        raise DecodeError(path, f"expected an object, got {_kind(value)}")
    if meta.max_properties is not None and len(value) > meta.max_properties:
        raise DecodeError(path, f"must have at most {meta.max_properties} entries")
    if value_tp is Any:
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise DecodeError(path, f"keys must be strings, got {_kind(key)}")
        sub = f"{path}.{key}"
        if value_tp is int:
            out[key] = _decode_int(meta, item, sub, meta.item_minimum)
        elif value_tp is str:
            out[key] = _decode_str(meta, item, sub, meta.item_max_length)
        else:
            out[key] = _decode_value(value_tp, meta, item, sub)
    return out


def encode(obj: Any) -> Any:
    """Dataclass -> JSON value, dropping unset fields."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if value is None:
                continue
            out[info(f).json] = encode(value)
        return out
    if isinstance(obj, tuple):
        return [encode(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: encode(v) for k, v in obj.items()}
    return obj
