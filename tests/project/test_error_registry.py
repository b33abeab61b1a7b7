"""The one error registry (sessionkit.reasons): every reason the code raises or compares is registered and
documented in docs/ERRORS.md with the registry's class, gRPC code and HTTP status, and every registered
reason reaches the SDK as the same class and reason over real gRPC and through the real gateway."""

from __future__ import annotations

import ast
import re
import string
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from sessionkit import reasons
from sessionkit.config import ClientSettings
from sessionkit.errors import RemoteConnectionError, SessionKitError
from sessionkit.remote import RETRYABLE_STATUSES, GatewayClient
from sessionkit.retry import RetryPolicy
from sessionkit.state_client import SessionRef, StateClient
from sessionkit.transport import Transport, close_channels
from sessionkit.v1 import state_pb2
from sessionkit_server.common.interceptors import ErrorAndLogInterceptor
from sessionkit_server.gateway.server import GatewayServer, local_client_settings
from sessionkit_server.gateway.upstream import Upstream
from tests.gateway.test_gateway_support import gateway_settings

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [ROOT / "sdk" / "sessionkit", ROOT / "services"]
ERRORS_MD = ROOT / "docs" / "ERRORS.md"
REASON_NAME = re.compile(r"^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*$")
# Prose that names a reason: "reason ``X``", "(reason X)", "reason X,".
PROSE = re.compile(r"\breasons? ``?([A-Z][A-Z0-9_]{2,})``?|\(reason ([A-Z][A-Z0-9_]{2,})[),;]")
# Names on the registry module that are not reasons.
REGISTRY_API = {name for name in vars(reasons) if not REASON_NAME.match(name)} | {"REGISTRY", "E"}
#: The keywords of common.llm.Reasons that name a reason.
REASON_SET_ROLES = {"unavailable", "rejected", "rate_limited", "context_too_long"}
#: Code allowed to write reasons as strings (none): everything raises ``reasons.X.error(...)`` and compares
#: with ``reasons.X.matches(error)`` / ``reasons.X.name``.
LITERAL_REASONS_PENDING: tuple[str, ...] = ()

# -- finding the reasons the code uses ----------------------------------------------------------------


@dataclass(frozen=True)
class Use:
    where: str
    name: str


def _strings(node: ast.AST | None, constants: dict[str, str]) -> list[str]:
    """The string(s) a reason expression stands for: a literal, a module constant, or a tuple/set of them."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Name) and node.id in constants:
        return [constants[node.id]]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [s for item in node.elts for s in _strings(item, constants)]
    if isinstance(node, ast.Call) and node.args and getattr(node.func, "id", "") in ("frozenset", "set"):
        return _strings(node.args[0], constants)
    return []


def _is_reason(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "reason") or (
        isinstance(node, ast.Name) and node.id == "reason"
    )


def _is_reason_set(node: ast.AST) -> bool:
    """A call of sessionkit_server.common.llm.Reasons (its keywords name reasons)."""
    return isinstance(node, ast.Call) and (
        getattr(node.func, "id", None) == "Reasons" or getattr(node.func, "attr", None) == "Reasons"
    )


def _module_constants(tree: ast.Module) -> dict[str, str]:
    return {
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
        if isinstance(node.value.value, str)
        for target in node.targets
        if isinstance(target, ast.Name)
    }


def _assigns_default_reason(node: ast.AST) -> bool:
    if isinstance(node, ast.Assign):
        return any(getattr(t, "id", "") == "default_reason" for t in node.targets)
    return isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "default_reason"


def reason_uses(source: str, where: str) -> list[Use]:
    """Every reason ``source`` raises, compares or names: ``reason="X"`` (any call, ErrorInfo too),
    ``x.reason == "X"`` / ``in ("X", ...)``, ``default_reason = "X"``, ``{"reason": "X"}``,
    ``reasons.X``, and "reason ``X``" in docstrings and comments."""
    tree = ast.parse(source)
    constants = _module_constants(tree)
    uses: list[Use] = []

    def add(node: ast.AST, names: list[str]) -> None:
        uses.extend(Use(f"{where}:{getattr(node, 'lineno', 0)}", n) for n in names)

    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "reason":
            add(node.value, _strings(node.value, constants))
        elif isinstance(node, ast.Compare) and any(_is_reason(n) for n in (node.left, *node.comparators)):
            for side in (node.left, *node.comparators):
                add(node, _strings(side, constants))
        elif _assigns_default_reason(node):
            add(node, _strings(getattr(node, "value", None), constants))
        elif _is_reason_set(node):
            assert isinstance(node, ast.Call)
            for value in (*node.args, *(k.value for k in node.keywords if k.arg in REASON_SET_ROLES)):
                add(node, _strings(value, constants))
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "reason":
                    add(node, _strings(value, constants))
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "reasons"
            and node.attr not in REGISTRY_API
        ):
            add(node, [node.attr])
    for number, line in enumerate(source.splitlines(), 1):
        for match in PROSE.finditer(line):
            uses.append(Use(f"{where}:{number}", match.group(1) or match.group(2)))
    return uses


def code_files() -> Iterator[Path]:
    for root in SOURCES:
        for path in sorted(root.rglob("*.py")):
            if "v1" not in path.relative_to(root).parts and path.name != "reasons.py":
                yield path


def all_uses() -> list[Use]:
    uses: list[Use] = []
    for path in code_files():
        uses.extend(reason_uses(path.read_text(), str(path.relative_to(ROOT))))
    return uses


def _has_string(node: ast.AST, constants: dict[str, str]) -> bool:
    return any(
        (isinstance(n, ast.Constant) and isinstance(n.value, str))
        or (isinstance(n, ast.Name) and n.id in constants)
        for n in ast.walk(node)
    )


def literal_reasons(source: str, where: str) -> list[str]:
    """Where ``source`` writes a reason as a string instead of taking it from the registry: a ``reason=``
    keyword holding a string (an error, an ErrorInfo), a ``Reasons(...)`` entry given by name, a reason
    compared with a string, ``{"reason": "X"}``. A class's ``default_reason = "X"`` is its definition."""
    tree = ast.parse(source)
    constants = _module_constants(tree)
    found: list[str] = []

    def add(node: ast.AST, what: str) -> None:
        found.append(f"{where}:{getattr(node, 'lineno', 0)}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "reason" and _has_string(node.value, constants):
            add(node.value, f"reason={ast.unparse(node.value)}")
        elif _is_reason_set(node):
            assert isinstance(node, ast.Call)
            for value in (*node.args, *(k.value for k in node.keywords if k.arg in REASON_SET_ROLES)):
                if _has_string(value, constants):
                    add(value, f"Reasons(... {ast.unparse(value)} ...)")
        elif isinstance(node, ast.Compare) and any(_is_reason(n) for n in (node.left, *node.comparators)):
            if any(_has_string(side, constants) for side in (node.left, *node.comparators)):
                add(node, ast.unparse(node))
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "reason" and _has_string(value, constants):
                    add(node, f'{{"reason": {ast.unparse(value)}}}')
    return found


def test_the_scanner_finds_each_way_of_naming_a_reason() -> None:
    source = '''
GONE = "CONST_REASON"
class X(Exception):
    default_reason = "DEFAULT_REASON"
def f(error):
    """Raises NotFound (reason ``DOC_REASON``)."""
    if error.reason == "COMPARED_REASON" or error.reason in ("IN_REASON", GONE):
        raise NotFound("x", reason="KEYWORD_REASON")
    body = {"reason": "DICT_REASON"}
    llm = Reasons(unavailable="SET_REASON", label="not one")
    raise reasons.ATTRIBUTE_REASON.error()
'''
    found = {use.name for use in reason_uses(source, "example.py")}
    assert found == {
        "CONST_REASON",
        "DEFAULT_REASON",
        "DOC_REASON",
        "COMPARED_REASON",
        "IN_REASON",
        "KEYWORD_REASON",
        "DICT_REASON",
        "SET_REASON",
        "ATTRIBUTE_REASON",
    }
    # Not reasons: other keywords, the registry's own API, prose without "reason".
    assert not reason_uses('f(status="NOT_ONE")\nreasons.lookup("x")\n# see SESSIONKIT_X\n', "b.py")
    # Written as strings: every form but the class default and the registry's own.
    literal = sorted(found.split(": ", 1)[1] for found in literal_reasons(source, "example.py"))
    assert literal == [
        "Reasons(... 'SET_REASON' ...)",
        "error.reason == 'COMPARED_REASON'",
        "error.reason in ('IN_REASON', GONE)",
        "reason='KEYWORD_REASON'",
        "{\"reason\": 'DICT_REASON'}",
    ]
    registry_forms = """
raise NotFound("x", reason=reasons.MEMORY_NOT_FOUND.name)
info = ErrorInfo(reason=error.reason, domain=DOMAIN)
if reasons.MEMORY_NOT_FOUND.matches(error) or error.reason == reasons.MEMORY_EXISTS.name:
    llm = Reasons(unavailable=reasons.LLM_UNAVAILABLE, label="the LLM")
"""
    assert not literal_reasons(registry_forms, "c.py")


def test_every_reason_the_code_uses_is_registered() -> None:
    uses = all_uses()
    assert len({u.name for u in uses}) > 40, (
        "the scanner found too few reasons: is it still reading the code?"
    )
    unknown = sorted(f"{u.where}: {u.name}" for u in uses if u.name not in reasons.REGISTRY)
    assert not unknown, "reasons used but not in sessionkit.reasons:\n" + "\n".join(unknown)


def test_no_reason_is_written_as_a_string_outside_the_registry() -> None:
    found = []
    for path in code_files():
        where = path.relative_to(ROOT).as_posix()
        if not where.startswith(LITERAL_REASONS_PENDING):
            found.extend(literal_reasons(path.read_text(), where))
    assert not found, (
        "raise reasons.X.error(...) (the message is the registry's), compare with reasons.X.matches(error), "
        "and give common.llm.Reasons registry entries; written as strings:\n" + "\n".join(found)
    )


# -- the registry and docs/ERRORS.md -------------------------------------------------------------------


@dataclass(frozen=True)
class DocRow:
    line: int
    name: str
    cls: str
    code: str
    http: str


def doc_rows() -> list[DocRow]:
    """The rows of docs/ERRORS.md's reason tables: | `REASON` | `Class` | CODE | HTTP | when |."""
    rows = []
    for number, line in enumerate(ERRORS_MD.read_text().splitlines(), 1):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) >= 5 and REASON_NAME.match(cells[0].strip("`")):
            rows.append(DocRow(number, cells[0].strip("`"), cells[1].strip("`"), cells[2], cells[3]))
    return rows


def test_every_registered_reason_is_documented_as_registered() -> None:
    rows = doc_rows()
    documented = {row.name for row in rows}
    missing = sorted(set(reasons.REGISTRY) - documented)
    assert not missing, f"registered reasons missing from docs/ERRORS.md: {missing}"
    problems = []
    for row in rows:
        reason = reasons.REGISTRY.get(row.name)
        if reason is None:
            problems.append(f"line {row.line}: {row.name} is not a registered reason")
            continue
        # HTTP_ERROR answers the status of the refusal it stands for.
        http = "other" if reason is reasons.HTTP_ERROR else str(reason.http_status)
        expected = (reason.exception.__name__, reason.code.name, http)
        if (row.cls, row.code, row.http) != expected:
            problems.append(
                f"line {row.line}: {row.name} is documented as {(row.cls, row.code, row.http)}, "
                f"registered as {expected}"
            )
    assert not problems, "\n".join(problems)
    duplicated = sorted(n for n in documented if sum(r.name == n for r in rows) > 1)
    assert not duplicated, f"documented twice: {duplicated}"


def test_the_docs_name_no_reason_that_does_not_exist() -> None:
    # Every `ALL_CAPS` name in docs/ERRORS.md is a registered reason, or a setting (an environment variable).
    named = set(re.findall(r"`([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*)`", ERRORS_MD.read_text()))
    settings = {n for n in named if n.startswith(("SESSIONKIT_", "OPENAI_", "SSL_"))}
    assert len(named - settings) > 40, "found too few reasons in docs/ERRORS.md: is the pattern still right?"
    assert not sorted(named - settings - set(reasons.REGISTRY))


def test_each_reason_is_consistent() -> None:
    for name, reason in reasons.REGISTRY.items():
        fields: dict[str, Any] = {f: f"<{f}>" for f in reason.fields}
        error = reason.error(**fields, metadata={"k": "v"})
        assert type(error) is reason.exception and error.reason == name
        assert error.metadata == {"k": "v"} and all(v in error.message for v in fields.values())
        assert reasons.lookup(name) is reason
        assert (
            reasons.grpc_code_of(error) == reason.code and reasons.http_status_of(error) == reason.http_status
        )
    # A class's own default reason is registered with that class (a subclass may keep its parent's).
    for reason in reasons.REGISTRY.values():
        cls = reason.exception
        registered = reasons.REGISTRY[cls.default_reason].exception
        assert registered is cls if "default_reason" in vars(cls) else issubclass(cls, registered), cls


def test_a_message_with_a_missing_or_unknown_field_says_which() -> None:
    with pytest.raises(TypeError, match=r"missing \['first_use', 'method'\]"):
        reasons.IDEMPOTENCY_KEY_REUSED.error(key="k")
    with pytest.raises(TypeError, match=r"unknown \['sesion_id'\]"):
        reasons.SESSION_EXISTS.error(session_id="s", user_id="u", sesion_id="typo")
    with pytest.raises(ValueError, match="must be names"):
        reasons.Reason("BAD", SessionKitError, "{0} and {a.b}")
    assert {p[1] for p in string.Formatter().parse(reasons.IDEMPOTENCY_KEY_REUSED.message) if p[1]} == {
        "key",
        "first_use",
        "method",
    }


# -- the round trip: a service raises it, the SDK gets it back ----------------------------------------

GET_STATE = "/sessionkit.v1.StateService/GetState"


async def _raise_named(request: state_pb2.GetStateRequest, context: Any) -> state_pb2.GetStateResponse:
    """GetState that raises the reason named by the first key (the interceptor sends it as a status)."""
    reason = reasons.REGISTRY[request.keys[0]]
    fields: dict[str, Any] = {f: f"<{f}>" for f in reason.fields}
    raise reason.error(**fields, metadata={"probe": reason.name})


class _OneAttempt(Upstream):
    """The gateway's upstream without retries: the test is about the mapping, not about waiting."""

    def _transport(self, api_key: str | None, deadline: float) -> Transport:
        transport = super()._transport(api_key, deadline)
        transport.policy = RetryPolicy(max_attempts=1, deadline=deadline)
        return transport


@pytest.fixture
async def failing_state() -> AsyncIterator[str]:
    server = grpc.aio.server(interceptors=[ErrorAndLogInterceptor()])
    handler = grpc.unary_unary_rpc_method_handler(
        _raise_named,
        request_deserializer=state_pb2.GetStateRequest.FromString,
        response_serializer=state_pb2.GetStateResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("sessionkit.v1.StateService", {"GetState": handler})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)
        await close_channels()


async def test_every_reason_comes_back_as_its_class_over_grpc_and_through_the_gateway(
    failing_state: str,
) -> None:
    one_attempt = RetryPolicy(max_attempts=1, deadline=10)
    settings = ClientSettings(address=failing_state, state_address="")
    state = StateClient(Transport(settings, failing_state, Path("."), one_attempt))
    gateway_config = gateway_settings()
    gateway = GatewayServer(
        gateway_config, _OneAttempt(gateway_config, local_client_settings(failing_state), failing_state)
    )
    await gateway.start()
    rest = GatewayClient(f"{gateway.url}/agent", None, one_attempt)
    ref = SessionRef("default", "default", "s1")
    try:
        for name, reason in reasons.REGISTRY.items():
            with pytest.raises(SessionKitError) as over_grpc:
                await state.get_state(ref, [name])
            assert type(over_grpc.value) is reason.exception, name
            assert over_grpc.value.reason == name and over_grpc.value.metadata.get("probe") == name

            with pytest.raises(SessionKitError) as over_http:
                await rest.request("GET", f"/v1/sessions/s1/state/{name}")
            error = over_http.value
            assert error.reason == name and error.metadata.get("probe") == name, name
            if reason.http_status in RETRYABLE_STATUSES:
                # Remote mode raises what it could not get an answer for as RemoteConnectionError
                # (a ConnectionError), keeping the reason (docs/ERRORS.md, "The SDK's remote mode").
                assert isinstance(error, RemoteConnectionError), name
                assert error.status == reason.http_status
            else:
                assert type(error) is reason.exception, name
    finally:
        await rest.aclose()
        await gateway.stop()
