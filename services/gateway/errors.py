"""The gateway's one error shape and its one mapping: every SessionKitError answers the HTTP status and
gRPC code of its reason in the registry (sessionkit.reasons, documented in docs/ERRORS.md), so HTTP-level
refusals (no route, wrong method, ...) are registry reasons too; request validation is INVALID_REQUEST
(400) with one violation per field; anything unexpected is logged with its traceback and answered 500
without one."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from sessionkit import reasons
from sessionkit.errors import FieldViolation, InvalidArgument, ResourceExhausted, SessionKitError
from sessionkit_server.gateway.models import ErrorBody, ErrorDetail
from sessionkit_server.gateway.models import FieldViolation as FieldViolationOut

log = logging.getLogger("sessionkit.gateway")

#: HTTP-level refusals by status; any other is HTTP_ERROR with its own status.
_HTTP_REASONS: dict[int, reasons.Reason[Any]] = {
    r.http_status: r
    for r in (
        reasons.METHOD_NOT_ALLOWED,
        reasons.NOT_ACCEPTABLE,
        reasons.UNSUPPORTED_MEDIA_TYPE,
    )
}


class TooLarge(StarletteHTTPException):
    """A 413 raised while the body streams in (FastAPI re-raises only an HTTPException from there),
    carrying its registry error for the error handler."""

    def __init__(self, limit: int) -> None:
        self.error: ResourceExhausted = reasons.REQUEST_TOO_LARGE.error(
            limit=limit, metadata={"limit_bytes": str(limit)}
        )
        super().__init__(413, self.error.message)


def error_body(error: SessionKitError, http_status: int | None = None) -> dict[str, Any]:
    detail = ErrorDetail(
        code=http_status or reasons.http_status_of(error),
        status=reasons.grpc_code_of(error).name,
        reason=error.reason,
        message=error.message,
        metadata=error.metadata,
        violations=[FieldViolationOut(field=v.field, description=v.description) for v in error.violations],
        retry_after=error.retry_after,
    )
    return ErrorBody(error=detail).model_dump(mode="json")


def error_response(
    error: SessionKitError, http_status: int | None = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The error's answer; ``http_status`` for a refusal whose status is its own (HTTP_ERROR)."""
    status = http_status or reasons.http_status_of(error)
    out = dict(headers or {})
    if error.retry_after is not None:
        # Retry-After takes whole seconds; round up so a client that honours it is not refused again.
        out["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    return JSONResponse(error_body(error, status), status_code=status, headers=out)


def sessionkit_error_response(error: SessionKitError) -> JSONResponse:
    """The answer to a SessionKitError a route raised (the app's handler, and the fast lanes')."""
    return error_response(_clear(error))


def _clear(error: SessionKitError) -> SessionKitError:
    if reasons.DEADLINE_EXCEEDED.matches(error):
        # The SDK's message ("no answer within the 30s deadline") does not say whose answer.
        error.message = (
            "upstream deadline exceeded: the services behind the gateway did not answer in time "
            f"({error.message})"
        )
    return error


def _loc(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in loc)


def validation_error(exc: RequestValidationError) -> InvalidArgument:
    violations = []
    for problem in exc.errors():
        violations.append(FieldViolation(_loc(problem.get("loc", ())), str(problem.get("msg", "invalid"))))
    return reasons.INVALID_REQUEST.error(detail="the request is not valid", violations=violations)


def install(app: FastAPI) -> None:
    async def on_sessionkit(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, SessionKitError)
        return sessionkit_error_response(exc)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(validation_error(exc))

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        headers = getattr(exc, "headers", None)
        if exc.status_code == 404:
            error: SessionKitError = reasons.ROUTE_NOT_FOUND.error(
                method=request.method, path=request.url.path
            )
        elif isinstance(exc, TooLarge):
            error = exc.error
        else:
            reason = _HTTP_REASONS.get(exc.status_code, reasons.HTTP_ERROR)
            error = reason.error(detail=str(exc.detail))
        return error_response(error, exc.status_code, headers)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
        # Starlette re-raises the error after this answer and the server then closes the connection:
        # say so, or a client's next request on the connection fails with a reset.
        return error_response(
            reasons.INTERNAL.error(detail="internal error in the gateway; its log has the details"),
            headers={"Connection": "close"},
        )

    app.add_exception_handler(SessionKitError, on_sessionkit)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
