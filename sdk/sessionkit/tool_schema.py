"""Client-side tools: a Python callable's JSON Schema (from its signature and docstring), and running
it for the model (sync functions in a worker thread, so the event loop keeps serving the stream)."""

from __future__ import annotations

import asyncio
import enum
import inspect
import json
import re
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, Union, get_args, get_origin

from sessionkit.errors import FieldViolation, InvalidArgument

_SIMPLE: dict[Any, dict[str, Any]] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    type(None): {"type": "null"},
    dict: {"type": "object"},
    list: {"type": "array"},
    Any: {},
}
_PARAM_DOC = re.compile(r"^\s*(?::param\s+)?(\w+)\s*(?:\([^)]*\))?\s*:\s*(.+)$")


def _schema_of(annotation: Any) -> dict[str, Any]:
    if annotation is inspect.Parameter.empty:
        return {}
    if annotation in _SIMPLE:
        return dict(_SIMPLE[annotation])
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin in (Union, types.UnionType):
        return {"anyOf": [_schema_of(a) for a in args]}
    if origin is Literal:
        return {"enum": list(args)}
    if origin in (list, tuple, set, frozenset, typing.Sequence):
        return {"type": "array", "items": _schema_of(args[0])} if args else {"type": "array"}
    if origin is dict:
        return {"type": "object"}
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return {"enum": [m.value for m in annotation]}
    return {}


def _param_docs(doc: str) -> dict[str, str]:
    """``name: description`` lines (Google "Args:" style or reST ``:param name:``)."""
    out: dict[str, str] = {}
    for line in doc.splitlines():
        match = _PARAM_DOC.match(line)
        if match and match.group(1) not in ("Args", "Returns", "Raises"):
            out[match.group(1)] = match.group(2).strip()
    return out


def function_schema(fn: Callable[..., Any]) -> dict[str, Any]:
    """``{"name", "description", "parameters"}`` for ``fn``; InvalidArgument for *args/**kwargs."""
    name = getattr(fn, "__name__", "")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name or ""):
        raise InvalidArgument(
            f"tool {fn!r} needs a name of 1 to 64 characters from [A-Za-z0-9_-]",
            violations=[FieldViolation("tools", "pass named functions")],
        )
    doc = inspect.getdoc(fn) or ""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: fall back to no types
        hints = {}
    properties: dict[str, Any] = {}
    required: list[str] = []
    docs = _param_docs(doc)
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        schema = _schema_of(hints.get(param.name, param.annotation))
        if param.name in docs:
            schema["description"] = docs[param.name]
        if param.default is inspect.Parameter.empty:
            required.append(param.name)
        else:
            try:
                json.dumps(param.default)
                schema["default"] = param.default
            except (TypeError, ValueError):
                pass
        properties[param.name] = schema
    summary = doc.split("\n\n", 1)[0].strip() if doc else f"Call {name}."
    return {
        "name": name,
        "description": summary,
        "parameters": {"type": "object", "properties": properties, "required": required},
    }


async def run_tool(fn: Callable[..., Any], arguments_json: str) -> tuple[str | None, str | None]:
    """Run ``fn`` with the model's arguments: (result as JSON text, None) or (None, error message)."""
    try:
        args = json.loads(arguments_json) if arguments_json.strip() else {}
    except json.JSONDecodeError as error:
        return None, f"arguments are not valid JSON: {error}"
    if not isinstance(args, dict):
        return None, "arguments must be a JSON object"
    try:
        if inspect.iscoroutinefunction(fn):
            value = await fn(**args)
        else:
            value = await asyncio.to_thread(fn, **args)
    except Exception as error:  # the model gets the failure and the turn goes on
        return None, f"{type(error).__name__}: {error}"
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False), None
    except (TypeError, ValueError) as error:
        return None, f"the tool returned a value that is not JSON ({type(value).__name__}): {error}"
