"""What the gateway-over-state tests share (besides test_gateway_support.py): a real gRPC state server, a
gateway in front of one, and the two tenants' keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sessionkit_server.common.auth import server_interceptors
from sessionkit_server.common.config import ServerSettings
from tests.gateway.test_gateway_support import KEY_A, KEY_B, GatewayThread, gateway_settings
from tests.servers import ServerThread

KEYS = {KEY_A: "acme", KEY_B: "globex"}


def state_server(tmp_path: Path, database_url: str = "", **extra: Any) -> ServerThread:
    """A real gRPC server with the state service; with api_keys, checking them as `serve` does."""
    settings = ServerSettings(
        port=0,
        data_dir=tmp_path / "data",
        database_url=database_url,
        services=["state"],
        log_format="text",
        **extra,
    )
    return ServerThread(settings, interceptors=server_interceptors(settings.api_keys)).start()


def gateway_for(server: ServerThread, **settings: Any) -> GatewayThread:
    return GatewayThread(gateway_settings(**settings), server.address).start()
