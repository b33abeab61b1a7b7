"""Fetching URL sources with httpx: http(s) only, a timeout, a size cap, a bounded number of
redirects (each followed by hand, so every hop is checked), and an SSRF guard: the host is resolved
and every address checked; private, loopback, link-local, multicast, reserved and unspecified
addresses are refused unless the server allows them (SESSIONKIT_KNOWLEDGE_ALLOW_PRIVATE_URLS, or
SESSIONKIT_KNOWLEDGE_ALLOWED_HOSTS for named hosts).

The check resolves the name before the request; a DNS answer that changes between the check and the
connection (DNS rebinding) is not covered (see docs/KNOWLEDGE.md)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from sessionkit.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
)


@dataclass(frozen=True)
class FetchSettings:
    timeout_seconds: float = 20.0
    max_bytes: int = 20 << 20
    max_redirects: int = 5
    allow_private: bool = False
    #: Host names fetched without the address check (e.g. an internal docs server); exact match,
    #: case-insensitive. Redirects to other hosts are checked.
    allowed_hosts: frozenset[str] = frozenset()


@dataclass
class Fetched:
    url: str
    content_type: str
    data: bytes


def check_url(url: str) -> urllib.parse.SplitResult:
    parsed = urllib.parse.urlsplit(url.strip())
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise InvalidArgument(
            f"invalid URL {url!r}", violations=[FieldViolation("url", "an http:// or https:// URL")]
        )
    return parsed


def _not_allowed(url: str, why: str) -> PermissionDenied:
    return PermissionDenied(
        f"refusing to fetch {url!r}: {why} (set SESSIONKIT_KNOWLEDGE_ALLOW_PRIVATE_URLS=true to allow)",
        reason="URL_NOT_ALLOWED",
        metadata={"url": url},
    )


async def check_host(url: str, settings: FetchSettings) -> None:
    """Refuse ``url`` when its host is, or resolves to, any non-public address."""
    parsed = check_url(url)
    host = parsed.hostname or ""
    if settings.allow_private or host.lower() in settings.allowed_hosts:
        return
    try:
        addresses = {ipaddress.ip_address(host)}
    except ValueError:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, parsed.port or 0, type=socket.SOCK_STREAM
            )
        except OSError as error:
            raise FailedPrecondition(
                f"cannot resolve {host!r}: {error}", reason="URL_FETCH_FAILED", metadata={"url": url}
            ) from None
        addresses = {ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos}
    for address in addresses:
        mapped = getattr(address, "ipv4_mapped", None)
        checked = mapped or address
        if not checked.is_global or checked.is_multicast:
            raise _not_allowed(url, f"{host} resolves to the non-public address {address}")


async def fetch(url: str, settings: FetchSettings, on_bytes: Callable[[int, int], None]) -> Fetched:
    """GET ``url`` (following up to max_redirects redirects, checking each hop); ``on_bytes(read,
    total)`` is called as the body arrives."""
    current = url.strip()
    async with httpx.AsyncClient(
        timeout=settings.timeout_seconds, follow_redirects=False, trust_env=False
    ) as client:
        for _ in range(settings.max_redirects + 1):
            await check_host(current, settings)
            try:
                async with client.stream("GET", current, headers={"Accept": "*/*"}) as response:
                    if response.is_redirect:
                        location = response.headers.get("location", "")
                        current = str(urllib.parse.urljoin(current, location))
                        continue
                    if response.status_code >= 400:
                        raise FailedPrecondition(
                            f"fetching {current!r} answered HTTP {response.status_code}",
                            reason="URL_FETCH_FAILED",
                            metadata={"url": current, "http_status": str(response.status_code)},
                        )
                    declared = int(response.headers.get("content-length", "0") or 0)
                    if declared > settings.max_bytes:
                        raise _too_large(current, declared, settings.max_bytes)
                    body = bytearray()
                    async for part in response.aiter_bytes():
                        body.extend(part)
                        if len(body) > settings.max_bytes:
                            raise _too_large(current, len(body), settings.max_bytes)
                        on_bytes(len(body), declared)
                    return Fetched(current, response.headers.get("content-type", ""), bytes(body))
            except httpx.TimeoutException:
                raise DeadlineExceeded(
                    f"fetching {current!r} timed out after {settings.timeout_seconds}s",
                    reason="URL_FETCH_TIMEOUT",
                    metadata={"url": current},
                ) from None
            except httpx.HTTPError as error:
                raise FailedPrecondition(
                    f"fetching {current!r} failed: {error}",
                    reason="URL_FETCH_FAILED",
                    metadata={"url": current},
                ) from None
    raise FailedPrecondition(
        f"fetching {url!r}: more than {settings.max_redirects} redirects",
        reason="URL_FETCH_FAILED",
        metadata={"url": url},
    )


def _too_large(url: str, size: int, limit: int) -> ResourceExhausted:
    return ResourceExhausted(
        f"{url!r} is over the size limit ({size} bytes; at most {limit})",
        reason="SOURCE_TOO_LARGE",
        metadata={"url": url, "limit_bytes": str(limit)},
    )
