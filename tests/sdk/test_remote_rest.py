"""The SDK's remote mode against a real gateway (uvicorn on a real port) in front of real gRPC services and a
scripted OpenAI-compatible LLM (tests/sdk/conftest.py): state, events, memory and knowledge through the
gateway's REST API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sessionkit import AsyncSession, Session
from sessionkit.errors import InvalidArgument, NotFound, NotImplementedByServer
from tests.sdk.remote_support import FaultyProxy
from tests.servers import ServerThread

# -- state, events, memory and knowledge over REST ----------------------------------------------------


def test_state_round_trip_matches_grpc(agent_url: str, services: ServerThread) -> None:
    with Session(session_id="customer_support_001", user_id="customer_123", agent_url=agent_url) as remote:
        remote.save_state({"current_issue": "order_12345", "temp:draft": "x", "user:tier": "gold"})
        assert remote.restore_state() == {
            "current_issue": "order_12345",
            "temp:draft": "x",
            "user:tier": "gold",
        }
        assert remote.get_state("current_issue") == "order_12345"
        assert remote.get_state("missing", "fallback") == "fallback"
        remote.set_state("plan", [1, 2])
        remote.set_state("count", 1)
        assert remote.increment_state("count", 2) == 3
        assert remote.append_state("tags", "a", "b") == 2
        assert remote.delete_state("count") is True
        assert remote.delete_state("count") is False
        # The same session over gRPC sees exactly what went through the gateway.
        with Session(
            session_id="customer_support_001", user_id="customer_123", address=services.address
        ) as direct:
            assert direct.restore_state() == {
                "current_issue": "order_12345",
                "user:tier": "gold",
                "plan": [1, 2],
                "tags": ["a", "b"],
            }
        remote.clear_state()
        assert remote.restore_state() == {"user:tier": "gold"}
        event = remote.add_event("user", "noted", metadata={"k": 1})
        assert remote.get_events(1) == [event]
        assert remote.info().session_id == "customer_support_001"
        assert remote.delete() is True


def test_a_key_with_a_slash(agent_url: str) -> None:
    with Session(session_id="slash", agent_url=agent_url) as session:
        session.set_state("path/with/slash", 1)
        assert session.get_state("path/with/slash") == 1
        assert session.increment_state("path/with/slash") == 2
        assert session.append_state("a/b/", "x") == 1
        assert session.restore_state() == {"path/with/slash": 2, "a/b/": ["x"]}
        assert session.delete_state("path/with/slash") is True
        assert session.get_state("path/with/slash") is None


def test_auto_save_off_writes_once(agent_url: str) -> None:
    with Session(session_id="manual_session", agent_url=agent_url, auto_save=False) as session:
        session.set_state("a", 1)
        session.set_state("b", 2)
        assert session.get_state("a") == 1
        session.save_state()
        assert session.restore_state() == {"a": 1, "b": 2}


def test_auto_save_off_deletes_scoped_keys_in_the_same_write(agent_url: str) -> None:
    with Session(session_id="manual_scoped", agent_url=agent_url, auto_save=False) as session:
        session.save_state({"a": 1, "user:x": 1})
        version = session.state_version()
        session.delete_state("user:x")
        session.set_state("b", 2)
        assert session.save_state() == version + 1
        assert session.restore_state() == {"a": 1, "b": 2}


def test_memory_through_rest(agent_url: str) -> None:
    with Session(session_id="mem", user_id="mem_user", agent_url=agent_url) as session:
        stored = session.store_long_memory("The customer prefers email over phone calls", quality_score=0.9)
        assert stored is not None and stored["memory_type"] == "long"
        session.store_short_memory("Currently discussing order 12345")
        hits = session.search_memory("how should we contact the customer?", memory_type="long")
        assert hits[0]["text"] == "The customer prefers email over phone calls"
        context = session.get_memory_context("contact preference", max_items=1)
        assert context == "- The customer prefers email over phone calls (long-term)"
        assert session.get_memory(stored["id"])["text"] == stored["text"]
        assert len(session.list_memories()) == 2
        assert session.clear_memory("short") == 1
        assert session.delete_memory(stored["id"]) is True


def test_knowledge_text_and_file_through_rest(agent_url: str, tmp_path: Path) -> None:
    manual = tmp_path / "technical_manual.md"
    manual.write_text("# Authentication\n\nEvery request needs an API key in the Authorization header.\n")
    with Session(session_id="doc_assistant_001", agent_url=agent_url) as session:
        added = session.add_knowledge("Quick reference: rate limits are 20 requests per second")
        assert added["kind"] == "text" and added["outcome"] == "created"
        uploaded = session.add_knowledge(str(manual))
        assert uploaded["kind"] == "file" and uploaded["source"]["name"] == "technical_manual.md"
        hits = session.search_knowledge("How do I authenticate?", limit=1)
        assert hits[0]["source"]["name"] == "technical_manual.md"
        assert "API key" in hits[0]["text"]
        assert "Knowledge:" in session.get_context("How do I authenticate?")
        assert len(session.list_knowledge()) == 2
        assert session.delete_knowledge("technical_manual.md") is True
        # A source name with '/' (sent as %2F) reaches the route whole.
        session.add_knowledge("Nested guide text", name="guides/nested.md")
        assert session.delete_knowledge("guides/nested.md") is True
        assert session.clear_knowledge() == 1


def test_state_versions_and_restore(agent_url: str, services: ServerThread) -> None:
    with Session(session_id="versions", agent_url=agent_url) as session:
        first = session.save_state({"step": 1})
        session.set_state("step", 2)
        session.set_state("extra", True)
        history = session.state_history()
        assert [v.version for v in history][:3] == [first + 2, first + 1, first]
        assert history[0].operation == "SET" and history[0].key == "extra"
        assert history[-1].state == {"step": 1} and history[-1].time is not None
        restored = session.restore_state_version(first)
        assert restored == first + 3
        assert session.restore_state() == {"step": 1}
        with pytest.raises(NotFound):
            session.restore_state_version(10_000)
        with Session(session_id="versions", address=services.address) as direct:
            assert [v.version for v in direct.state_history()] == [v.version for v in session.state_history()]


async def test_watch_state_over_sse(agent_url: str) -> None:
    import asyncio

    async with AsyncSession(session_id="watched", agent_url=agent_url) as session:
        await session.save_state({"a": 1})
        changes = session.watch_state()
        snapshot = await anext(changes)
        assert snapshot.operation == "SNAPSHOT" and snapshot.state == {"a": 1}
        async with AsyncSession(session_id="watched", agent_url=agent_url) as writer:
            await writer.set_state("b", 2)
        change = await asyncio.wait_for(anext(changes), 10)
        assert (change.operation, change.key, change.value, change.state) == ("SET", "b", 2, {"a": 1, "b": 2})
        await changes.aclose()  # type: ignore[attr-defined]


def test_memory_history_context_and_filtered_list(agent_url: str) -> None:
    with Session(session_id="mem2", user_id="mem2_user", agent_url=agent_url) as session:
        first = session.add_memory("The user likes green tea", topic="drinks")
        second = session.add_memory("The user lives in Lisbon", topic="places")
        assert first is not None and second is not None
        session.update_memory(first["id"], "The user likes jasmine green tea")
        history = session.memory_history(first["id"])
        assert [h["operation"] for h in history] == ["ADD", "UPDATE"]
        assert history[1]["old_text"] == "The user likes green tea"
        listed = session.list_memories(metadata_filter={"topic": "places"})
        assert [m["id"] for m in listed] == [second["id"]]
        # The memory service's own context block (BuildMemoryContext), as over gRPC.
        context = session.get_memory_context("what does the user drink?", max_items=1)
        assert "jasmine green tea" in context and "Lisbon" not in context


def test_add_memories_keeps_each_items_type_quality_and_metadata(
    proxy: FaultyProxy, services: ServerThread
) -> None:
    items: list[Any] = [
        {"text": "The user is allergic to peanuts", "quality_score": 0.95, "metadata": {"topic": "health"}},
        {
            "text": "Currently planning a trip to Porto",
            "memory_type": "short",
            "metadata": {"topic": "travel"},
        },
        "The user prefers window seats",
    ]
    with Session(session_id="batch", user_id="batch_user", agent_url=f"{proxy.url}/agent") as remote:
        added = remote.add_memories(items)
        assert added is not None
        assert [(m["memory_type"], m["metadata"]) for m in added] == [
            ("long", {"topic": "health"}),
            ("short", {"topic": "travel"}),
            ("long", {}),
        ]
        assert added[0]["quality_score"] == pytest.approx(0.95)
        # One request: one transaction on the memory service, as over gRPC.
        assert len(proxy.posts("/v1/sessions/batch/memories/batch")) == 1
        with Session(session_id="batch", user_id="batch_user", address=services.address) as direct:
            stored = {m["text"]: m for m in direct.list_memories()}
        assert stored["Currently planning a trip to Porto"]["memory_type"] == "short"
        assert stored["The user is allergic to peanuts"]["metadata"] == {"topic": "health"}
        # Cleared by metadata over REST too, as over gRPC.
        assert remote.clear_memory(metadata_filter={"topic": "travel"}) == 1
        assert sorted(m["text"] for m in remote.list_memories()) == [
            "The user is allergic to peanuts",
            "The user prefers window seats",
        ]
        with pytest.raises(InvalidArgument, match=r"memories\[1\]"):
            remote.add_memories(["fine", {"text": "x", "memory_type": "forever"}])


def test_calls_the_rest_api_does_not_offer_say_so(agent_url: str) -> None:
    with (
        Session(session_id="unsupported", agent_url=agent_url) as session,
        pytest.raises(NotImplementedByServer, match="address="),
    ):
        session.extract_memories([{"role": "user", "content": "I like tea"}])
