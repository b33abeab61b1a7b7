"""Fetching URL sources with httpx: http(s) only, a total deadline, a size cap, a bounded number of
redirects (each followed by hand, so every hop is checked), and an SSRF guard: the host is resolved
and every address checked; private, loopback, link-local, multicast, reserved and unspecified
addresses are refused unless the server allows them (SESSIONKIT_KNOWLEDGE_ALLOW_PRIVATE_URLS, or
SESSIONKIT_KNOWLEDGE_ALLOWED_HOSTS for named hosts).

DNS rebinding: each hop's host is resolved once, and the connection goes to an address of that
checked answer (the request URL names the address; the Host header and the TLS server name, SNI and
certificate check, stay the URL's host name), so a second, different DNS answer is never used.
Connections are not kept alive, so one is never reused for another host name on the same address."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from sessionkit import reasons
from sessionkit.errors import FieldViolation, InvalidArgument, PermissionDenied, ResourceExhausted, shown

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: Resolves (host, port) to IP address strings, in preference order.
Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses getaddrinfo gives for ``host`` (the system's resolver), without duplicates."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class FetchSettings:
    timeout_seconds: float = 20.0
    max_bytes: int = 20 << 20
    max_redirects: int = 5
    allow_private: bool = False
    #: Host names fetched without the address check (e.g. an internal docs server); exact match,
    #: case-insensitive. Redirects to other hosts are checked.
    allowed_hosts: frozenset[str] = frozenset()
    #: How host names are resolved (the system resolver; a test may give its own DNS).
    resolver: Resolver = system_resolver


@dataclass
class Fetched:
    url: str
    content_type: str
    data: bytes


def check_url(url: str) -> urllib.parse.SplitResult:
    """``url`` split, if it is an http(s) URL whose host a resolver can take and whose port is one:
    a host that is no hostname (control characters, empty labels) failed in the resolver's IDNA
    encoding, and an out-of-range port in urllib, both as INTERNAL."""
    try:
        parsed = urllib.parse.urlsplit(url.strip())
        port = parsed.port  # ValueError when not 0-65535
        host = parsed.hostname or ""
        if host and not _is_ip(host):
            host.encode("idna")
    except (ValueError, UnicodeError) as error:
        raise InvalidArgument(
            f"invalid URL {shown(url, 200)!r}: {error}",
            violations=[FieldViolation("url", f"an http:// or https:// URL ({error})")],
        ) from None
    if parsed.scheme not in ("http", "https") or not host or port == 0:
        why = "it names no host" if parsed.scheme in ("http", "https") and not host else "port 0"
        if parsed.scheme not in ("http", "https"):
            why = "only http:// and https:// URLs are fetched"
        raise InvalidArgument(
            f"invalid URL {shown(url, 200)!r}: {why}",
            violations=[FieldViolation("url", f"an http:// or https:// URL ({why})")],
        )
    return parsed


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _not_allowed(url: str, why: str) -> PermissionDenied:
    return reasons.URL_NOT_ALLOWED.error(url=url, why=why, metadata={"url": url})


async def resolve_checked(url: str, settings: FetchSettings) -> list[IPAddress]:
    """The addresses to connect to for ``url``'s host, resolved once. Unless the host is allowed,
    ``url`` is refused when any of them is not public."""
    parsed = check_url(url)
    host = parsed.hostname or ""
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    addresses = await _addresses(url, host, port, settings.resolver)
    if settings.allow_private or host.lower() in settings.allowed_hosts:
        return addresses
    for address in addresses:
        mapped = getattr(address, "ipv4_mapped", None)
        checked = mapped or address
        if not checked.is_global or checked.is_multicast:
            raise _not_allowed(url, f"{host} resolves to the non-public address {address}")
    return addresses


async def _addresses(url: str, host: str, port: int, resolver: Resolver) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]  # a literal address: nothing to resolve
    except ValueError:
        pass
    try:
        answer = await resolver(host, port)
    except OSError as error:
        raise reasons.URL_FETCH_FAILED.error(
            url=url, detail=f"cannot resolve {host!r}: {error}", metadata={"url": url}
        ) from None
    if not answer:
        raise reasons.URL_FETCH_FAILED.error(
            url=url, detail=f"cannot resolve {host!r}: no addresses", metadata={"url": url}
        )
    return [ipaddress.ip_address(a.split("%", 1)[0]) for a in answer]


async def check_host(url: str, settings: FetchSettings) -> None:
    """Refuse ``url`` when its host is, or resolves to, any non-public address."""
    await resolve_checked(url, settings)


def _pinned(
    parsed: urllib.parse.SplitResult, address: IPAddress
) -> tuple[str, dict[str, str], dict[str, str]]:
    """The request for ``parsed`` sent to ``address``: (URL naming the address, headers, extensions)
    with the Host header and, for https, the TLS server name of the original host."""
    host = parsed.hostname or ""
    ip = f"[{address}]" if address.version == 6 else str(address)
    userinfo, _, hostport = parsed.netloc.rpartition("@")
    netloc = (f"{userinfo}@" if userinfo else "") + ip + (f":{parsed.port}" if parsed.port else "")
    target = urllib.parse.urlunsplit((parsed.scheme, netloc, parsed.path or "/", parsed.query, ""))
    headers = {"Accept": "*/*", "Host": hostport}
    extensions = {"sni_hostname": host} if parsed.scheme == "https" else {}
    return target, headers, extensions


async def fetch(url: str, settings: FetchSettings, on_bytes: Callable[[int, int], None]) -> Fetched:
    """GET ``url`` (following up to max_redirects redirects, checking each hop and connecting to the
    address checked); ``on_bytes(read, total)`` is called as the body arrives. The whole fetch, every
    hop's resolution, connection and body included, ends at ``timeout_seconds``: httpx's own timeout is
    per read, so a server sending a byte a second would otherwise keep an ingestion running for ever."""
    current = url.strip()
    try:
        async with asyncio.timeout(settings.timeout_seconds):
            return await _follow(current, settings, on_bytes)
    except TimeoutError:
        raise reasons.URL_FETCH_TIMEOUT.error(
            url=current, seconds=settings.timeout_seconds, metadata={"url": current}
        ) from None


async def _follow(url: str, settings: FetchSettings, on_bytes: Callable[[int, int], None]) -> Fetched:
    current = url
    # Requests go through the transport itself, not the client's send: the client builds the next
    # request of every redirect, and a Location it cannot parse failed there, before this code saw it.
    async with (
        httpx.AsyncHTTPTransport(
            trust_env=False, limits=httpx.Limits(max_keepalive_connections=0)
        ) as transport,
        httpx.AsyncClient(timeout=settings.timeout_seconds, trust_env=False, transport=transport) as client,
    ):
        for _ in range(settings.max_redirects + 1):
            addresses = await resolve_checked(current, settings)
            parsed = check_url(current)
            try:
                fetched = await _get(client, transport, current, parsed, addresses, settings, on_bytes)
            except httpx.TimeoutException:
                raise reasons.URL_FETCH_TIMEOUT.error(
                    url=current, seconds=settings.timeout_seconds, metadata={"url": current}
                ) from None
            except httpx.HTTPError as error:
                raise reasons.URL_FETCH_FAILED.error(
                    url=current, detail=error, metadata={"url": current}
                ) from None
            if isinstance(fetched, Fetched):
                return fetched
            current = _redirect_target(current, fetched)
    raise reasons.URL_FETCH_FAILED.error(
        url=url, detail=f"more than {settings.max_redirects} redirects", metadata={"url": url}
    )


def _redirect_target(current: str, location: str) -> str:
    """The URL a redirect from ``current`` names, if it is one this fetch may follow (INVALID_ARGUMENT
    naming both otherwise: the user asked for ``current``, so say where it led)."""
    try:
        # Relative to the URL as the user named it, not to the address connected to.
        target = str(urllib.parse.urljoin(current, location))
        check_url(target)
    except (ValueError, InvalidArgument) as error:
        why = (
            error.message
            if isinstance(error, InvalidArgument)
            else f"invalid URL {shown(location, 200)!r}: {error}"
        )
        raise InvalidArgument(
            f"the redirect from {current!r} leads to {why}",
            violations=[FieldViolation("url", f"redirects to an URL that cannot be fetched ({why})")],
        ) from None
    return target


async def _get(
    client: httpx.AsyncClient,
    transport: httpx.AsyncHTTPTransport,
    current: str,
    parsed: urllib.parse.SplitResult,
    addresses: list[IPAddress],
    settings: FetchSettings,
    on_bytes: Callable[[int, int], None],
) -> Fetched | str:
    """One hop: the page, or the Location a redirect answers. Tries the checked addresses in order
    until one accepts the connection."""
    for n, address in enumerate(addresses):
        target, headers, extensions = _pinned(parsed, address)
        request = client.build_request("GET", target, headers=headers, extensions=extensions)
        try:
            response = await transport.handle_async_request(request)
        except httpx.ConnectError:
            if n == len(addresses) - 1:
                raise
            continue
        try:
            return await _read(response, current, settings, on_bytes)
        finally:
            await response.aclose()
    raise AssertionError("unreachable: resolve_checked returns at least one address")  # pragma: no cover


async def _read(
    response: httpx.Response, current: str, settings: FetchSettings, on_bytes: Callable[[int, int], None]
) -> Fetched | str:
    if response.is_redirect:
        return str(response.headers.get("location", ""))
    if response.status_code >= 400:
        raise reasons.URL_FETCH_FAILED.error(
            url=current,
            detail=f"the server answered HTTP {response.status_code}",
            metadata={"url": current, "http_status": str(response.status_code)},
        )
    length = response.headers.get("content-length", "0") or "0"
    declared = int(length) if length.isdigit() else 0
    if declared > settings.max_bytes:
        raise _too_large(current, declared, settings.max_bytes)
    body = bytearray()
    async for part in response.aiter_bytes():
        body.extend(part)
        if len(body) > settings.max_bytes:
            raise _too_large(current, len(body), settings.max_bytes)
        on_bytes(len(body), declared)
    return Fetched(current, response.headers.get("content-type", ""), bytes(body))


def _too_large(url: str, size: int, limit: int) -> ResourceExhausted:
    return reasons.SOURCE_TOO_LARGE.error(
        what=repr(url), size=size, limit=limit, metadata={"url": url, "limit_bytes": str(limit)}
    )
