"""The SDK remote-mode fixtures: the scripted LLM, every service in one gRPC server and a gateway in front of
it (once for the package), the seed's agent URL, and a faulty proxy before the gateway."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.gateway.test_gateway_support import GatewayThread, gateway_settings
from tests.llm_server import LLMServer
from tests.sdk.remote_support import FaultyProxy, module_llm, services  # noqa: F401 - fixtures
from tests.servers import ServerThread


@pytest.fixture
def llm(module_llm: LLMServer) -> LLMServer:  # noqa: F811 - uses the imported fixture
    """The scripted LLM, with no script or recorded requests left by another test."""
    assert module_llm.pending == 0, "a previous test left scripted replies unused"
    module_llm.requests.clear()
    return module_llm


@pytest.fixture(scope="package")
def gateway(services: ServerThread) -> Iterator[GatewayThread]:  # noqa: F811 - uses the imported fixture
    thread = GatewayThread(gateway_settings(), services.address).start()
    yield thread
    thread.stop()


@pytest.fixture
def agent_url(gateway: GatewayThread) -> str:
    """The seed's form: host:port/agent, no scheme (http:// is assumed)."""
    return f"127.0.0.1:{gateway.server.port}/agent"


@pytest.fixture
def proxy(gateway: GatewayThread) -> Iterator[FaultyProxy]:
    server = FaultyProxy(gateway.url).start()
    yield server
    server.stop()
