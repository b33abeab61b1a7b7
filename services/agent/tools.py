"""Tools: the SERVER tools built into the agent service, checks of declared tools, and the function
definitions the model is shown.

Built-in tools act on the turn's own session, through the same clients any caller uses, so they can
reach nothing the session itself could not: search_memory / search_knowledge (this session and its
user), get_state / set_state (this session's state)."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sessionkit import reasons
from sessionkit.errors import FieldViolation, InvalidArgument, SessionKitError
from sessionkit.jsonvalues import JsonValue, check_json

TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
CLIENT, SERVER = 1, 2


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]
    execution: int  # CLIENT or SERVER

    def function(self) -> dict[str, Any]:
        """The OpenAI ``tools`` entry."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters or {"type": "object", "properties": {}},
            },
        }


def _schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required}


BUILTINS: dict[str, ToolSpec] = {
    spec.name: spec
    for spec in (
        ToolSpec(
            "search_memory",
            "Search what is remembered about the user and this conversation. Returns the most relevant "
            "memories, best first.",
            _schema(
                {
                    "query": {"type": "string", "description": "What to look for"},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 20, "default": 5},
                },
                ["query"],
            ),
            SERVER,
        ),
        ToolSpec(
            "search_knowledge",
            "Search the documents of this session and user. Returns passages with their source, best first.",
            _schema(
                {
                    "query": {"type": "string", "description": "What to look for"},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 20, "default": 5},
                },
                ["query"],
            ),
            SERVER,
        ),
        ToolSpec(
            "get_state",
            "Read one value of this session's state by key (null when it is not set).",
            _schema({"key": {"type": "string"}}, ["key"]),
            SERVER,
        ),
        ToolSpec(
            "set_state",
            "Set one value of this session's state (any JSON value).",
            _schema({"key": {"type": "string"}, "value": {}}, ["key", "value"]),
            SERVER,
        ),
    )
}


def check_tools(specs: list[ToolSpec], field: str, *, client_only: bool = False) -> list[ToolSpec]:
    """Validate declared tools and fill in built-ins' descriptions and schemas."""
    out: list[ToolSpec] = []
    seen: set[str] = set()
    for n, spec in enumerate(specs):
        where = f"{field}[{n}]"
        if not TOOL_NAME.match(spec.name):
            raise InvalidArgument(
                f"invalid tool name {spec.name!r}",
                violations=[FieldViolation(f"{where}.name", "1 to 64 characters from [A-Za-z0-9_-]")],
            )
        if spec.name in seen:
            raise InvalidArgument(
                f"duplicate tool name {spec.name!r}",
                violations=[FieldViolation(f"{where}.name", "tool names must be unique")],
            )
        seen.add(spec.name)
        if spec.execution == SERVER:
            if client_only:
                raise InvalidArgument(
                    f"tool {spec.name!r} is not a CLIENT tool",
                    violations=[
                        FieldViolation(f"{where}.execution", "only CLIENT tools can be offered per turn")
                    ],
                )
            builtin = BUILTINS.get(spec.name)
            if builtin is None:
                raise reasons.UNKNOWN_TOOL.error(
                    name=spec.name,
                    builtins=", ".join(sorted(BUILTINS)),
                    violations=[FieldViolation(f"{where}.name", "not a built-in tool")],
                )
            out.append(builtin)
            continue
        params = spec.parameters
        if params and (
            params.get("type", "object") != "object" or not isinstance(params.get("properties", {}), dict)
        ):
            raise InvalidArgument(
                f"tool {spec.name!r}: parameters must be a JSON Schema object",
                violations=[
                    FieldViolation(
                        f"{where}.parameters", 'an object schema: {"type": "object", "properties": {...}}'
                    )
                ],
            )
        out.append(ToolSpec(spec.name, spec.description, params or {}, CLIENT))
    return out


def parse_arguments(arguments: str) -> dict[str, Any]:
    """The model's arguments as an object; ValueError with a message the model can act on."""
    if not arguments.strip():
        return {}
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError as error:
        raise ValueError(f"arguments are not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise ValueError("arguments must be a JSON object")
    return value


def result_json(value: Any) -> str:
    """A tool result as JSON text; ValueError when it is not JSON."""
    try:
        checked: JsonValue = check_json(value, "result")
    except SessionKitError as error:
        raise ValueError(f"the tool returned a value that is not JSON: {error}") from None
    return json.dumps(checked, ensure_ascii=False)


ServerTool = Callable[[dict[str, Any]], Awaitable[Any]]
