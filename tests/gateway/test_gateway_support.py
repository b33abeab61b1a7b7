"""Helpers of the gateway tests (no tests here): a real gateway (uvicorn) on its own thread and event
loop in front of a real gRPC server, and a self-signed certificate made in the test."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from sessionkit.transport import close_channels
from sessionkit_server.common.config import ServerSettings
from sessionkit_server.gateway.server import GatewayServer, local_client_settings

#: Two tenants' keys (at least 16 characters, as the settings require).
KEY_A = "key-tenant-a-0123456789"
KEY_B = "key-tenant-b-0123456789"


def gateway_settings(**overrides: Any) -> ServerSettings:
    """Gateway settings for tests: port 0, no rate limit unless asked, JSON keys given as a dict."""
    values: dict[str, Any] = {"http_port": 0, "rate_limit_per_second": 0, "log_format": "text"}
    values.update(overrides)
    return ServerSettings(**values)


class GatewayThread:
    """``GatewayServer`` on a private event loop in a daemon thread (sync tests call it over HTTP)."""

    def __init__(self, settings: ServerSettings, target: str) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="sessionkit-gateway")
        self.server = GatewayServer.for_target(settings, target, local_client_settings(target))

    def start(self) -> GatewayThread:
        self.thread.start()
        self.call(self.server.start())
        return self

    def call(self, coro: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout=60)

    @property
    def url(self) -> str:
        return self.server.url

    def stop(self) -> None:
        self.call(self.server.stop())
        self.call(close_channels())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost / 127.0.0.1 and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


def assert_error(response: Any, status: int, reason: str | None = None) -> dict[str, Any]:
    """The response is the one error shape with this status (and reason); returns its "error"."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert set(error) == {"code", "status", "reason", "message", "metadata", "violations", "retry_after"}
    assert error["code"] == status and error["message"]
    assert "Traceback" not in response.text
    if reason is not None:
        assert error["reason"] == reason, error
    return error
