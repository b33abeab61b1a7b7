"""One exception hierarchy for the SDK and the services: each class has its gRPC status code and
HTTP status; each reason (sessionkit.reasons, the one registry) names its class.

The server turns a :class:`SessionKitError` into ``google.rpc.Status`` carrying
``ErrorInfo`` (reason, domain, metadata), ``BadRequest`` (field violations) and
``RetryInfo`` (retry_after); the SDK turns that status back into the same exception
class, so callers catch ``StateConflict`` whichever side raised it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

DOMAIN = "sessionkit.dev"


#: The most of any text an error carries: an error repeats what the caller sent (a key, a name, a
#: value) to say what is wrong, and an unbounded echo would overflow gRPC's metadata limit (the status
#: travels in the trailers) and turn a clear INVALID_ARGUMENT into RESOURCE_EXHAUSTED.
MAX_MESSAGE_CHARS = 1024
MAX_FIELD_CHARS = 128
MAX_DESCRIPTION_CHARS = 512
MAX_METADATA_CHARS = 256
MAX_VIOLATIONS = 20
#: The serialized google.rpc.Status a server sends at most (base64 in grpc-status-details-bin, beside
#: the message in grpc-message): both within gRPC's default 8 KiB of metadata. Violations past it are
#: summarized as "N more violations".
MAX_STATUS_BYTES = 3000


def shown(text: str, limit: int = 64) -> str:
    """``text`` or its first ``limit`` characters, saying how long it was: how errors quote input."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def _clip(text: str, limit: int) -> str:
    """``text`` within ``limit`` bytes of UTF-8: the trailers carry bytes (grpc-message percent-encodes
    each non-ASCII byte as three), so a limit in characters let 1024 emoji become 12 KB and overflow
    gRPC's metadata limit (the call then ends RESOURCE_EXHAUSTED, its error lost)."""
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) <= limit:
        return text
    suffix = f"... ({len(text)} characters)"
    # "ignore" drops a character cut in two at the end (and any lone surrogate, which no trailer holds).
    return encoded[: max(0, limit - len(suffix))].decode("utf-8", "ignore") + suffix


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "field", _clip(self.field, MAX_FIELD_CHARS))
        object.__setattr__(self, "description", _clip(self.description, MAX_DESCRIPTION_CHARS))


class SessionKitError(Exception):
    """Base of every error sessionkit raises. ``reason`` is stable and machine-readable."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    http_status: ClassVar[int] = 500
    default_reason: ClassVar[str] = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        violations: list[FieldViolation] | None = None,
        retry_after: float | None = None,
    ) -> None:
        message = _clip(message, MAX_MESSAGE_CHARS)
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = {k: _clip(v, MAX_METADATA_CHARS) for k, v in (metadata or {}).items()}
        self.violations = list(violations or [])
        if len(self.violations) > MAX_VIOLATIONS:
            more = len(self.violations) - MAX_VIOLATIONS + 1
            self.violations = [
                *self.violations[: MAX_VIOLATIONS - 1],
                FieldViolation("...", f"{more} more violations"),
            ]
        self.retry_after = retry_after

    def __str__(self) -> str:
        if not self.violations:
            return self.message
        fields = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        return f"{self.message} ({fields})"


class InvalidArgument(SessionKitError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 400
    default_reason = "INVALID_ARGUMENT"


class NotFound(SessionKitError):
    code = grpc.StatusCode.NOT_FOUND
    http_status = 404
    default_reason = "NOT_FOUND"


class SessionNotFound(NotFound):
    default_reason = "SESSION_NOT_FOUND"


class AlreadyExists(SessionKitError):
    code = grpc.StatusCode.ALREADY_EXISTS
    http_status = 409
    default_reason = "ALREADY_EXISTS"


class StateConflict(SessionKitError):
    """A write's expected_version is stale: someone else wrote first. Re-read and retry."""

    code = grpc.StatusCode.ABORTED
    http_status = 409
    default_reason = "STATE_CONFLICT"


class FailedPrecondition(SessionKitError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 412
    default_reason = "FAILED_PRECONDITION"


class ResourceExhausted(SessionKitError):
    """Too large (never worth retrying) or rate limited (``retry_after`` is set)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 413
    default_reason = "RESOURCE_EXHAUSTED"


class RateLimited(ResourceExhausted):
    http_status = 429
    default_reason = "RATE_LIMITED"


class Unauthenticated(SessionKitError):
    code = grpc.StatusCode.UNAUTHENTICATED
    http_status = 401
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(SessionKitError):
    code = grpc.StatusCode.PERMISSION_DENIED
    http_status = 403
    default_reason = "PERMISSION_DENIED"


class ServiceUnavailable(SessionKitError):
    """The service could not be reached or is not serving; the SDK already retried."""

    code = grpc.StatusCode.UNAVAILABLE
    http_status = 503
    default_reason = "UNAVAILABLE"


class DeadlineExceeded(SessionKitError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    http_status = 504
    default_reason = "DEADLINE_EXCEEDED"


class Cancelled(SessionKitError):
    code = grpc.StatusCode.CANCELLED
    http_status = 499
    default_reason = "CANCELLED"


class NotImplementedByServer(SessionKitError):
    code = grpc.StatusCode.UNIMPLEMENTED
    http_status = 501
    default_reason = "UNIMPLEMENTED"


class InternalError(SessionKitError):
    pass


class RemoteConnectionError(ConnectionError, ServiceUnavailable):
    """The remote agent could not be reached, or kept answering 502/503/504, within the timeout.

    A ``ConnectionError`` as in the seed (``except ConnectionError`` keeps working) and a
    ``ServiceUnavailable`` like the gRPC transport's errors. ``sent`` is False when no byte of the
    request reached the server (the connection was refused), so repeating it is always safe."""

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        violations: list[FieldViolation] | None = None,
        retry_after: float | None = None,
        sent: bool = True,
        status: int | None = None,
    ) -> None:
        ServiceUnavailable.__init__(
            self, message, reason=reason, metadata=metadata, violations=violations, retry_after=retry_after
        )
        self.sent = sent
        self.status = status


# A received status whose reason is not registered (a newer server) is raised by its code.
_BY_CODE: dict[grpc.StatusCode, type[SessionKitError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        StateConflict,
        FailedPrecondition,
        ResourceExhausted,
        Unauthenticated,
        PermissionDenied,
        ServiceUnavailable,
        DeadlineExceeded,
        Cancelled,
        NotImplementedByServer,
        InternalError,
    )
}
_BY_CODE[grpc.StatusCode.UNKNOWN] = InternalError
_BY_CODE[grpc.StatusCode.DATA_LOSS] = InternalError
_BY_CODE[grpc.StatusCode.OUT_OF_RANGE] = InvalidArgument


def to_status(error: SessionKitError) -> status_pb2.Status:
    """The google.rpc.Status the server sends for ``error`` (at most MAX_STATUS_BYTES: violations that
    do not fit are counted in a last one, "N more violations")."""
    status = _status(error, error.violations)
    kept = list(error.violations)
    while status.ByteSize() > MAX_STATUS_BYTES and len(kept) > 1:
        kept.pop()
        summary = FieldViolation("...", f"{len(error.violations) - len(kept)} more violations")
        status = _status(error, [*kept, summary])
    return status


def _status(error: SessionKitError, violations: list[FieldViolation]) -> status_pb2.Status:
    details: list[any_pb2.Any] = []
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata)
    packed = any_pb2.Any()
    packed.Pack(info)
    details.append(packed)
    if violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad)
        details.append(packed)
    if error.retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(error.retry_after * 1e9))
        packed = any_pb2.Any()
        packed.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        details.append(packed)
    from sessionkit.reasons import grpc_code_of  # the registry imports this module's classes

    return status_pb2.Status(code=grpc_code_of(error).value[0], message=error.message, details=details)


def from_status(code: grpc.StatusCode, message: str, status: status_pb2.Status | None) -> SessionKitError:
    """Rebuild the exception the server raised from its status (or from a bare code)."""
    reason: str | None = None
    metadata: dict[str, str] = {}
    violations: list[FieldViolation] = []
    retry_after: float | None = None
    if status is not None:
        message = status.message or message
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, metadata = info.reason, dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations = [FieldViolation(v.field, v.description) for v in bad.field_violations]
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info_retry = error_details_pb2.RetryInfo()
                detail.Unpack(info_retry)
                retry_after = info_retry.retry_delay.ToNanoseconds() / 1e9
    from sessionkit.reasons import exception_class  # the registry imports this module's classes

    cls = exception_class(reason, code) or _BY_CODE.get(code, InternalError)
    if cls is ResourceExhausted and retry_after is not None:
        cls = RateLimited
    return cls(message, reason=reason, metadata=metadata, violations=violations, retry_after=retry_after)


def from_rpc_error(error: grpc.RpcError) -> SessionKitError:
    """The typed exception for a failed call (sync or asyncio stubs)."""
    from grpc_status import rpc_status

    status: status_pb2.Status | None = None
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:  # status details that do not match code/message: use the bare code
        status = None
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    return from_status(code, details or code.name, status)
