"""The one error registry: every reason sessionkit sends or raises, defined once with its exception
class (so its gRPC code and HTTP status) and its message.

Raise one with ``raise reasons.STATE_TOO_LARGE.error(what="state", size=n, limit=m, metadata={...})``:
the keyword fields fill the message template, and ``metadata``, ``violations`` and ``retry_after``
go to the exception. The servers' interceptor, the gateway's HTTP mapping and both SDK transports
look reasons up here (:func:`lookup`), so a reason means the same class on every side.
docs/ERRORS.md documents each one; tests/project/test_error_registry.py fails when code uses a reason that
is not here or not documented there.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

import grpc

from sessionkit.errors import (
    AlreadyExists,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    InternalError,
    InvalidArgument,
    NotFound,
    NotImplementedByServer,
    PermissionDenied,
    RateLimited,
    RemoteConnectionError,
    ResourceExhausted,
    ServiceUnavailable,
    SessionKitError,
    SessionNotFound,
    StateConflict,
    Unauthenticated,
)

E = TypeVar("E", bound=SessionKitError)

#: Who sends a reason: a service (over gRPC, and through the gateway), the gateway itself (HTTP
#: only), or the SDK (raised in the client, never received from a server).
Origin = Literal["service", "gateway", "sdk"]


@dataclass(frozen=True)
class Reason(Generic[E]):
    """One reason: its name, exception class and message template (``str.format`` fields)."""

    name: str
    exception: type[E]
    message: str
    origin: Origin = "service"
    #: The HTTP status and gRPC code when they are not the class's: refusals at the HTTP level that
    #: have no class of their own (405, 406, 415, ...).
    http_override: int | None = None
    code_override: grpc.StatusCode | None = None
    fields: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = {part[1] for part in string.Formatter().parse(self.message) if part[1]}
        # A template names plain fields only ("{key!r}" is fine, "{a.b}" or "{0}" is not).
        bad = sorted(n for n in names if not n.isidentifier())
        if bad:
            raise ValueError(f"reason {self.name}: message fields must be names, not {bad}")
        object.__setattr__(self, "fields", frozenset(names))

    @property
    def code(self) -> grpc.StatusCode:
        return self.code_override or self.exception.code

    @property
    def http_status(self) -> int:
        return self.http_override or self.exception.http_status

    def format(self, **fields: object) -> str:
        """The message with ``fields`` filled in; a missing or unknown field is a TypeError naming it."""
        missing = sorted(self.fields - fields.keys())
        unknown = sorted(fields.keys() - self.fields)
        if missing or unknown:
            raise TypeError(
                f"reason {self.name}: message {self.message!r} needs the fields "
                f"{sorted(self.fields)} (missing {missing}, unknown {unknown})"
            )
        return self.message.format(**fields)

    def error(
        self,
        *,
        metadata: Mapping[str, str] | None = None,
        violations: list[FieldViolation] | None = None,
        retry_after: float | None = None,
        **fields: object,
    ) -> E:
        """The exception for this reason, its message filled from ``fields``."""
        return self.exception(
            self.format(**fields),
            reason=self.name,
            metadata=metadata,
            violations=violations,
            retry_after=retry_after,
        )

    def matches(self, error: BaseException) -> bool:
        """Whether ``error`` carries this reason."""
        return getattr(error, "reason", None) == self.name


# -- the default reason of each class (an error raised without a reason of its own) --------------------

INVALID_ARGUMENT = Reason("INVALID_ARGUMENT", InvalidArgument, "{detail}")
NOT_FOUND = Reason("NOT_FOUND", NotFound, "{detail}")
SESSION_NOT_FOUND = Reason("SESSION_NOT_FOUND", SessionNotFound, "{detail}")
ALREADY_EXISTS = Reason("ALREADY_EXISTS", AlreadyExists, "{detail}")
STATE_CONFLICT = Reason("STATE_CONFLICT", StateConflict, "{detail}")
FAILED_PRECONDITION = Reason("FAILED_PRECONDITION", FailedPrecondition, "{detail}")
RESOURCE_EXHAUSTED = Reason("RESOURCE_EXHAUSTED", ResourceExhausted, "{detail}")
RATE_LIMITED = Reason("RATE_LIMITED", RateLimited, "{detail}")
UNAUTHENTICATED = Reason("UNAUTHENTICATED", Unauthenticated, "{detail}")
PERMISSION_DENIED = Reason("PERMISSION_DENIED", PermissionDenied, "{detail}")
UNAVAILABLE = Reason("UNAVAILABLE", ServiceUnavailable, "{detail}")
DEADLINE_EXCEEDED = Reason("DEADLINE_EXCEEDED", DeadlineExceeded, "{detail}")
CANCELLED = Reason("CANCELLED", Cancelled, "{detail}")
UNIMPLEMENTED = Reason("UNIMPLEMENTED", NotImplementedByServer, "{detail}")
INTERNAL = Reason("INTERNAL", InternalError, "{detail}")

# -- shared by the services ------------------------------------------------------------------------

IDEMPOTENCY_KEY_REUSED = Reason(
    "IDEMPOTENCY_KEY_REUSED",
    FailedPrecondition,
    "idempotency key {key!r} was already used for {first_use}, not {method}; "
    "use a new key for every distinct request",
)
IDEMPOTENCY_KEY_IN_PROGRESS = Reason(
    "IDEMPOTENCY_KEY_IN_PROGRESS",
    ServiceUnavailable,
    "a {method} call with idempotency key {key!r} is still running; retry to get its response",
)
IDEMPOTENCY_KEY_ABANDONED = Reason(
    "IDEMPOTENCY_KEY_ABANDONED",
    FailedPrecondition,
    "an earlier {method} call with idempotency key {key!r} never finished (the server stopped); what it "
    "applied is unknown, so it is not run again: check the result and use a new key",
)
SERVER_DRAINING = Reason(
    "SERVER_DRAINING",
    ServiceUnavailable,
    "this server is shutting down and takes no new calls; retry (another replica answers)",
)
STORAGE_FULL = Reason(
    "STORAGE_FULL",
    ResourceExhausted,
    "the server's storage is full ({detail}): writes are refused until space is freed; reads still work",
    http_override=507,
)
STORAGE_READ_ONLY = Reason(
    "STORAGE_READ_ONLY",
    ServiceUnavailable,
    "the server's storage is read-only ({detail}): writes are refused; reads still work",
)
DATABASE_UNAVAILABLE = Reason(
    "DATABASE_UNAVAILABLE",
    ServiceUnavailable,
    "the server's database is unreachable ({detail}); retry later",
)
EXTRA_NOT_INSTALLED = Reason(
    "EXTRA_NOT_INSTALLED",
    FailedPrecondition,
    "{what} needs the {extra!r} extra, which is not installed (missing: {missing}): {install}",
)

# -- state -----------------------------------------------------------------------------------------

SESSION_EXISTS = Reason(
    "SESSION_EXISTS", AlreadyExists, "session {session_id!r} of user {user_id!r} already exists"
)
VERSION_NOT_FOUND = Reason(
    "VERSION_NOT_FOUND",
    NotFound,
    "version {version} of session {session_id!r} is not retained (the last {kept} versions are kept)",
)
VALUE_NOT_NUMBER = Reason(
    "VALUE_NOT_NUMBER", FailedPrecondition, "cannot increment {key!r}: its value is a {kind}, not a number"
)
VALUE_NOT_LIST = Reason(
    "VALUE_NOT_LIST", FailedPrecondition, "cannot append to {key!r}: its value is a {kind}, not a list"
)
STATE_TOO_LARGE = Reason(
    "STATE_TOO_LARGE", ResourceExhausted, "{what} would be {size} bytes of JSON; the limit is {limit}"
)
EVENT_TOO_LARGE = Reason("EVENT_TOO_LARGE", ResourceExhausted, "event is {size} bytes; the limit is {limit}")

# -- memory ----------------------------------------------------------------------------------------

MEMORY_NOT_FOUND = Reason("MEMORY_NOT_FOUND", NotFound, "memory {memory_id!r} not found")
MEMORY_CONFLICT = Reason(
    "MEMORY_CONFLICT",
    StateConflict,
    "memory {memory_id!r} is at revision {current}, not the expected {expected}",
)
MEMORY_EXISTS = Reason("MEMORY_EXISTS", AlreadyExists, "another memory in this scope already has this text")
EXTRACTION_UNAVAILABLE = Reason(
    "EXTRACTION_UNAVAILABLE",
    FailedPrecondition,
    "LLM fact extraction (memory_config provider 'mem0') is not configured on this server: set "
    "SESSIONKIT_LLM_BASE_URL to an OpenAI-compatible endpoint (e.g. http://localhost:11434/v1) and "
    "SESSIONKIT_LLM_MODEL, or OPENAI_API_KEY to use api.openai.com",
)
EXTRACTION_LLM_UNAVAILABLE = Reason(
    "EXTRACTION_LLM_UNAVAILABLE", ServiceUnavailable, "{where} {problem} ({attempts} attempts): {detail}"
)
EXTRACTION_LLM_REJECTED = Reason(
    "EXTRACTION_LLM_REJECTED",
    FailedPrecondition,
    "{where} refused the request ({status}): {detail}; check SESSIONKIT_LLM_MODEL and the key",
)

QUERY_LLM_UNAVAILABLE = Reason(
    "QUERY_LLM_UNAVAILABLE", ServiceUnavailable, "{where} {problem} ({attempts} attempts): {detail}"
)
QUERY_LLM_REJECTED = Reason(
    "QUERY_LLM_REJECTED",
    FailedPrecondition,
    "{where} refused the request ({status}): {detail}; check SESSIONKIT_LLM_MODEL and the key",
)

# -- embeddings and the vector index (memory and knowledge) -----------------------------------------

EMBEDDING_MODEL_UNAVAILABLE = Reason(
    "EMBEDDING_MODEL_UNAVAILABLE", FailedPrecondition, "the embedding model is not available: {detail}"
)
EMBEDDING_DIMENSION_MISMATCH = Reason(
    "EMBEDDING_DIMENSION_MISMATCH",
    FailedPrecondition,
    "the embedding model {model!r} ({path}) makes {actual}-dimensional vectors, but dimension {expected} "
    "is configured",
)
EMBEDDING_BAD_RESPONSE = Reason("EMBEDDING_BAD_RESPONSE", FailedPrecondition, "the {where} {problem}")
EMBEDDING_UNAVAILABLE = Reason("EMBEDDING_UNAVAILABLE", ServiceUnavailable, "the {where} {problem}: {detail}")
EMBEDDING_REJECTED = Reason(
    "EMBEDDING_REJECTED", InvalidArgument, "the {where} rejected the request ({status}): {detail}"
)
VECTOR_INDEX_UNAVAILABLE = Reason(
    "VECTOR_INDEX_UNAVAILABLE", ServiceUnavailable, "{location} is unavailable: {detail}"
)

# -- knowledge -------------------------------------------------------------------------------------

UNSUPPORTED_CONTENT_TYPE = Reason(
    "UNSUPPORTED_CONTENT_TYPE", InvalidArgument, "cannot read {name!r}: {problem}"
)
URL_NOT_ALLOWED = Reason(
    "URL_NOT_ALLOWED",
    PermissionDenied,
    "refusing to fetch {url!r}: {why} (set SESSIONKIT_KNOWLEDGE_ALLOW_PRIVATE_URLS=true to allow)",
)
URL_FETCH_FAILED = Reason("URL_FETCH_FAILED", FailedPrecondition, "fetching {url!r} failed: {detail}")
URL_FETCH_TIMEOUT = Reason(
    "URL_FETCH_TIMEOUT", DeadlineExceeded, "fetching {url!r} timed out after {seconds}s"
)
SOURCE_TOO_LARGE = Reason(
    "SOURCE_TOO_LARGE", ResourceExhausted, "{what} is over the size limit ({size} bytes; at most {limit})"
)
CHUNK_QUOTA = Reason("CHUNK_QUOTA", ResourceExhausted, "{name!r} makes {count} {what}; at most {limit}")
KNOWLEDGE_SOURCE_NOT_FOUND = Reason(
    "KNOWLEDGE_SOURCE_NOT_FOUND", NotFound, "knowledge source {source!r} not found"
)

# -- agent -----------------------------------------------------------------------------------------

AGENT_NOT_FOUND = Reason("AGENT_NOT_FOUND", NotFound, "session {session_id!r} has no agent named {name!r}")
AGENT_EXISTS = Reason(
    "AGENT_EXISTS", AlreadyExists, "session {session_id!r} already has an agent named {name!r}"
)
TOO_MANY_WATCHERS = Reason(
    "TOO_MANY_WATCHERS",
    RateLimited,
    "{scope} already has {count} watch streams on this server (limit {limit}, setting {setting}): "
    "close one, or watch again later",
)
AGENT_LIMIT = Reason(
    "AGENT_LIMIT", ResourceExhausted, "session {session_id!r} already has {count} agents (limit {limit})"
)
UNKNOWN_TOOL = Reason(
    "UNKNOWN_TOOL", InvalidArgument, "unknown server tool {name!r}; built-in tools: {builtins}"
)
UNKNOWN_MODEL = Reason(
    "UNKNOWN_MODEL",
    InvalidArgument,
    "model {requested!r} is not served: no LLM endpoint is configured, so the offline model {served} "
    "answers; set OPENAI_API_KEY and/or OPENAI_BASE_URL (or SESSIONKIT_LLM_BASE_URL) on the server to use "
    "another model",
)
CONVERSATION_BUSY = Reason(
    "CONVERSATION_BUSY", StateConflict, "session {session_id!r} is busy with another turn"
)
LLM_UNAVAILABLE = Reason(
    "LLM_UNAVAILABLE", ServiceUnavailable, "{where} {problem} ({attempts} attempts): {detail}"
)
LLM_RATE_LIMITED = Reason(
    "LLM_RATE_LIMITED", RateLimited, "{where} is rate limiting (429, {attempts} attempts): {detail}"
)
LLM_REJECTED = Reason(
    "LLM_REJECTED",
    FailedPrecondition,
    "{where} refused the request ({status}): {detail}; check the model name (SESSIONKIT_MODEL or the "
    "agent's llm=) and the key (OPENAI_API_KEY)",
)
CONTEXT_TOO_LONG = Reason(
    "CONTEXT_TOO_LONG", ResourceExhausted, "the prompt does not fit the context of {where}: {detail}"
)
LLM_MODEL_UNAVAILABLE = Reason(
    "LLM_MODEL_UNAVAILABLE", FailedPrecondition, "the offline LLM is not available: {detail}"
)

# -- the gateway's own (HTTP) ----------------------------------------------------------------------

INVALID_REQUEST = Reason("INVALID_REQUEST", InvalidArgument, "{detail}", origin="gateway")
API_KEY_MISSING = Reason(
    "API_KEY_MISSING",
    Unauthenticated,
    "an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
    origin="gateway",
)
API_KEY_INVALID = Reason("API_KEY_INVALID", Unauthenticated, "the API key is not valid", origin="gateway")
API_KEY_MALFORMED = Reason(
    "API_KEY_MALFORMED", Unauthenticated, "the Authorization header must be 'Bearer <key>'", origin="gateway"
)
AUTH_REQUIRED = Reason(
    "AUTH_REQUIRED",
    FailedPrecondition,
    "refusing to serve {what} on {host} without API keys: set SESSIONKIT_API_KEYS (or "
    "SESSIONKIT_API_KEYS_FILE), or bind to 127.0.0.1",
    origin="gateway",
)
STATE_KEY_NOT_FOUND = Reason(
    "STATE_KEY_NOT_FOUND", NotFound, "key {key!r} is not set in session {session_id!r}", origin="gateway"
)
ROUTE_NOT_FOUND = Reason("ROUTE_NOT_FOUND", NotFound, "no route {method} {path}", origin="gateway")
METHOD_NOT_ALLOWED = Reason(
    "METHOD_NOT_ALLOWED", NotImplementedByServer, "{detail}", origin="gateway", http_override=405
)
NOT_ACCEPTABLE = Reason("NOT_ACCEPTABLE", InvalidArgument, "{detail}", origin="gateway", http_override=406)
UNSUPPORTED_MEDIA_TYPE = Reason(
    "UNSUPPORTED_MEDIA_TYPE", InvalidArgument, "{detail}", origin="gateway", http_override=415
)
REQUEST_TOO_LARGE = Reason(
    "REQUEST_TOO_LARGE",
    ResourceExhausted,
    "the request body is larger than this gateway accepts ({limit} bytes)",
    origin="gateway",
)
HTTP_ERROR = Reason(
    "HTTP_ERROR", InternalError, "{detail}", origin="gateway", code_override=grpc.StatusCode.UNKNOWN
)

# -- the SDK's own ---------------------------------------------------------------------------------

CONNECTION_FAILED = Reason("CONNECTION_FAILED", RemoteConnectionError, "{detail}", origin="sdk")
TLS_FAILED = Reason(
    "TLS_FAILED",
    RemoteConnectionError,
    "TLS with the remote agent at {url} failed: {detail}. For a private CA, point SSL_CERT_FILE at its "
    "certificate",
    origin="sdk",
)
BAD_REMOTE_RESPONSE = Reason("BAD_REMOTE_RESPONSE", RemoteConnectionError, "{detail}", origin="sdk")
NOT_AVAILABLE_REMOTELY = Reason(
    "NOT_AVAILABLE_REMOTELY",
    NotImplementedByServer,
    "{what} is not available on a remote (agent_url) session: {why}; use address='host:port' to reach "
    "the gRPC services",
    origin="sdk",
)
NOT_REMOTE = Reason(
    "NOT_REMOTE",
    FailedPrecondition,
    "chat() talks to a remote agent: create the session with agent_url= (or remote_url=); for a local "
    "agent use session.Agent(...).chat()",
    origin="sdk",
)


def _collect(namespace: Mapping[str, object]) -> dict[str, Reason[SessionKitError]]:
    found: dict[str, Reason[SessionKitError]] = {}
    for attribute, value in namespace.items():
        if isinstance(value, Reason):
            if value.name != attribute:
                raise ValueError(f"reason {value.name} is bound to the name {attribute}")
            found[value.name] = value
    return found


#: Every reason by name.
REGISTRY: Mapping[str, Reason[SessionKitError]] = _collect(globals())


def lookup(name: str | None) -> Reason[SessionKitError] | None:
    """The registered reason called ``name`` (None for an unknown or missing name)."""
    return REGISTRY.get(name or "")


def http_status_of(error: SessionKitError) -> int:
    """The HTTP status an error answers: its reason's, else its class's."""
    reason = lookup(error.reason)
    if reason is not None and isinstance(error, reason.exception):
        return reason.http_status
    return error.http_status


def grpc_code_of(error: SessionKitError) -> grpc.StatusCode:
    """The gRPC code an error is sent with: its reason's, else its class's."""
    reason = lookup(error.reason)
    if reason is not None and isinstance(error, reason.exception):
        return reason.code
    return error.code


def exception_class(name: str | None, code: grpc.StatusCode) -> type[SessionKitError] | None:
    """The class a received (reason, code) is raised as, when the reason is registered with that code."""
    reason = lookup(name)
    if reason is not None and reason.code == code:
        return reason.exception
    return None


# When an HTTP status alone must say which gRPC code it was (a server that is not the gateway, or an
# answer without a "status"): the classes' statuses first, the overrides after; where two classes share
# a status (409), the first listed wins.
def _http_preference(reason: Reason[SessionKitError]) -> tuple[bool, bool]:
    return reason.http_override is not None, reason.code != grpc.StatusCode.ABORTED


_CODE_BY_HTTP: dict[int, grpc.StatusCode] = {}
for _reason in sorted(REGISTRY.values(), key=_http_preference):
    _CODE_BY_HTTP.setdefault(_reason.http_status, _reason.code)
#: FastAPI's own validation answer, from a server that is not the gateway.
_CODE_BY_HTTP.setdefault(422, grpc.StatusCode.INVALID_ARGUMENT)


def grpc_code_for_http(http_status: int) -> grpc.StatusCode:
    """The gRPC code an HTTP error status stands for (INTERNAL for one with no entry)."""
    return _CODE_BY_HTTP.get(http_status, grpc.StatusCode.INTERNAL)
