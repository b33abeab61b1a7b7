"""Remote mode: a Session created with ``agent_url=``/``remote_url=`` talks to a sessionkit gateway (or any
server speaking the seed's remote agent protocol) over HTTP instead of gRPC.

- ``chat()``/``send_message()`` POST the documented body (``{"messages": [...], "context": {"session_id",
  "user_id"}}``, with the legacy ``query``/``session_id``/``user_id`` fields alongside) to the agent URL
  and return the ``response`` text.
- ``test_remote_connection()`` asks ``GET <base>/health`` (``<base>``: the agent URL without its last
  path segment, so ``host:8000/agent`` -> ``host:8000/health``).
- State, memory, knowledge and events go through the gateway's REST API (``<base>/v1/sessions/...``),
  with the clients of sessionkit.remote_rest, which all send their requests through
  :meth:`GatewayClient.request` (retries and errors in one place).

- ``chat(message, stream=True)`` asks for Server-Sent Events (``"stream": true``) and yields the text
  pieces as they arrive (a server that answers plain JSON yields its whole answer once).

Retries: the SDK's one policy (sessionkit.retry, the same as for gRPC) within the session's
``timeout``: a connection that could not be opened and 429 (the rate limit refuses before any work is
done; ``Retry-After`` is honoured, unless it asks for longer than the time left: then the 429 is raised
at once) are always retried; 502/503/504 and a connection lost mid-request only for requests that are
safe to repeat: reads, and writes and chat turns, which carry an ``Idempotency-Key`` (one per logical
call, the same on every attempt), so the server applies a repeated write once. CreateSession and
DeleteSession have no key in the proto: they are repeated only when that is harmless (get_if_exists,
allow_missing, which AsyncSession uses). A stream is retried until it starts, never after. Other 4xx
are never retried. HTTP errors become typed errors in sessionkit.remote_errors: what cannot reach the
server ends as :class:`RemoteConnectionError` (sessionkit.errors, re-exported here), a ``ConnectionError``
(the seed's error) that is also a :class:`ServiceUnavailable`; other refusals are the typed errors their
reason names in the one registry (sessionkit.reasons).
"""

from __future__ import annotations

import asyncio
import json as jsonlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from sessionkit import reasons
from sessionkit.errors import FieldViolation, InvalidArgument, RemoteConnectionError
from sessionkit.remote_errors import RETRYABLE_STATUSES, json_body, mapped, raise_for, unreachable
from sessionkit.retry import RetryPolicy

__all__ = ["RETRYABLE_STATUSES", "GatewayClient", "RemoteConnectionError", "agent_base_url"]


def agent_base_url(agent_url: str) -> str:
    """The server's base URL: the agent URL without its last path segment (and without query)."""
    parts = urlsplit(agent_url)
    path = parts.path.rstrip("/")
    base = path.rsplit("/", 1)[0] if "/" in path else ""
    return urlunsplit((parts.scheme, parts.netloc, base, "", ""))


class GatewayClient:
    """HTTP to one remote agent server: the agent URL, its health check and its REST API.

    One ``httpx.AsyncClient`` (a keep-alive connection pool) per event loop it is used on; ``aclose()``
    releases them."""

    def __init__(
        self,
        agent_url: str,
        api_key: str | None,
        policy: RetryPolicy,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.agent_url = agent_url
        self.base_url = agent_base_url(agent_url)
        self.policy = policy
        self.headers = {"Accept": "application/json", "User-Agent": "sessionkit-sdk"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self._transport = transport
        self._clients: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None or client.is_closed:
            client = httpx.AsyncClient(
                headers=self.headers, timeout=self.policy.deadline, transport=self._transport
            )
            self._clients[loop] = client
        return client

    async def aclose(self) -> None:
        """Close the connection pool of the running loop (and forget those of loops already closed)."""
        loop = asyncio.get_running_loop()
        client = self._clients.pop(loop, None)
        if client is not None:
            await client.aclose()
        for owner in [owner for owner in self._clients if owner.is_closed()]:
            del self._clients[owner]

    # -- health -------------------------------------------------------------------------------------

    async def health(self) -> bool:
        """True when the server says it is healthy: ``GET <base>/health`` answers 200. A server with no
        such route (404) is asked as PraisonAI's client does: ``GET <agent_url>/health``, then ``HEAD
        <agent_url>`` (200, or 405 for a POST-only route, means the agent route is there). A 503 (the
        services behind the gateway are down) is False: no fallback hides it."""
        client = self._client()
        timeout = self.policy.deadline
        try:
            reply = await client.get(self.base_url + "/health", timeout=timeout)
            if reply.status_code != 404:
                return reply.status_code == 200
            reply = await client.get(self.agent_url.rstrip("/") + "/health", timeout=timeout)
            if reply.status_code != 404:
                return reply.status_code == 200
            reply = await client.head(self.agent_url, timeout=timeout)
            return reply.status_code in (200, 405)
        except httpx.HTTPError:
            return False

    # -- requests -----------------------------------------------------------------------------------

    @staticmethod
    def _chat_body(session_id: str, user_id: str, message: str, extra: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(message, str) or not message.strip():
            raise InvalidArgument(
                "chat() needs a non-empty message", violations=[FieldViolation("message", "a non-empty str")]
            )
        body: dict[str, Any] = {
            "messages": [{"role": "user", "content": message}],
            "context": {"session_id": session_id, "user_id": user_id},
            # The legacy fields too: PraisonAI's client and the seed's own example server use
            # {"query", "session_id", "user_id"} (its handler reads data["query"]), so one body works
            # with both kinds of servers; the gateway reads the documented fields first.
            "query": message,
            "session_id": session_id,
            "user_id": user_id,
        }
        reserved = ("messages", "context", "stream", "query", "session_id", "user_id")
        body.update({k: v for k, v in extra.items() if k not in reserved})
        return body

    async def chat(
        self, session_id: str, user_id: str, message: str, extra: Mapping[str, Any]
    ) -> dict[str, Any]:
        """One turn of the remote agent protocol; the whole JSON answer ({"response", "session_id",
        "metadata"}). ``extra``: more body fields (e.g. "agent", "options"), as PraisonAI's client
        merges its kwargs."""
        body = self._chat_body(session_id, user_id, message, extra)
        # One key for every attempt: the gateway runs a repeated turn once, so retrying after a 502/504
        # (the turn may have run) cannot answer twice or store the turn twice.
        headers = {"Idempotency-Key": uuid.uuid4().hex}
        answer = await self.request("POST", self.agent_url, json=body, headers=headers, idempotent=True)
        if not isinstance(answer, dict) or not isinstance(answer.get("response"), str):
            raise unreachable(
                reasons.BAD_REMOTE_RESPONSE,
                detail=f"the remote agent at {self.agent_url} answered without a 'response' text: "
                f"{answer!r:.200}",
                status=200,
            )
        return answer

    def chat_stream(
        self, session_id: str, user_id: str, message: str, extra: Mapping[str, Any]
    ) -> AsyncIterator[str]:
        """One turn with ``"stream": true``: the reply's text pieces as the server sends them (SSE
        ``delta`` events). The request is checked at once; the turn starts on the first ``anext``.
        Opening the stream is retried like :meth:`chat` (same Idempotency-Key); once text has
        arrived, a failure is raised (an SSE ``error`` event as its typed error), never retried."""
        body = self._chat_body(session_id, user_id, message, extra)
        body["stream"] = True
        headers = {"Idempotency-Key": uuid.uuid4().hex, "Accept": "text/event-stream"}
        return self._chat_stream(body, headers)

    async def _chat_stream(self, body: dict[str, Any], headers: dict[str, str]) -> AsyncIterator[str]:
        streamed = False
        events = self.events(
            "POST", self.agent_url, json=body, headers=headers, read_timeout=self.policy.deadline
        )
        try:
            async for event, data in events:
                if event == "delta" and isinstance(data, dict):
                    text = data.get("text")
                    if isinstance(text, str) and text:
                        streamed = True
                        yield text
                elif event == "result":
                    if not isinstance(data, dict) or not isinstance(data.get("response"), str):
                        raise unreachable(
                            reasons.BAD_REMOTE_RESPONSE,
                            detail=f"the remote agent at {self.agent_url} ended its stream without a "
                            f"'response' text: {data!r:.200}",
                            status=200,
                        )
                    if not streamed and data["response"]:
                        yield data["response"]  # a server that answered JSON, or sent no deltas
                    return
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    async def events(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        read_timeout: float | None = None,
    ) -> AsyncIterator[tuple[str, Any]]:
        """Server-Sent Events of one request: ``(event, data)`` pairs, data parsed as JSON. Opening is
        retried as :meth:`request` does (the request must be safe to repeat); an ``error`` event is raised
        as its typed error. ``read_timeout``: the longest wait for the next bytes (None: no limit, for a
        watch; a gateway's heartbeats bound it anyway: :func:`_silence_limited`). The answer's head
        comes within the call's deadline. A server that answers JSON instead of a stream gives one
        ``("result", body)``."""
        if url.startswith("/"):
            url = self.base_url + url
        accept = {"Accept": "text/event-stream", **(headers or {})}

        async def attempt(remaining: float) -> httpx.Response:
            client = self._client()
            timeout = httpx.Timeout(remaining, read=read_timeout)
            request = client.build_request(
                method, url, params=params, json=json, headers=accept, timeout=timeout
            )
            try:
                # The answer's head within the time left, whatever ``read_timeout`` allows the body.
                async with asyncio.timeout(remaining):
                    with mapped(url, remaining):
                        response = await client.send(request, stream=True)
            except TimeoutError:
                raise unreachable(
                    reasons.DEADLINE_EXCEEDED,
                    detail=f"timed out waiting for the remote agent at {url} to start its stream "
                    f"({remaining:.3g}s)",
                ) from None
            if response.status_code >= 400:
                with mapped(url, remaining):
                    await response.aread()
                await response.aclose()
                raise_for(method, url, response)
            return response

        response = await self._retrying(url, True, attempt)
        try:
            if "text/event-stream" not in response.headers.get("content-type", ""):
                with mapped(url, self.policy.deadline):
                    await response.aread()
                yield "result", json_body(url, response)
                return
            lines = _silence_limited(response, url)
            with mapped(url, read_timeout or self.policy.deadline):
                async for event, data in _sse_events(lines):
                    if event == "error":
                        detail = data.get("error") if isinstance(data, dict) else None
                        code = detail.get("code") if isinstance(detail, dict) else None
                        status = code if isinstance(code, int) and 400 <= code < 600 else 500
                        raise_for(method, url, httpx.Response(status, json=data))
                    yield event, data
        finally:
            await response.aclose()

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        files: Any = None,
        data: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool = True,
    ) -> Any:
        """One HTTP call with retries; the JSON answer. ``url``: absolute, or a path under the base."""
        if url.startswith("/"):
            url = self.base_url + url

        async def attempt(remaining: float) -> Any:
            return await self._attempt(method, url, params, json, files, data, headers, remaining)

        return await self._retrying(url, idempotent, attempt)

    async def _retrying(self, url: str, idempotent: bool, attempt: Callable[[float], Awaitable[Any]]) -> Any:
        """``attempt(seconds left)`` under the session's retry policy (the SDK's one policy, as for
        gRPC). ``idempotent``: safe to repeat (a read, or a write with an Idempotency-Key); otherwise
        repeated only when the request never reached the server, or was refused by a rate limit."""

        def out_of_time() -> Exception:
            return unreachable(
                reasons.DEADLINE_EXCEEDED,
                detail=f"no answer from the remote agent at {url} within the {self.policy.deadline:g}s "
                "timeout",
            )

        try:
            return await self.policy.call(attempt, idempotent=idempotent, deadline_error=out_of_time)
        except RemoteConnectionError as error:
            error.metadata.setdefault("url", url)
            raise

    async def _attempt(
        self,
        method: str,
        url: str,
        params: Mapping[str, Any] | None,
        json: Any,
        files: Any,
        data: Mapping[str, Any] | None,
        headers: Mapping[str, str] | None,
        seconds: float,
    ) -> Any:
        with mapped(url, seconds):
            response = await self._client().request(
                method,
                url,
                params=params,
                json=json,
                files=files,
                data=data,
                headers=headers,
                timeout=seconds,
            )
        if response.status_code >= 400:
            raise_for(method, url, response)
        return json_body(url, response)


#: A stream that brings no byte for this many of its announced heartbeat intervals has stopped.
MISSED_HEARTBEATS = 3


def heartbeat_seconds(response: httpx.Response) -> float | None:
    """The heartbeat interval the gateway announces for this stream (``Sessionkit-Heartbeat``), or None
    (a server that sends none, or an unreadable value)."""
    try:
        seconds = float(response.headers.get("sessionkit-heartbeat", ""))
    except ValueError:
        return None
    return seconds if 0 < seconds < float("inf") else None


async def _silence_limited(response: httpx.Response, url: str) -> AsyncIterator[str]:
    """The response's lines; when the server announced heartbeats, a silence of
    :data:`MISSED_HEARTBEATS` intervals (no event, no heartbeat: the gateway stopped answering, or the
    network between went away without closing the connection) ends the stream with DEADLINE_EXCEEDED
    instead of waiting forever."""
    interval = heartbeat_seconds(response)
    lines = response.aiter_lines()
    if interval is None:
        async for line in lines:
            yield line
        return
    limit = MISSED_HEARTBEATS * interval
    while True:
        try:
            async with asyncio.timeout(limit):
                line = await anext(lines)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise unreachable(
                reasons.DEADLINE_EXCEEDED,
                detail=f"the stream from {url} went silent: nothing for {limit:g}s although the server "
                f"sends a heartbeat every {interval:g}s (the server stopped answering)",
            ) from None
        yield line


async def _sse_events(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, Any]]:
    """Server-Sent Events from a stream of lines: ``(event, data)``, data parsed as JSON when it is."""
    event, data = "message", list[str]()
    async for line in lines:
        if not line:
            if data:
                text = "\n".join(data)
                try:
                    parsed: Any = jsonlib.loads(text)
                except ValueError:
                    parsed = text
                yield event, parsed
            event, data = "message", []
        elif line.startswith(":"):
            continue  # a comment (keep-alive)
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
