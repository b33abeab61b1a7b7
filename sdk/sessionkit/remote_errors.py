"""What an HTTP exchange with a remote server can end in, as sessionkit's typed errors: a connection
that failed or timed out (:class:`RemoteConnectionError`, a ``ConnectionError`` and a
``ServiceUnavailable``), and the gateway's error body (``{"error": {status, reason, message, metadata,
violations, retry_after}}``) rebuilt through sessionkit's one error table."""

from __future__ import annotations

import contextlib
import email.utils
import ssl
import time
from collections.abc import Iterator, Mapping
from datetime import UTC
from typing import Any, NoReturn

import grpc
import httpx

from sessionkit.errors import (
    FieldViolation,
    ServiceUnavailable,
    SessionKitError,
    from_status,
    to_status,
)

#: Statuses that mean "the server (or a proxy in front of it) could not serve this now".
RETRYABLE_STATUSES = frozenset({502, 503, 504})
BAD_RESPONSE = "BAD_REMOTE_RESPONSE"
TLS_FAILED = "TLS_FAILED"


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
        retry_after: float | None = None,
        sent: bool = True,
        status: int | None = None,
    ) -> None:
        ServiceUnavailable.__init__(self, message, reason=reason, metadata=metadata, retry_after=retry_after)
        self.sent = sent
        self.status = status


def _tls_failure(error: BaseException) -> bool:
    """Whether a connection failed in the TLS handshake (an untrusted certificate, a plain-HTTP server
    on an https URL), found in the exception's causes."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def retry_after(response: httpx.Response, body_value: Any) -> float | None:
    """Seconds from the Retry-After header (delta-seconds or an HTTP date), else the error body's."""
    header = response.headers.get("retry-after")
    if header:
        header = header.strip()
        try:
            return max(0.0, float(header))
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(header)
        except (TypeError, ValueError):
            when = None  # unreadable: fall back to the body's value, else plain backoff
        if when is not None:
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            return max(0.0, when.timestamp() - time.time())
    if isinstance(body_value, (int, float)) and not isinstance(body_value, bool):
        return max(0.0, float(body_value))
    return None


@contextlib.contextmanager
def mapped(url: str, seconds: float) -> Iterator[None]:
    """httpx's transport errors as RemoteConnectionError (``sent``: whether the request may have
    reached the server)."""
    try:
        yield
    except httpx.ConnectError as error:
        if _tls_failure(error):
            raise RemoteConnectionError(
                f"TLS with the remote agent at {url} failed: {error}. For a private CA, point "
                "SSL_CERT_FILE at its certificate",
                reason=TLS_FAILED,
                sent=False,
            ) from error
        raise RemoteConnectionError(
            f"cannot connect to the remote agent at {url}: {error or type(error).__name__}",
            reason="CONNECTION_FAILED",
            sent=False,
        ) from error
    except httpx.ConnectTimeout as error:
        raise RemoteConnectionError(
            f"cannot connect to the remote agent at {url}: {error or type(error).__name__}",
            reason="CONNECTION_FAILED",
            sent=False,
        ) from error
    except httpx.TimeoutException as error:
        raise RemoteConnectionError(
            f"timed out waiting for the remote agent at {url} ({seconds:.3g}s)",
            reason="DEADLINE_EXCEEDED",
        ) from error
    except httpx.TransportError as error:
        raise RemoteConnectionError(
            f"the connection to the remote agent at {url} failed: {error or type(error).__name__}",
            reason="CONNECTION_FAILED",
        ) from error


def json_body(url: str, response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as error:
        raise RemoteConnectionError(
            f"the remote agent at {url} answered {response.status_code} with a body that is not JSON: "
            f"{response.text[:200]!r}",
            reason=BAD_RESPONSE,
            status=response.status_code,
        ) from error


def raise_for(method: str, url: str, response: httpx.Response) -> NoReturn:
    """The typed error for an error answer: the gateway's one error shape through sessionkit's error
    table; any other body by its HTTP status."""
    status = response.status_code
    detail: dict[str, Any] = {}
    try:
        body = response.json()
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            detail = body["error"]
    except ValueError:
        pass
    text = str(detail.get("message") or response.text[:300] or response.reason_phrase)
    where = f"{method} {url} -> {status}"
    delay = retry_after(response, detail.get("retry_after"))
    if status == 429 and delay is None:
        delay = 0.0  # retried with plain backoff
    metadata = {str(k): str(v) for k, v in (detail.get("metadata") or {}).items()}
    reason = detail.get("reason") if isinstance(detail.get("reason"), str) else None
    if status in RETRYABLE_STATUSES:
        raise RemoteConnectionError(
            f"the remote agent at {url} is unavailable ({status}): {text}",
            reason=reason or ("DEADLINE_EXCEEDED" if status == 504 else "UNAVAILABLE"),
            metadata=metadata,
            retry_after=delay,
            status=status,
        )
    violations = [
        FieldViolation(str(v.get("field", "")), str(v.get("description", "")))
        for v in detail.get("violations") or []
        if isinstance(v, dict)
    ]
    code = _grpc_code(detail.get("status"), status)
    # Rebuilt through the one table (reason first, then the gRPC code), as the gRPC transport does.
    carrier = SessionKitError(
        text, reason=reason, metadata=metadata, violations=violations, retry_after=delay
    )
    error = from_status(code, text, to_status(carrier))
    error.message = f"{text} ({where})"
    error.args = (error.message,)
    raise error


_HTTP_TO_GRPC = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    409: grpc.StatusCode.ABORTED,
    412: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    501: grpc.StatusCode.UNIMPLEMENTED,
}


def _grpc_code(name: Any, http_status: int) -> grpc.StatusCode:
    if isinstance(name, str) and name in grpc.StatusCode.__members__:
        return grpc.StatusCode[name]
    return _HTTP_TO_GRPC.get(http_status, grpc.StatusCode.INTERNAL)
