"""The gateway's REST API (``<base>/v1/sessions/...``) behind the SDK's client interfaces
(sessionkit.clients): the state calls here, memory and knowledge in remote_rest_memory and
remote_rest_knowledge, with the same signatures and results as the gRPC clients, so a remote session
runs the same session logic (auto_save, ``temp:`` keys, creation on first use) as a gRPC one. What the
REST API does not offer raises NotImplementedByServer (reason NOT_AVAILABLE_REMOTELY) naming the call.

Every write sends an ``Idempotency-Key`` header (a fresh key per call unless the caller gives one),
the same on each of its retries; the gateway passes it to the gRPC request's idempotency_key, so a write
repeated after a lost reply (a 502/503/504, a dropped connection) is applied once and answered as the
first time. So writes are retried like reads, increments, appends and events included.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from sessionkit import reasons
from sessionkit.errors import InvalidArgument, NotImplementedByServer
from sessionkit.ids import DEFAULT
from sessionkit.jsonvalues import JsonValue, check_json
from sessionkit.remote import GatewayClient
from sessionkit.state_client import Event, SessionInfo, SessionRef, StateChange, StateVersion

JsonObject = dict[str, JsonValue]
IDEMPOTENCY_HEADER = "Idempotency-Key"


def _time(value: Any) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _session_info(ref: SessionRef, body: dict[str, Any]) -> SessionInfo:
    return SessionInfo(
        ref.app_name,
        str(body["user_id"]),
        str(body["session_id"]),
        _time(body.get("create_time")),
        _time(body.get("update_time")),
        _time(body.get("expire_time")),
        body.get("ttl_seconds"),
        int(body.get("version", 0)),
        int(body.get("event_count", 0)),
    )


def _event(body: dict[str, Any]) -> Event:
    return Event(
        int(body["id"]),
        str(body["role"]),
        str(body.get("content", "")),
        str(body.get("author", "")),
        dict(body.get("metadata") or {}),
        _time(body.get("create_time")),
    )


def _change(body: dict[str, Any]) -> StateChange:
    return StateChange(
        int(body["version"]),
        str(body["operation"]),
        str(body.get("key", "")),
        body.get("value"),
        dict(body.get("state") or {}),
        _time(body.get("time")),
    )


def _number(value: Any) -> int | float:
    number = float(value)
    return int(number) if number.is_integer() else number


class Rest:
    def __init__(self, gateway: GatewayClient) -> None:
        self.gateway = gateway

    @staticmethod
    def path(ref: SessionRef, *parts: str) -> str:
        return "/".join(["/v1/sessions", quote(ref.session_id, safe=""), *(quote(p, safe="") for p in parts)])

    @staticmethod
    def params(ref: SessionRef, **extra: Any) -> dict[str, Any]:
        """user_id, and app unless it is the default: with API keys the gateway puts every call in the
        key's tenant (``?app=`` picks an app inside it), so the default app is sent as no app at all."""
        params: dict[str, Any] = {"user_id": ref.user_id}
        if ref.app_name != DEFAULT:
            params["app"] = ref.app_name
        params.update({k: v for k, v in extra.items() if v is not None})
        return params

    async def call(
        self,
        method: str,
        ref: SessionRef,
        *parts: str,
        idempotent: bool = True,
        idempotency_key: str | None = None,
        **kwargs: Any,
    ) -> Any:
        params = self.params(ref, **kwargs.pop("params", {}))
        headers = {IDEMPOTENCY_HEADER: idempotency_key} if idempotency_key else None
        return await self.gateway.request(
            method, self.path(ref, *parts), params=params, idempotent=idempotent, headers=headers, **kwargs
        )

    async def write(self, method: str, ref: SessionRef, *parts: str, key: str | None, **kwargs: Any) -> Any:
        """A write: one idempotency key for the call (``key``, else a fresh one), sent with every attempt,
        so it is retried after a 502/503/504 and applied once."""
        return await self.call(method, ref, *parts, idempotency_key=key or uuid.uuid4().hex, **kwargs)


def unsupported(what: str) -> NotImplementedByServer:
    return reasons.NOT_AVAILABLE_REMOTELY.error(what=what, why="the gateway's REST API does not offer it")


class RemoteStateClient(Rest):
    """The state calls AsyncSession makes, over ``/v1/sessions/{id}[/state|/events]``."""

    async def create_session(
        self,
        ref: SessionRef,
        *,
        ttl_seconds: int | None = None,
        initial_state: JsonObject | None = None,
        get_if_exists: bool = True,
    ) -> tuple[SessionInfo, bool]:
        body: dict[str, Any] = {"session_id": ref.session_id, "get_if_exists": get_if_exists}
        if ttl_seconds is not None:
            body["ttl_seconds"] = ttl_seconds
        if initial_state is not None:
            body["state"] = initial_state
        params = self.params(ref)
        # With get_if_exists a repeat is harmless (200, created=false).
        reply = await self.gateway.request(
            "POST", "/v1/sessions", params=params, json=body, idempotent=get_if_exists
        )
        return _session_info(ref, reply), bool(reply.get("created"))

    async def get_session(self, ref: SessionRef) -> SessionInfo:
        return _session_info(ref, await self.call("GET", ref))

    async def delete_session(self, ref: SessionRef, allow_missing: bool = False) -> bool:
        # No idempotency key in the proto: repeated only when a repeat is harmless (allow_missing).
        reply = await self.call(
            "DELETE", ref, params={"allow_missing": allow_missing}, idempotent=allow_missing
        )
        return bool(reply["deleted"])

    async def get_state(self, ref: SessionRef, keys: list[str] | None = None) -> tuple[JsonObject, int]:
        # Keys as query parameters (not /state/{key}): a key may contain '/', which a path cannot carry.
        reply = await self.call("GET", ref, "state", params={"keys": keys or None})
        return dict(reply["state"]), int(reply["version"])

    async def save_state(
        self,
        ref: SessionRef,
        state: JsonObject,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
        delete_keys: Sequence[str] = (),
    ) -> int:
        body: dict[str, Any] = {"state": check_json(state, "state"), "expected_version": expected_version}
        if delete_keys:
            body["delete_keys"] = list(delete_keys)
        return int((await self.write("PUT", ref, "state", key=idempotency_key, json=body))["version"])

    async def set_value(
        self,
        ref: SessionRef,
        key: str,
        value: Any,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
    ) -> int:
        body = {"value": check_json(value, key), "expected_version": expected_version}
        reply = await self.write("PUT", ref, "state", key, key=idempotency_key, json=body)
        return int(reply["version"])

    async def delete_value(
        self,
        ref: SessionRef,
        key: str,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[int, bool]:
        params = {"expected_version": expected_version}
        reply = await self.write("DELETE", ref, "state", key, key=idempotency_key, params=params)
        return int(reply["version"]), bool(reply["existed"])

    async def clear_state(
        self,
        ref: SessionRef,
        expected_version: int | None = None,
        *,
        include_user_scope: bool = False,
        include_app_scope: bool = False,
        idempotency_key: str | None = None,
    ) -> int:
        params = {
            "expected_version": expected_version,
            "include_user_scope": include_user_scope,
            "include_app_scope": include_app_scope,
        }
        reply = await self.write("DELETE", ref, "state", key=idempotency_key, params=params)
        return int(reply["version"])

    async def increment(
        self,
        ref: SessionRef,
        key: str,
        delta: float = 1,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[int, int | float]:
        if isinstance(delta, bool) or not isinstance(delta, (int, float)):
            raise InvalidArgument(f"delta must be a number, not {type(delta).__name__}")
        body = {"increment": delta, "expected_version": expected_version}
        reply = await self.write("PATCH", ref, "state", key, key=idempotency_key, json=body)
        return int(reply["version"]), _number(reply["value"])

    async def append(
        self,
        ref: SessionRef,
        key: str,
        values: list[Any],
        expected_version: int | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[int, int]:
        body = {"append": check_json(list(values), "values"), "expected_version": expected_version}
        reply = await self.write("PATCH", ref, "state", key, key=idempotency_key, json=body)
        return int(reply["version"]), int(reply["length"])

    async def append_event(
        self,
        ref: SessionRef,
        role: str,
        content: str,
        author: str = "",
        metadata: JsonObject | None = None,
        idempotency_key: str | None = None,
    ) -> Event:
        body = {"role": role, "content": content, "author": author, "metadata": metadata or {}}
        return _event(await self.write("POST", ref, "events", key=idempotency_key, json=body))

    async def list_events(
        self, ref: SessionRef, page_size: int = 0, page_token: str = "", tail: int = 0, author: str = ""
    ) -> tuple[list[Event], str]:
        params = {"page_size": page_size, "page_token": page_token, "tail": tail, "author": author}
        reply = await self.call("GET", ref, "events", params=params)
        return [_event(e) for e in reply["events"]], str(reply.get("next_page_token", ""))

    async def watch(self, ref: SessionRef, since_version: int = 0) -> AsyncIterator[StateChange]:
        """``GET .../watch`` (Server-Sent Events): the current state (SNAPSHOT), then every change."""
        params = self.params(ref, since_version=since_version)
        async for event, data in self.gateway.events("GET", self.path(ref, "watch"), params=params):
            if event == "change" and isinstance(data, dict):
                yield _change(data)

    async def list_versions(
        self, ref: SessionRef, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[StateVersion], str]:
        params = {"page_size": page_size, "page_token": page_token}
        reply = await self.call("GET", ref, "versions", params=params)
        versions = [
            StateVersion(
                int(v["version"]),
                str(v["operation"]),
                str(v.get("key", "")),
                dict(v["state"]),
                _time(v.get("time")),
            )
            for v in reply["versions"]
        ]
        return versions, str(reply.get("next_page_token", ""))

    async def restore_version(
        self,
        ref: SessionRef,
        version: int,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
    ) -> int:
        params = {"expected_version": expected_version}
        path = ("versions", str(int(version)), "restore")
        return int((await self.write("POST", ref, *path, key=idempotency_key, params=params))["version"])
