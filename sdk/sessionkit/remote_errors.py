"""What an HTTP exchange with a remote server can end in, as sessionkit's typed errors: a connection
that failed or timed out (:class:`RemoteConnectionError`, a ``ConnectionError`` and a
``ServiceUnavailable``), and the gateway's error body (``{"error": {status, reason, message, metadata,
violations, retry_after}}``) rebuilt through sessionkit's one error registry (sessionkit.reasons):
no table of its own, the reason (else the HTTP status) names the gRPC code and so the class."""

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

from sessionkit import reasons
from sessionkit.errors import (
    FieldViolation,
    RemoteConnectionError,
    SessionKitError,
    from_status,
    to_status,
)

__all__ = ["RETRYABLE_STATUSES", "RemoteConnectionError", "json_body", "mapped", "raise_for", "retry_after"]

#: Statuses that mean "the server (or a proxy in front of it) could not serve this now".
RETRYABLE_STATUSES = frozenset({502, 503, 504})


def unreachable(
    reason: reasons.Reason[Any],
    *,
    sent: bool = True,
    status: int | None = None,
    metadata: Mapping[str, str] | None = None,
    retry_after: float | None = None,
    **fields: object,
) -> RemoteConnectionError:
    """A failure to get an answer, as the one class callers catch for it (a ``ConnectionError``) whatever
    the reason's own class; the message is the reason's."""
    return RemoteConnectionError(
        reason.format(**fields),
        reason=reason.name,
        metadata=metadata,
        retry_after=retry_after,
        sent=sent,
        status=status,
    )


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
            raise unreachable(reasons.TLS_FAILED, url=url, detail=error, sent=False) from error
        raise unreachable(
            reasons.CONNECTION_FAILED,
            detail=f"cannot connect to the remote agent at {url}: {error or type(error).__name__}",
            sent=False,
        ) from error
    except httpx.ConnectTimeout as error:
        raise unreachable(
            reasons.CONNECTION_FAILED,
            detail=f"cannot connect to the remote agent at {url}: {error or type(error).__name__}",
            sent=False,
        ) from error
    except httpx.TimeoutException as error:
        raise unreachable(
            reasons.DEADLINE_EXCEEDED,
            detail=f"timed out waiting for the remote agent at {url} ({seconds:.3g}s)",
        ) from error
    except httpx.TransportError as error:
        raise unreachable(
            reasons.CONNECTION_FAILED,
            detail=f"the connection to the remote agent at {url} failed: {error or type(error).__name__}",
        ) from error


def json_body(url: str, response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as error:
        raise unreachable(
            reasons.BAD_REMOTE_RESPONSE,
            detail=f"the remote agent at {url} answered {response.status_code} with a body that is not "
            f"JSON: {response.text[:200]!r}",
            status=response.status_code,
        ) from error


def raise_for(method: str, url: str, response: httpx.Response) -> NoReturn:
    """The typed error for an error answer: the gateway's one error shape through sessionkit's error
    registry (sessionkit.reasons); any other body by its HTTP status."""
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
            reason=reason or (reasons.DEADLINE_EXCEEDED if status == 504 else reasons.UNAVAILABLE).name,
            metadata=metadata,
            retry_after=delay,
            status=status,
        )
    violations = [
        FieldViolation(str(v.get("field", "")), str(v.get("description", "")))
        for v in detail.get("violations") or []
        if isinstance(v, dict)
    ]
    code = _grpc_code(detail.get("status"), reason, status)
    # Rebuilt through the one registry (reason first, then the gRPC code), as the gRPC transport does.
    carrier = SessionKitError(
        text, reason=reason, metadata=metadata, violations=violations, retry_after=delay
    )
    error = from_status(code, text, to_status(carrier))
    error.message = f"{text} ({where})"
    error.args = (error.message,)
    raise error


def _grpc_code(name: Any, reason: str | None, http_status: int) -> grpc.StatusCode:
    """The answer's gRPC code: its ``status``, else its registered reason's, else its HTTP status's."""
    if isinstance(name, str) and name in grpc.StatusCode.__members__:
        return grpc.StatusCode[name]
    registered = reasons.lookup(reason)
    return registered.code if registered is not None else reasons.grpc_code_for_http(http_status)
