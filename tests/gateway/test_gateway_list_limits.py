"""Bounded lists (issue 14, item 6), over real gRPC and through the gateway: a request naming more items
than a list's limit is refused at once, before any work, with INVALID_ARGUMENT / 400 naming the field
and the limit, and writes nothing. (A knowledge search naming 20,000 collections took 14.5 s.)"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import grpc
import httpx
import pytest

from sessionkit.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    common_pb2,
    knowledge_pb2,
    knowledge_pb2_grpc,
    state_pb2,
    state_pb2_grpc,
)
from sessionkit_server.common.config import ServerSettings
from tests.gateway.test_gateway_support import GatewayThread, assert_error, gateway_settings
from tests.servers import ServerThread
from tests.state.test_state_bad_input import violations


def _server(tmp_path_factory: pytest.TempPathFactory, services: list[str]) -> ServerThread:
    settings = ServerSettings(
        port=0,
        data_dir=tmp_path_factory.mktemp("list-limits") / "data",
        services=services,
        log_format="text",
    )
    return ServerThread(settings).start()


# Two small servers: memory loads its model at start, and state with knowledge in one process took
# tens of seconds to start here; the lists of every service are checked by the same interceptor
# (tests/project/test_list_limits.py checks AddMemories' on the message).
@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    thread = _server(tmp_path_factory, ["state", "agent"])
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def knowledge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    thread = _server(tmp_path_factory, ["knowledge"])
    yield thread
    thread.stop()


def _gateway(server: ServerThread) -> Iterator[httpx.Client]:
    gateway = GatewayThread(gateway_settings(), server.address).start()
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        yield client
    gateway.stop()


@pytest.fixture(scope="module")
def http(services: ServerThread) -> Iterator[httpx.Client]:
    yield from _gateway(services)


@pytest.fixture(scope="module")
def knowledge_http(knowledge: ServerThread) -> Iterator[httpx.Client]:
    yield from _gateway(knowledge)


@pytest.fixture
async def channel(services: ServerThread) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(services.address) as channel:
        yield channel


@pytest.fixture
async def knowledge_channel(knowledge: ServerThread) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(knowledge.address) as channel:
        yield channel


REF = common_pb2.SessionRef(app_name="app", user_id="alice", session_id="s1")


async def refused(call: object) -> list[tuple[str, str]]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    return violations(info.value)


async def test_a_search_naming_20000_collections_is_refused_at_once(
    knowledge_channel: grpc.aio.Channel,
) -> None:
    stub = knowledge_pb2_grpc.KnowledgeServiceStub(knowledge_channel)
    collection = knowledge_pb2.KnowledgeScope.COLLECTION
    scopes = [knowledge_pb2.KnowledgeScope(kind=collection, collection=f"c{n:05d}") for n in range(20_000)]
    start = time.monotonic()
    found = await refused(
        stub.SearchKnowledge(
            knowledge_pb2.SearchKnowledgeRequest(session=REF, query="q", scopes=scopes), timeout=30
        )
    )
    assert time.monotonic() - start < 3.0
    assert found == [("scopes", "has 20000 items; at most 100")]
    names = [f"n{n}" for n in range(101)]
    found = await refused(
        stub.SearchKnowledge(knowledge_pb2.SearchKnowledgeRequest(session=REF, query="q", source_names=names))
    )
    assert found == [("source_names", "has 101 items; at most 100")]


async def test_lists_of_state_and_agent_calls_are_bounded_and_refusals_write_nothing(
    channel: grpc.aio.Channel,
) -> None:
    state = state_pb2_grpc.StateServiceStub(channel)
    await state.CreateSession(state_pb2.CreateSessionRequest(session=REF, get_if_exists=True), timeout=10)
    keys = [f"k{n}" for n in range(1001)]
    assert await refused(state.GetState(state_pb2.GetStateRequest(session=REF, keys=keys))) == [
        ("keys", "has 1001 items; at most 1000")
    ]
    save = state_pb2.SaveStateRequest(session=REF, delete_keys=[f"user:{k}" for k in keys])
    assert (await refused(state.SaveState(save)))[0][0] == "delete_keys"
    assert (await state.GetState(state_pb2.GetStateRequest(session=REF))).version == 0

    # Nested lists are named by their path.
    agent = agent_pb2_grpc.AgentServiceStub(channel)
    tools = [agent_pb2.AgentTool(name=f"t{n}") for n in range(129)]
    definition = agent_pb2.AgentDefinition(name="helper", tools=tools)
    create = agent_pb2.CreateAgentRequest(session=REF, agent=definition)
    assert await refused(agent.CreateAgent(create)) == [("agent.tools", "has 129 items; at most 128")]
    tasks = [agent_pb2.WorkflowTask(name="t", context_tasks=["x"] * 101)]
    workflow = agent_pb2.RunWorkflowRequest(session=REF, tasks=tasks)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in agent.RunWorkflow(workflow, timeout=10):
            pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(info.value) == [("tasks[0].context_tasks", "has 101 items; at most 100")]
    listed_agents = await agent.ListAgents(agent_pb2.ListAgentsRequest(session=REF), timeout=10)
    assert list(listed_agents.agents) == []


def test_the_gateway_refuses_the_same_lists_naming_its_fields(
    http: httpx.Client, knowledge_http: httpx.Client
) -> None:
    url = "/v1/sessions/s1/knowledge/search"
    start = time.monotonic()
    many = [f"c{n:05d}" for n in range(20_000)]
    error = assert_error(knowledge_http.post(url, json={"query": "q", "collections": many}), 400)
    assert (
        time.monotonic() - start < 5.0
    )  # the JSON of 20,000 names is sent and parsed; the search took 14.5 s
    assert (
        error["violations"][0]["field"] == "body.collections"
        and "100" in error["violations"][0]["description"]
    )
    # Within each list's limit but over the service's limit of scopes and collections together.
    both = {"query": "q", "scopes": ["user"] * 50, "collections": many[:51]}
    error = assert_error(knowledge_http.post(url, json=both), 400, "INVALID_ARGUMENT")
    assert error["violations"] == [{"field": "scopes", "description": "has 101 items; at most 100"}]
    # Query lists are checked by the service's rule.
    http.post("/v1/sessions", json={"session_id": "s1"})
    keys = [("keys", f"k{n}") for n in range(1001)]
    error = assert_error(http.get("/v1/sessions/s1/state", params=keys), 400, "INVALID_ARGUMENT")
    assert error["violations"] == [{"field": "keys", "description": "has 1001 items; at most 1000"}]
    messages = [{"role": "user", "content": "hi"}] * 1001
    error = assert_error(http.post("/agent", json={"messages": messages, "session_id": "s2"}), 400)
    assert error["violations"][0]["field"] == "body.messages"
    assert "s2" not in [s["session_id"] for s in http.get("/v1/sessions").json()["sessions"]]
