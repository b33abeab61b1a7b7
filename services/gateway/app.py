"""The gateway's ASGI app: the remote agent protocol (POST /agent), /health, and REST over the state,
memory and knowledge services (/v1/...), each route a thin adapter onto one SDK client call.

Tenancy: with API keys configured, a request's key decides its tenant, and the SessionRef.app_name of
every call is ``<tenant>`` (or ``<tenant>:<app>`` with ``?app=``), whatever ids the request names;
with auth off ``?app=`` is the app name itself (default "default"). See docs/GATEWAY.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse

from sessionkit_server.common.auth import KeyRing
from sessionkit_server.common.config import ServerSettings
from sessionkit_server.gateway import agent_routes, errors, rest_routes
from sessionkit_server.gateway.admission import Admission
from sessionkit_server.gateway.bodies import UnicodeJsonRoute
from sessionkit_server.gateway.deps import COMMON_ERRORS, Gateway
from sessionkit_server.gateway.fast_state import FastStateRead
from sessionkit_server.gateway.limits import BodyLimit, RateLimiter
from sessionkit_server.gateway.models import Health
from sessionkit_server.gateway.upstream import Upstream
from sessionkit_server.gateway.watch_hub import WatchHub


def create_app(settings: ServerSettings, upstream: Upstream) -> FastAPI:
    """The app for ``settings``, calling the services through ``upstream``."""
    gateway = Gateway(
        settings,
        upstream,
        KeyRing(settings.api_keys),
        RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst),
        WatchHub(settings.max_watchers_per_session, settings.max_watchers_per_tenant),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The channels are the SDK's, per event loop, shared with anything else on the loop (the agent
        # service's upstream in `sessionkit serve`): whoever ends the loop closes them (close_channels).
        yield

    app = FastAPI(
        title="sessionkit gateway",
        version="1.0.0",
        description="The remote agent protocol (POST /agent) and REST over sessionkit's state, memory and "
        'knowledge services. Errors: one JSON shape, {"error": {code, status, reason, message, metadata, '
        "violations, retry_after}}.",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    errors.install(app)
    app.add_middleware(
        BodyLimit, max_bytes=settings.http_max_body_bytes, upload_bytes=settings.http_max_upload_bytes
    )
    # GET state's plain form answered without FastAPI's routing (inside Admission: after the key check).
    app.add_middleware(FastStateRead, gateway=gateway)
    # Added last, so outermost: a request is authenticated and rate limited before its body is read.
    app.add_middleware(Admission, keys=gateway.keys, limiter=gateway.limiter)

    @app.get(
        "/health",
        response_model=Health,
        responses={503: {"model": Health, "description": "A service behind the gateway is not SERVING"}},
        tags=["health"],
    )
    @app.get(
        "/agent/health",
        response_model=Health,
        responses={503: {"model": Health, "description": "A service behind the gateway is not SERVING"}},
        tags=["health"],
        summary="Health (alias)",
        description="The same as /health: PraisonAI's remote Session probes <agent_url>/health.",
    )
    async def health() -> JSONResponse:
        """200 when every service behind the gateway answers SERVING on the gRPC health service."""
        statuses = await upstream.health()
        ok = statuses.pop("overall") == "SERVING"
        body = Health(status="ok" if ok else "unavailable", services=statuses)
        return JSONResponse(body.model_dump(), status_code=200 if ok else 503)

    router = APIRouter(responses=COMMON_ERRORS, route_class=UnicodeJsonRoute)
    agent_routes.add(router)
    rest_routes.add(router)
    app.include_router(router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        # Validation errors are answered 400 in the one error shape, not FastAPI's 422 body.
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
