"""Type stubs of the generated sync classes (session.pyi, agent_sync.pyi), written from the async
classes, so type checkers and IDEs see the sync API with its real types. The classes themselves are
built at import time (sessionkit._sync); these stubs only describe them, and
tests/sdk/test_sdk_sync_api.py fails when a stub is not what this module writes.

Regenerate with ``python -m sessionkit._stubgen`` after changing the async API.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sessionkit._sync import public_members

#: Async names in annotations and the sync names that replace them.
RENAMES = {
    "AsyncIterator": "Iterator",
    "AsyncAgent": "Agent",
    "AsyncSession": "Session",
    "AsyncWorkflow": "Workflow",
    "SessionMemory": "SyncSessionMemory",
    "SessionKnowledge": "SyncSessionKnowledge",
}
#: Where each name a stub may use comes from.
IMPORTS = {
    "Any": "typing",
    "Literal": "typing",
    "Self": "typing",
    "overload": "typing",
    "Callable": "collections.abc",
    "Iterator": "collections.abc",
    "Mapping": "collections.abc",
    "Sequence": "collections.abc",
    "os": "",
    "Path": "pathlib",
    "SyncFacade": "sessionkit._sync",
    "Task": "sessionkit.agent",
    "ProgressCallback": "sessionkit.knowledge_client",
    "RetryPolicy": "sessionkit.retry",
    "Event": "sessionkit.state_client",
    "SessionInfo": "sessionkit.state_client",
    "StateChange": "sessionkit.state_client",
    "StateVersion": "sessionkit.state_client",
    "JsonValue": "sessionkit.jsonvalues",
    "AsyncAgent": "sessionkit.agent",
    "AsyncWorkflow": "sessionkit.agent",
    "Agent": "sessionkit.agent_sync",
    "AsyncSession": "sessionkit.async_session",
    "SessionKnowledge": "sessionkit.async_session",
    "SessionMemory": "sessionkit.async_session",
    "Session": "sessionkit.session",
}
#: A type named like a member of the class it is used in (``Session.Agent() -> Agent``,
#: ``SyncSessionKnowledge.list``) is written qualified, as a method's name hides it in the class body.
QUALIFIED = {"list": "builtins.list", "Agent": "sessionkit.agent_sync.Agent", "dict": "builtins.dict"}


class _Text:
    """An annotation or default shown as written (inspect renders objects with repr())."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _rename(annotation: str, hidden: set[str]) -> str:
    """The annotation with async names made sync, and names the class's members hide qualified."""
    renamed = re.sub(r"\b(" + "|".join(RENAMES) + r")\b", lambda m: RENAMES[m.group(1)], annotation)

    def qualify(match: re.Match[str]) -> str:
        name = match.group(0)
        if name not in hidden:
            return name
        if name not in QUALIFIED:
            raise ValueError(
                f"annotation {annotation!r} uses {name!r}, hidden by a member: add it to QUALIFIED"
            )
        return QUALIFIED[name]

    return re.sub(r"(?<![.\w])[A-Za-z_]\w*", qualify, renamed)


def _signature(fn: Callable[..., Any], hidden: set[str]) -> str:
    signature = inspect.signature(fn)
    params = [
        p.replace(
            annotation=_Text(_rename(str(p.annotation), hidden)) if p.annotation is not p.empty else p.empty,
            default=_Text("...") if p.default is not p.empty else p.empty,
        )
        for p in signature.parameters.values()
    ]
    ret = _rename(str(signature.return_annotation), hidden)
    return str(signature.replace(parameters=params, return_annotation=_Text(ret)))


def _class(sync_name: str, async_cls: type, *, construct: bool) -> list[str]:
    hidden = set(public_members(async_cls))
    lines = [f"class {sync_name}(SyncFacade[{async_cls.__name__}]):"]
    for klass in reversed(async_cls.__mro__):
        for name, annotation in inspect.get_annotations(klass).items():
            if not name.startswith("_"):
                lines.append(f"    {name}: {_rename(str(annotation), hidden)}")
    if construct:
        lines.append(f"    def __init__{_signature(_init_of(async_cls), hidden)}: ...")
    for name in sorted(hidden):
        member = inspect.getattr_static(async_cls, name)
        if isinstance(member, property):
            assert member.fget is not None
            lines += ["    @property", f"    def {name}{_signature(member.fget, hidden)}: ..."]
        elif callable(member):
            overloads = typing.get_overloads(member)
            for variant in overloads:
                lines += ["    @overload", f"    def {name}{_signature(variant, hidden)}: ..."]
            if not overloads:
                lines.append(f"    def {name}{_signature(member, hidden)}: ...")
    return [*lines, ""]


def _init_of(cls: type) -> Callable[..., Any]:
    init: Callable[..., Any] = inspect.getattr_static(cls, "__init__")
    return init


def _header(body: list[str], doc: str, own: set[str]) -> list[str]:
    """The stub's docstring and imports, sorted as ruff's isort sorts them (so a formatted stub parses
    to the same tree as a fresh one: the test compares trees, not text)."""
    text = re.sub(r"def \w+", "", "\n".join(body))  # a method's own name is not a use
    used = set(re.findall(r"(?<![.\w])[A-Za-z_]\w*", text)) - own
    modules: dict[str, list[str]] = {}
    for name in sorted(used & set(IMPORTS)):
        modules.setdefault(IMPORTS[name], []).append(name)
    lines = [f'"""{doc} Written by sessionkit._stubgen: do not edit."""', ""]
    plain = modules.pop("", [])
    plain += sorted({q.rsplit(".", 1)[0] for q in QUALIFIED.values() if q in "\n".join(body)})
    first = [m for m in plain if m.startswith("sessionkit")]
    lines += [f"import {name}" for name in sorted(set(plain) - set(first))]
    for first_party in (False, True):
        group = sorted(m for m in modules if m.startswith("sessionkit") == first_party)
        lines += [f"import {m}" for m in first if first_party]
        lines += [f"from {m} import {', '.join(sorted(modules[m]))}" for m in group] + [""]
    return lines


def session_stub() -> str:
    from sessionkit.async_session import AsyncSession, SessionKnowledge, SessionMemory

    body = (
        _class("SyncSessionKnowledge", SessionKnowledge, construct=False)
        + _class("SyncSessionMemory", SessionMemory, construct=False)
        + _class("Session", AsyncSession, construct=True)
    )
    own = {"Session", "SyncSessionKnowledge", "SyncSessionMemory"}
    header = _header(body, "The sync Session's types.", own)
    return "\n".join(header + body).rstrip() + "\n"


def agent_stub() -> str:
    from sessionkit.agent import AsyncAgent, AsyncWorkflow

    body = _class("Agent", AsyncAgent, construct=False) + _class("Workflow", AsyncWorkflow, construct=True)
    body += ["PraisonAIAgents = Workflow", ""]
    header = _header(body, "The sync Agent's and Workflow's types.", {"Agent", "Workflow", "PraisonAIAgents"})
    return "\n".join(header + body).rstrip() + "\n"


STUBS: dict[str, Callable[[], str]] = {"session.pyi": session_stub, "agent_sync.pyi": agent_stub}


def main() -> None:
    here = Path(__file__).parent
    for name, write in STUBS.items():
        (here / name).write_text(write())


if __name__ == "__main__":
    main()
