"""The gateway's one error shape and its one mapping: every SessionKitError answers its own
``http_status`` and ``reason`` (sessionkit.errors, the table in docs/ERRORS.md); request validation
is InvalidArgument (400) with one violation per field; anything unexpected is logged with its
traceback and answered 500 without one."""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from sessionkit.errors import (
    DeadlineExceeded,
    FieldViolation,
    InternalError,
    InvalidArgument,
    NotFound,
    SessionKitError,
)
from sessionkit_server.gateway.models import ErrorBody, ErrorDetail
from sessionkit_server.gateway.models import FieldViolation as FieldViolationOut

log = logging.getLogger("sessionkit.gateway")

#: HTTP-level refusals that have no SessionKitError class (no route, wrong method, ...).
_HTTP_REASONS = {
    404: ("NOT_FOUND", "ROUTE_NOT_FOUND"),
    405: ("UNIMPLEMENTED", "METHOD_NOT_ALLOWED"),
    406: ("INVALID_ARGUMENT", "NOT_ACCEPTABLE"),
    413: ("RESOURCE_EXHAUSTED", "REQUEST_TOO_LARGE"),
    415: ("INVALID_ARGUMENT", "UNSUPPORTED_MEDIA_TYPE"),
}


def error_body(error: SessionKitError) -> dict[str, Any]:
    detail = ErrorDetail(
        code=error.http_status,
        status=error.code.name,
        reason=error.reason,
        message=error.message,
        metadata=error.metadata,
        violations=[FieldViolationOut(field=v.field, description=v.description) for v in error.violations],
        retry_after=error.retry_after,
    )
    return ErrorBody(error=detail).model_dump(mode="json")


def error_response(error: SessionKitError) -> JSONResponse:
    headers = {}
    if error.retry_after is not None:
        # Retry-After takes whole seconds; round up so a client that honours it is not refused again.
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    return JSONResponse(error_body(error), status_code=error.http_status, headers=headers)


def _clear(error: SessionKitError) -> SessionKitError:
    if isinstance(error, DeadlineExceeded) and error.reason == "DEADLINE_EXCEEDED":
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
    return InvalidArgument("the request is not valid", reason="INVALID_REQUEST", violations=violations)


def install(app: FastAPI) -> None:
    async def on_sessionkit(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, SessionKitError)
        return error_response(_clear(exc))

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(validation_error(exc))

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            return error_response(
                NotFound(f"no route {request.method} {request.url.path}", reason="ROUTE_NOT_FOUND")
            )
        status, reason = _HTTP_REASONS.get(exc.status_code, ("UNKNOWN", "HTTP_ERROR"))
        body = ErrorBody(
            error=ErrorDetail(code=exc.status_code, status=status, reason=reason, message=str(exc.detail))
        ).model_dump(mode="json")
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(InternalError("internal error in the gateway; its log has the details"))

    app.add_exception_handler(SessionKitError, on_sessionkit)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
