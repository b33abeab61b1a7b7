"""Idempotency keys on memory writes: a write whose reply is lost is applied once however often the SDK
retries it, a repeated key answers the first response (also under concurrency, on SQLite and
PostgreSQL), keys are per user, per RPC and expire after 24 hours; the 0002 migration upgrades a
database made by 0001."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from alembic import command
from sqlalchemy import Connection, inspect, text

from sessionkit import RetryPolicy, Session
from sessionkit.errors import from_rpc_error
from sessionkit.v1 import common_pb2, memory_pb2, memory_pb2_grpc
from sessionkit_server.common.config import ServerSettings
from sessionkit_server.common.db import Database
from sessionkit_server.common.idempotency import IDEMPOTENCY_TTL_US, Idempotency, Replayed
from sessionkit_server.common.identity import Owner
from sessionkit_server.common.migrate import alembic_config
from sessionkit_server.memory.store import MemoryStore
from tests.conftest import _truncate
from tests.llm_server import LLMServer, llm_server_fixture  # noqa: F401 - the llm_server fixture
from tests.sdk.test_sdk_retry import Flaky, Sleeps
from tests.servers import ServerThread

MEMORY_WRITES = {"AddMemory", "UpdateMemory", "DeleteMemory", "ClearMemories", "ExtractMemories"}
REF = common_pb2.SessionRef(app_name="default", user_id="alice", session_id="s1")


def server_settings(tmp_path: Path, llm: LLMServer, database_url: str = "") -> ServerSettings:
    return ServerSettings(
        port=0,
        data_dir=tmp_path / "data",
        database_url=database_url,
        services=["state", "memory"],
        log_format="text",
        llm_base_url=llm.base_url,
        llm_model="test-model",
        llm_api_key="sk-test",
    )


@pytest.fixture(params=["sqlite"])
def server(request: pytest.FixtureRequest, tmp_path: Path, llm_server: LLMServer) -> Iterator[ServerThread]:
    url = request.getfixturevalue("pg_database") if request.param == "postgres" else ""
    thread = ServerThread(server_settings(tmp_path, llm_server, url)).start()
    yield thread
    thread.stop()
    if url:
        asyncio.run(_truncate(url))


@pytest.fixture
def flaky_server(tmp_path: Path, llm_server: LLMServer) -> Iterator[tuple[ServerThread, Flaky]]:
    flaky = Flaky(0, after_apply=True, methods=MEMORY_WRITES)
    thread = ServerThread(server_settings(tmp_path, llm_server), interceptors=[flaky]).start()
    yield thread, flaky
    thread.stop()


def history(session: Session, memory_id: str) -> list[str]:
    return [c["operation"] for c in session.memory_history(memory_id)]


def test_memory_writes_whose_replies_are_lost_apply_exactly_once(
    flaky_server: tuple[ServerThread, Flaky], llm_server: LLMServer
) -> None:
    server, flaky = flaky_server
    sleeps = Sleeps()
    s = Session("s1", "alice", address=server.address, retry=RetryPolicy(sleep=sleeps))

    flaky.failures = 2  # applied on the first call, the reply lost twice
    added = s.store_long_memory("The user lives in Porto")
    assert added is not None and flaky.calls == 3 and len(sleeps.delays) == 2
    assert added["deduplicated"] is False  # the first call's answer, not a dedup of the retry
    assert history(s, added["id"]) == ["ADD"]

    flaky.failures = 2
    updated = s.update_memory(added["id"], "The user lives in Lisbon")
    assert updated["revision"] == 2 and s.get_memory(added["id"])["revision"] == 2
    assert history(s, added["id"]) == ["ADD", "UPDATE"]

    flaky.failures = 2
    assert s.delete_memory(added["id"]) is True  # a retry without the key would answer NOT_FOUND
    assert history(s, added["id"]) == ["ADD", "UPDATE", "DELETE"]

    s.store_long_memory("The user has a cat")
    s.store_short_memory("We are planning a trip")
    flaky.failures = 2
    assert s.clear_memory() == 2  # a retry without the key would count 0
    assert s.list_memories() == []

    llm_server.reply('{"operations": [{"type": "ADD", "fact": "The user plays chess"}]}')
    mem0 = Session("s1", "alice", address=server.address, memory_config={"provider": "mem0"})
    flaky.failures = 2
    calls = flaky.calls
    result = mem0.add_memory("I play chess on Tuesdays")
    assert result is not None and [o["type"] for o in result["operations"]] == ["ADD"]
    assert flaky.calls == calls + 3
    assert len(llm_server.chat_requests) == 1  # the LLM was asked once
    assert [m["text"] for m in s.list_memories()] == ["The user plays chess"]


def _stub(channel: Any) -> Any:
    return memory_pb2_grpc.MemoryServiceStub(channel)  # type: ignore[no-untyped-call]


def test_a_repeated_key_answers_the_first_response_and_applies_nothing(server: ServerThread) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = _stub(channel)
        memory = stub.AddMemory(
            memory_pb2.AddMemoryRequest(session=REF, text="Likes jazz", idempotency_key="a1")
        )
        replay = stub.AddMemory(
            memory_pb2.AddMemoryRequest(session=REF, text="Likes opera", idempotency_key="a1")
        ).memory
        assert replay == memory.memory
        memory_id = memory.memory.id
        first = stub.UpdateMemory(
            memory_pb2.UpdateMemoryRequest(
                session=REF, memory_id=memory_id, text="Likes bebop", idempotency_key="u1"
            )
        )
        stub.UpdateMemory(
            memory_pb2.UpdateMemoryRequest(
                session=REF, memory_id=memory_id, text="Likes swing", idempotency_key="u2"
            )
        )
        again = stub.UpdateMemory(
            memory_pb2.UpdateMemoryRequest(
                session=REF, memory_id=memory_id, text="Likes fusion", idempotency_key="u1"
            )
        )
        assert again == first and again.memory.text == "Likes bebop" and again.memory.revision == 2
        current = stub.GetMemory(memory_pb2.GetMemoryRequest(session=REF, memory_id=memory_id)).memory
        assert current.text == "Likes swing" and current.revision == 3
        # Deleting a missing memory with allow_missing is answered (and replayed) as it was.
        missing = memory_pb2.DeleteMemoryRequest(
            session=REF, memory_id="m-missing", allow_missing=True, idempotency_key="d1"
        )
        assert stub.DeleteMemory(missing).deleted is False
        assert stub.DeleteMemory(missing).deleted is False
        listed = stub.ListMemories(memory_pb2.ListMemoriesRequest(session=REF)).memories
        assert [m.text for m in listed] == ["Likes swing"]


def test_keys_belong_to_one_user_and_one_rpc(server: ServerThread) -> None:
    bob = common_pb2.SessionRef(app_name="default", user_id="bob", session_id="s1")
    with grpc.insecure_channel(server.address) as channel:
        stub = _stub(channel)
        mine = stub.AddMemory(
            memory_pb2.AddMemoryRequest(session=REF, text="Alice fact", idempotency_key="k")
        )
        theirs = stub.AddMemory(
            memory_pb2.AddMemoryRequest(session=bob, text="Bob fact", idempotency_key="k")
        )
        assert theirs.memory.text == "Bob fact" and theirs.memory.id != mine.memory.id
        with pytest.raises(grpc.RpcError) as info:
            stub.ClearMemories(memory_pb2.ClearMemoriesRequest(session=REF, idempotency_key="k"))
        error = from_rpc_error(info.value)
        assert error.reason == "IDEMPOTENCY_KEY_REUSED" and "AddMemory" in str(error)
        with pytest.raises(grpc.RpcError) as too_long:
            stub.AddMemory(memory_pb2.AddMemoryRequest(session=REF, text="x", idempotency_key="k" * 129))
        assert too_long.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        listed = stub.ListMemories(memory_pb2.ListMemoriesRequest(session=REF)).memories
        assert [m.text for m in listed] == ["Alice fact"]  # the refused clear deleted nothing


def test_a_key_older_than_a_day_applies_again(server: ServerThread, tmp_path: Path) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = _stub(channel)
        clear = memory_pb2.ClearMemoriesRequest(session=REF, idempotency_key="daily-clear")
        stub.AddMemory(memory_pb2.AddMemoryRequest(session=REF, text="Old fact"))
        assert stub.ClearMemories(clear).deleted_count == 1
        stub.AddMemory(memory_pb2.AddMemoryRequest(session=REF, text="New fact"))
        assert stub.ClearMemories(clear).deleted_count == 1  # replayed: "New fact" is still there
        assert len(stub.ListMemories(memory_pb2.ListMemoriesRequest(session=REF)).memories) == 1
        with sqlite3.connect(tmp_path / "data" / "sessionkit.db", timeout=30) as db:
            db.execute(
                "UPDATE sk_memory_idempotency SET create_us = create_us - ?", (IDEMPOTENCY_TTL_US + 1,)
            )
        assert stub.ClearMemories(clear).deleted_count == 1  # the record expired: applied again
        assert stub.ListMemories(memory_pb2.ListMemoriesRequest(session=REF)).memories == []


@pytest.mark.parametrize("server", ["sqlite", "postgres"], indirect=True)
async def test_concurrent_repeats_of_one_key_apply_once(server: ServerThread) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = _stub(channel)
        added = await stub.AddMemory(memory_pb2.AddMemoryRequest(session=REF, text="Counts sheep"))
        memory_id = added.memory.id
        request = memory_pb2.UpdateMemoryRequest(
            session=REF, memory_id=memory_id, quality_score=0.9, idempotency_key="same-update"
        )
        replies = await asyncio.gather(*(stub.UpdateMemory(request) for _ in range(12)))
        assert all(r == replies[0] for r in replies) and replies[0].memory.revision == 2
        changes = await stub.ListMemoryChanges(
            memory_pb2.ListMemoryChangesRequest(session=REF, memory_id=memory_id)
        )
        assert [c.operation for c in changes.changes] == [
            memory_pb2.MemoryChange.ADD,
            memory_pb2.MemoryChange.UPDATE,
        ]
        adds = await asyncio.gather(
            *(
                stub.AddMemory(
                    memory_pb2.AddMemoryRequest(session=REF, text=f"Fact {n}", idempotency_key="same-add")
                )
                for n in range(12)
            )
        )
        assert len({a.memory.id for a in adds}) == 1
        listed = await stub.ListMemories(memory_pb2.ListMemoriesRequest(session=REF))
        assert len(listed.memories) == 2


def test_an_extraction_in_flight_holds_its_key(server: ServerThread, llm_server: LLMServer) -> None:
    from tests.llm_server import Reply

    llm_server.script(Reply(content='{"operations": [{"type": "ADD", "fact": "The user rows"}]}', delay=1.5))
    request = memory_pb2.ExtractMemoriesRequest(
        session=REF,
        messages=[memory_pb2.ConversationMessage(role="user", content="I row every morning")],
        idempotency_key="turn-7",
    )
    with grpc.insecure_channel(server.address) as channel, ThreadPoolExecutor(1) as pool:
        stub = _stub(channel)
        first = pool.submit(stub.ExtractMemories, request)
        deadline = time.monotonic() + 10
        while not llm_server.chat_requests and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(grpc.RpcError) as info:
            stub.ExtractMemories(request)
        error = from_rpc_error(info.value)
        assert error.reason == "IDEMPOTENCY_KEY_IN_PROGRESS" and error.retry_after is not None
        response = first.result(timeout=30)
        assert stub.ExtractMemories(request) == response
    assert len(llm_server.chat_requests) == 1
    assert [o.fact for o in response.operations] == ["The user rows"]


def test_a_failed_extraction_releases_its_key(server: ServerThread, llm_server: LLMServer) -> None:
    for _ in range(4):
        llm_server.fail(500)
    llm_server.reply('{"operations": [{"type": "ADD", "fact": "The user swims"}]}')
    request = memory_pb2.ExtractMemoriesRequest(
        session=REF,
        messages=[memory_pb2.ConversationMessage(role="user", content="I swim")],
        idempotency_key="turn-8",
    )
    with grpc.insecure_channel(server.address) as channel:
        stub = _stub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ExtractMemories(request)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        retried = stub.ExtractMemories(request)  # nothing was applied: the retry runs
    assert [o.fact for o in retried.operations] == ["The user swims"]
    assert len(llm_server.chat_requests) == 5


async def test_records_expire_and_are_purged(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'm.db'}")
    store = MemoryStore(db)
    await store.start()
    owner = Owner("app", "u", "s")
    idem: Idempotency[int] = Idempotency("k", "ClearMemories", lambda n: str(n).encode())
    day = IDEMPOTENCY_TTL_US
    await store.remember(owner, idem, 7, now_us=10 * day)
    with pytest.raises(Replayed) as replay:
        await store.replay("app", "u", "k", "ClearMemories", 10 * day + day - 1)
    assert replay.value.response == b"7"
    await store.replay("app", "u", "k", "ClearMemories", 10 * day + day + 1)  # expired: no replay
    assert await store.purge_idempotency(10 * day + day - 1) == 0
    assert await store.purge_idempotency(10 * day + day + 1) == 1
    await db.close()


async def test_migrations_upgrade_a_0001_database(tmp_path: Path) -> None:
    from sessionkit_server.memory.store import MIGRATIONS, VERSION_TABLE

    db = Database(f"sqlite:///{tmp_path / 'old.db'}")

    def to_0001(conn: Connection) -> None:
        command.upgrade(alembic_config(MIGRATIONS, VERSION_TABLE, conn), "m0001")
        conn.execute(
            text(
                "INSERT INTO sk_memories (id, app_name, user_id, session_id, memory_type, scope, text, "
                "content_hash, quality, metadata, create_us, update_us, expire_us, revision) VALUES "
                "('m-old', 'app', 'u', 's', 2, '', 'kept', 'h', 0.5, '{}', 1, 1, NULL, 1)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO sk_memory_outbox (memory_id, app_name, action, create_us) "
                "VALUES ('m-old', 'app', 'upsert', 1)"
            )
        )

    await db.migrate(to_0001, VERSION_TABLE)
    store = MemoryStore(db)
    await store.start()

    def check(conn: Connection) -> tuple[str, list[str], list[str]]:
        version = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar_one()
        columns = [c["name"] for c in inspect(conn).get_columns("sk_memory_idempotency")]
        texts = [row[0] for row in conn.execute(text("SELECT text FROM sk_memories"))]
        return version, columns, texts

    version, columns, texts = await db.read(check)
    assert version == "m0006"
    # m0006: nothing on SQLite (FTS5's bm25 keeps its own statistics). m0005: the FTS5 index is
    # rebuilt with the lexical context column; the old row is still found.
    hits = await store.lexical(Owner("app", "u", "s"), None, "kept", 5, 2)
    assert [memory_id for memory_id, _ in hits] == ["m-old"]
    # m0004: the shared shape of idempotency tables (sessionkit_server.common.idempotency).
    assert columns == ["app_name", "user_id", "scope", "key", "method", "response", "create_us"]
    assert texts == ["kept"]
    # m0003: outbox entries say which partition their vector is in; an older entry has none.
    (entry,) = await store.pending()
    assert (entry.row_id, entry.collection) == ("m-old", None)
    await db.close()


async def test_m0006_backfills_the_bm25_statistics_of_existing_rows(empty_database: str) -> None:
    """On PostgreSQL m0006 adds each row's lexical length and each user's statistics for the rows
    already there; a search after the upgrade ranks by BM25 among the user's own rows."""
    from sessionkit_server.memory.store import MIGRATIONS, VERSION_TABLE

    db = Database(empty_database)
    if not db.is_postgres:
        await db.close()
        pytest.skip("m0006 changes nothing on SQLite")

    def to_0005(conn: Connection) -> None:
        command.upgrade(alembic_config(MIGRATIONS, VERSION_TABLE, conn), "m0005")
        for n, (user, words) in enumerate(
            [("u", "green tea"), ("u", "green tea and more tea"), ("v", "tea for two"), ("u", "coffee")]
        ):
            conn.execute(
                text(
                    "INSERT INTO sk_memories (id, app_name, user_id, session_id, memory_type, scope, "
                    "text, content_hash, quality, metadata, create_us, update_us, expire_us, revision) "
                    f"VALUES ('m-{n}', 'app', '{user}', 's', 2, '', '{words}', 'h{n}', 0.5, '{{}}', 1, 1, "
                    "NULL, 1)"
                )
            )

    try:
        await db.migrate(to_0005, VERSION_TABLE)
        store = MemoryStore(db)
        await store.start()
        stats = await db.read(
            lambda conn: [
                tuple(r)
                for r in conn.execute(
                    text("SELECT user_id, docs, tokens FROM sk_memory_lexical_stats ORDER BY user_id")
                )
            ]
        )
        assert stats == [("u", 3, 6), ("v", 1, 2)]  # 2 + 3 ("and", "more": stop words) + 1 words
        hits = await store.lexical(Owner("app", "u", "s"), None, "tea", 5, 2)
        assert [memory_id for memory_id, _ in hits] == ["m-1", "m-0"]  # tea twice: the first
    finally:
        await db.close()
