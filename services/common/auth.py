"""API keys and tenants, shared by the HTTP gateway and the gRPC server.

A key maps to a tenant (``ServerSettings.api_keys``: only sha256 digests are kept). A tenant owns the
apps ``<tenant>`` and ``<tenant>:<anything>``: the gateway builds every SessionRef.app_name that way, so
a key reaches its own tenant's users and sessions whatever ids a request names, and the gRPC
interceptor below checks the same rule on every request, so calling the services directly with a key
reaches no more than the gateway does. The tenant ``*`` is an operator key: every app, and the
admin-only calls (ReindexMemories with all_users).

Keys travel as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` (HTTP headers, gRPC metadata).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message

from sessionkit import reasons
from sessionkit.errors import PermissionDenied

log = logging.getLogger("sessionkit.auth")

ADMIN_TENANT = "*"
API_KEY_HEADER = "x-api-key"
AUTHORIZATION_HEADER = "authorization"
_SESSION_REF = "sessionkit.v1.SessionRef"
_DEFAULT_APP = "default"  # what the services make of an empty app_name
#: Calls that need no key: Kubernetes probes and load balancers check health without credentials.
_OPEN_METHODS = ("/grpc.health.v1.Health/",)


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who a request is from. ``key_id`` (a digest prefix, never the key) names the key in logs and
    rate-limit buckets; with auth off the tenant is None and any app may be named."""

    tenant: str | None
    key_id: str

    @property
    def admin(self) -> bool:
        return self.tenant is None or self.tenant == ADMIN_TENANT

    def app_name(self, app: str | None) -> str:
        """The SessionRef.app_name for the app a request names (None: the tenant's own app)."""
        if self.admin:
            return app or _DEFAULT_APP
        return f"{self.tenant}:{app}" if app else str(self.tenant)

    def may_use(self, app_name: str) -> bool:
        if self.admin:
            return True
        return app_name == self.tenant or app_name.startswith(f"{self.tenant}:")


ANONYMOUS = Principal(None, "anonymous")


class KeyRing:
    """The configured keys, as digests. Lookup hashes the presented key and compares it with every
    digest in constant time (no early exit), so timing says nothing about which key almost matched."""

    def __init__(self, digests: Mapping[str, str]) -> None:
        self._digests = [(d.encode(), tenant) for d, tenant in digests.items()]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def authenticate(self, key: str | None) -> Principal:
        if not self.enabled:
            return ANONYMOUS
        if not key:
            raise reasons.API_KEY_MISSING.error()
        digest = key_digest(key).encode()
        tenant: str | None = None
        for stored, owner in self._digests:
            if hmac.compare_digest(stored, digest):
                tenant = owner
        if tenant is None:
            raise reasons.API_KEY_INVALID.error()
        return Principal(tenant, digest.decode()[:12])


def key_from_headers(authorization: str | None, api_key: str | None) -> str | None:
    """The key of ``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` (None when neither is sent)."""
    if api_key:
        return api_key.strip()
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise reasons.API_KEY_MALFORMED.error()
        return value.strip()
    return None


def is_loopback(host: str) -> bool:
    if host in ("localhost", "") or host.startswith("unix:"):
        return host != ""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_binding(auth_enabled: bool, host: str, what: str) -> None:
    """Auth off is allowed only on a loopback interface; say so in the log at start either way."""
    if auth_enabled:
        log.info("%s: API key authentication on", what, extra={"host": host})
        return
    if not is_loopback(host):
        raise reasons.AUTH_REQUIRED.error(what=what, host=host)
    log.warning(
        "%s: authentication is OFF (no API keys configured); allowed because it listens on loopback "
        "only (%s)",
        what,
        host,
        extra={"host": host},
    )


# -- the gRPC side -------------------------------------------------------------------------------------


def scoped_apps(message: Message) -> tuple[list[str], bool]:
    """The app names a request touches (an unset SessionRef counts as the services' default app) and
    whether it asks for an admin-only, all-apps operation. Follow-up stream messages (file chunks,
    tool results) name none."""
    apps: list[str] = []
    global_scope = False
    for field in message.DESCRIPTOR.fields:
        if (
            field.containing_oneof is not None
            and message.WhichOneof(field.containing_oneof.name) != field.name
        ):
            continue
        value = getattr(message, field.name)
        if field.message_type is not None:
            if field.message_type.GetOptions().map_entry:
                continue
            items = list(value) if field.is_repeated else [value]
            for item in items:
                if field.message_type.full_name == _SESSION_REF:
                    apps.append(item.app_name or _DEFAULT_APP)
                elif field.is_repeated or message.HasField(field.name):
                    inner, inner_global = scoped_apps(item)
                    apps += inner
                    global_scope = global_scope or inner_global
        elif field.name == "app_name" and isinstance(value, str):
            apps.append(value or _DEFAULT_APP)
        elif field.name == "all_users" and value is True:
            global_scope = True
    return apps, global_scope


def check_request(principal: Principal, message: Message, method: str) -> None:
    apps, global_scope = scoped_apps(message)
    if global_scope and not principal.admin:
        raise PermissionDenied(f"{method} across every app needs an operator ('*') key")
    for app in apps:
        if not principal.may_use(app):
            raise PermissionDenied(
                f"this API key belongs to tenant {principal.tenant!r}; app_name {app!r} is not one of its "
                f"apps ('{principal.tenant}' or '{principal.tenant}:<app>')",
                metadata={"app_name": app},
            )


def key_from_metadata(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The key of a gRPC call (``context.invocation_metadata()``); what a service forwards upstream."""
    values = {k.lower(): v for k, v in metadata or () if isinstance(v, str)}
    return key_from_headers(values.get(AUTHORIZATION_HEADER), values.get(API_KEY_HEADER))


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Checks the key in the call's metadata and that every SessionRef of every request message is in
    the key's tenant. Install it inside the error-mapping interceptor (its errors become statuses)."""

    def __init__(self, keys: KeyRing) -> None:
        self.keys = keys

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(_OPEN_METHODS):
            return handler
        kinds = {
            "unary_unary": grpc.unary_unary_rpc_method_handler,
            "unary_stream": grpc.unary_stream_rpc_method_handler,
            "stream_unary": grpc.stream_unary_rpc_method_handler,
            "stream_stream": grpc.stream_stream_rpc_method_handler,
        }
        for kind, make in kinds.items():
            behavior = getattr(handler, kind)
            if behavior is None:
                continue
            wrapped = self._wrap(
                behavior, method, kind.startswith("stream_"), streaming_response=kind.endswith("_stream")
            )
            return make(
                wrapped,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _principal(self, context: Any) -> Principal:
        return self.keys.authenticate(key_from_metadata(context.invocation_metadata()))

    def _wrap(self, behavior: Any, method: str, streaming_request: bool, streaming_response: bool) -> Any:
        async def checked_requests(principal: Principal, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
            async for message in requests:
                check_request(principal, message, method)
                yield message

        if streaming_response:  # as ErrorAndLogInterceptor: response streams are async iterators

            async def stream_wrapper(request: Any, context: Any) -> AsyncIterator[Any]:
                principal = self._principal(context)
                if streaming_request:
                    request = checked_requests(principal, request)
                else:
                    check_request(principal, request, method)
                async for response in behavior(request, context):
                    yield response

            return stream_wrapper

        async def unary_wrapper(request: Any, context: Any) -> Any:
            principal = self._principal(context)
            if streaming_request:
                request = checked_requests(principal, request)
            else:
                check_request(principal, request, method)
            return await behavior(request, context)

        return unary_wrapper


def server_interceptors(api_keys: Mapping[str, str]) -> list[grpc.aio.ServerInterceptor]:  # type: ignore[type-arg]
    """The auth interceptor when keys are configured, else none (for create_server's list)."""
    return [ApiKeyInterceptor(KeyRing(api_keys))] if api_keys else []


def server_credentials(cert_file: Any, key_file: Any) -> grpc.ServerCredentials | None:
    """TLS credentials of the gRPC server from PEM files (None: plaintext)."""
    if cert_file is None or key_file is None:
        return None
    with open(key_file, "rb") as key, open(cert_file, "rb") as cert:
        return grpc.ssl_server_credentials([(key.read(), cert.read())])
