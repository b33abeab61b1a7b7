"""JSON values on the wire: checks and conversions between Python and google.protobuf.Value.

State holds JSON: dicts with string keys, lists, strings, numbers, booleans and None.
Numbers travel as doubles, so every number is limited to +/-2**53 (a double holds each integer
up to there exactly, and every double beyond it is an integer it may not hold exactly: one rule
whether the number was sent as an int or a float) and a number with no fractional part comes back
as an ``int``. Anything else (bytes, sets,
datetimes, NaN, infinities, non-string keys) is refused with a message naming the path.
"""

from __future__ import annotations

import json
import math
from typing import Any

from google.protobuf import struct_pb2

from sessionkit.errors import FieldViolation, InvalidArgument

JsonValue = None | bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"]
MAX_SAFE_INT = 2**53
MAX_DEPTH = 64


def check_json(value: Any, field: str = "value") -> JsonValue:
    """``value`` as plain JSON (tuples become lists, integral floats ints), or InvalidArgument."""
    return _check(value, field, 0)


def _check(value: Any, path: str, depth: int) -> JsonValue:
    if depth > MAX_DEPTH:
        raise _invalid(path, f"nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INT:
            raise _invalid(path, f"integer {value} is outside +/-2**53 and cannot be stored exactly")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _invalid(path, f"{value} is not a JSON number")
        if abs(value) > MAX_SAFE_INT:
            raise _invalid(path, f"number {value:g} is outside +/-2**53 and cannot be stored exactly")
        return _number(value)
    if isinstance(value, dict):
        out: dict[str, JsonValue] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _invalid(path, f"key {key!r} is a {type(key).__name__}; JSON object keys are strings")
            out[key] = _check(item, f"{path}.{key}", depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [_check(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]
    raise _invalid(
        path, f"a {type(value).__name__} is not a JSON value (use dict, list, str, number, bool, None)"
    )


def _invalid(path: str, description: str) -> InvalidArgument:
    return InvalidArgument(
        f"{path} is not valid JSON: {description}", violations=[FieldViolation(path, description)]
    )


def _number(value: float) -> int | float:
    if value.is_integer() and abs(value) <= MAX_SAFE_INT:
        return int(value)
    return value


def to_value(value: JsonValue) -> struct_pb2.Value:
    out = struct_pb2.Value()
    _fill(out, value)
    return out


def _fill(out: struct_pb2.Value, value: JsonValue) -> None:
    if value is None:
        out.null_value = struct_pb2.NULL_VALUE
    elif isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, (int, float)):
        out.number_value = float(value)
    elif isinstance(value, str):
        out.string_value = value
    elif isinstance(value, dict):
        out.struct_value.Clear()
        for key, item in value.items():
            _fill(out.struct_value.fields[key], item)
    else:
        out.list_value.Clear()
        for item in value:
            _fill(out.list_value.values.add(), item)


def to_struct(value: dict[str, JsonValue]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    for key, item in value.items():
        _fill(out.fields[key], item)
    return out


def to_list_value(values: list[JsonValue]) -> struct_pb2.ListValue:
    out = struct_pb2.ListValue()
    for item in values:
        _fill(out.values.add(), item)
    return out


def from_value(value: struct_pb2.Value) -> JsonValue:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return _number(value.number_value)
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return from_struct(value.struct_value)
    if kind == "list_value":
        return [from_value(item) for item in value.list_value.values]
    return None


def from_struct(value: struct_pb2.Struct) -> dict[str, JsonValue]:
    return {key: from_value(item) for key, item in value.fields.items()}


def from_list_value(value: struct_pb2.ListValue) -> list[JsonValue]:
    return [from_value(item) for item in value.values]


def dumps(value: JsonValue) -> str:
    """Compact, deterministic JSON text (what the stores keep and what size limits count)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def loads(text: str) -> Any:
    return json.loads(text)
