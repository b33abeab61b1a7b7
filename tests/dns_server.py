"""A DNS server on loopback standing in for a Kubernetes headless Service (dnslib): A/AAAA records for
names the test sets and changes while it runs (a replica added or removed). gRPC reaches it with the
target ``dns://127.0.0.1:PORT/NAME:GRPC_PORT`` (its c-ares resolver takes a DNS server as authority).

    with DnsServer() as dns:
        dns.set("state.test", ["127.0.0.2", "127.0.0.3"])
        target = dns.target("state.test", 50051)
"""

from __future__ import annotations

import ipaddress
import threading
from typing import Any

from dnslib import AAAA, QTYPE, RR, A  # type: ignore[import-untyped]
from dnslib.server import DNSServer  # type: ignore[import-untyped]

#: Seconds a record may be cached: short, so a change is seen at the client's next resolution.
TTL = 1


class _Records:
    """The dnslib resolver: answers from a dict the test mutates (name -> addresses)."""

    def __init__(self) -> None:
        self.names: dict[str, list[str]] = {}
        self.queries = 0
        self.lock = threading.Lock()

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        qtype = QTYPE[request.q.qtype]
        with self.lock:
            self.queries += 1
            addresses = list(self.names.get(name, ()))
        for address in addresses:
            version = ipaddress.ip_address(address).version
            if qtype in ("A", "ANY") and version == 4:
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(address), ttl=TTL))
            elif qtype in ("AAAA", "ANY") and version == 6:
                reply.add_answer(RR(request.q.qname, QTYPE.AAAA, rdata=AAAA(address), ttl=TTL))
        if not addresses:
            reply.header.rcode = 3  # NXDOMAIN: the name is unknown (a Service with no ready pods)
        return reply


class DnsServer:
    """UDP and TCP on one loopback port (``port`` 0 picks a free one); use as a context manager or
    call :meth:`start` / :meth:`stop`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.records = _Records()
        self.host = host
        self.udp = DNSServer(self.records, address=host, port=port, logger=_Quiet())
        self.port = int(self.udp.server.server_address[1])
        self.tcp = DNSServer(self.records, address=host, port=self.port, tcp=True, logger=_Quiet())

    def set(self, name: str, addresses: list[str]) -> None:
        """Answer ``name`` with ``addresses`` from now on (empty: NXDOMAIN)."""
        with self.records.lock:
            self.records.names[name.lower()] = list(addresses)

    @property
    def queries(self) -> int:
        with self.records.lock:
            return self.records.queries

    def target(self, name: str, port: int) -> str:
        """The gRPC target resolving ``name`` through this server."""
        return f"dns://{self.host}:{self.port}/{name}:{port}"

    def start(self) -> DnsServer:
        self.udp.start_thread()
        self.tcp.start_thread()
        return self

    def stop(self) -> None:
        self.udp.stop()
        self.tcp.stop()
        self.udp.server.server_close()
        self.tcp.server.server_close()

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Quiet:
    """dnslib's logger, silenced (it prints every query)."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None
