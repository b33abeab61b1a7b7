"""The idempotency tables of memory, knowledge, agent and state move to the shared shape
(sessionkit_server.common.idempotency) with their rows: a database written before (older revision,
older shape, keys in use) keeps replaying its keys after the upgrade, on SQLite and PostgreSQL, and the
migrated schema is exactly what the tables describe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, MetaData, text

from sessionkit.errors import FailedPrecondition
from sessionkit_server.agent import tables as agent_tables
from sessionkit_server.agent.store import MIGRATIONS as AGENT_MIGRATIONS
from sessionkit_server.agent.store import VERSION_TABLE as AGENT_VERSIONS
from sessionkit_server.agent.store import AgentStore, Conversation
from sessionkit_server.common.db import Database
from sessionkit_server.common.idempotency import KeySpace, Replayed
from sessionkit_server.common.migrate import alembic_config
from sessionkit_server.knowledge import tables as knowledge_tables
from sessionkit_server.knowledge.store import MIGRATIONS as KNOWLEDGE_MIGRATIONS
from sessionkit_server.knowledge.store import VERSION_TABLE as KNOWLEDGE_VERSIONS
from sessionkit_server.knowledge.store import KnowledgeStore
from sessionkit_server.memory import tables as memory_tables
from sessionkit_server.memory.store import MIGRATIONS as MEMORY_MIGRATIONS
from sessionkit_server.memory.store import VERSION_TABLE as MEMORY_VERSIONS
from sessionkit_server.memory.store import MemoryStore
from sessionkit_server.state import tables as state_tables
from sessionkit_server.state.sql_store import MIGRATIONS as STATE_MIGRATIONS
from sessionkit_server.state.sql_store import VERSION_TABLE as STATE_VERSIONS
from sessionkit_server.state.sql_store import SqlStateStore
from sessionkit_server.state.store import EventRecord, SessionKey, WriteTx

NOW = 1_000_000_000


def _differences(conn: Connection, version_table: str, metadata: MetaData, table: str) -> list[Any]:
    """How the migrated ``table`` differs from its description (the other tables have their own tests)."""

    def include(name: str | None, kind: str, parent: Any) -> bool:
        return kind != "table" or name == table

    context = MigrationContext.configure(
        conn, opts={"version_table": version_table, "compare_type": True, "include_name": include}
    )
    only = MetaData()
    metadata.tables[table].to_metadata(only)
    return list(compare_metadata(context, only))


async def _at(
    db: Database, migrations: Path, version_table: str, revision: str, insert: str, response: bytes
) -> None:
    def run(conn: Connection) -> None:
        command.upgrade(alembic_config(migrations, version_table, conn), revision)
        conn.execute(text(insert), {"response": response})

    await db.migrate(run, version_table)


async def test_memory_keys_survive_the_reshape(empty_database: str) -> None:
    db = Database(empty_database)
    await _at(
        db, MEMORY_MIGRATIONS, MEMORY_VERSIONS, "m0003",
        "INSERT INTO sk_memory_idempotency (app_name, user_id, key, method, response, create_us) "
        f"VALUES ('app', 'u', 'k1', 'AddMemory', :response, {NOW})",
        b"first",
    )  # fmt: skip
    store = MemoryStore(db)
    await store.start()
    with pytest.raises(Replayed) as replay:
        await store.replay("app", "u", "k1", "AddMemory", NOW + 1)
    assert replay.value.response == b"first"
    assert (
        await db.read(
            lambda c: _differences(c, MEMORY_VERSIONS, memory_tables.metadata, "sk_memory_idempotency")
        )
        == []
    )
    await db.close()


async def test_knowledge_keys_survive_the_reshape(empty_database: str) -> None:
    db = Database(empty_database)
    await _at(
        db, KNOWLEDGE_MIGRATIONS, KNOWLEDGE_VERSIONS, "k0003",
        "INSERT INTO sk_knowledge_idempotency (app_name, user_id, key, method, response, create_us) "
        f"VALUES ('app', 'u', 'k1', 'DeleteKnowledgeSource', :response, {NOW})",
        b"gone",
    )  # fmt: skip
    store = KnowledgeStore(db)
    await store.start()
    rows = await db.read(
        lambda c: c.execute(text("SELECT scope, response FROM sk_knowledge_idempotency")).all()
    )
    assert [(r[0], bytes(r[1])) for r in rows] == [("", b"gone")]
    ledger_state = await db.read(
        lambda c: store.keys.state_in(c, KeySpace("app", "u"), "k1", "DeleteKnowledgeSource", NOW + 1)
    )
    assert ledger_state.response == b"gone"
    assert (
        await db.read(
            lambda c: _differences(
                c, KNOWLEDGE_VERSIONS, knowledge_tables.metadata, "sk_knowledge_idempotency"
            )
        )
        == []
    )
    await db.close()


async def test_agent_keys_keep_their_session(empty_database: str) -> None:
    db = Database(empty_database)
    await _at(
        db, AGENT_MIGRATIONS, AGENT_VERSIONS, "a0001",
        "INSERT INTO sk_agent_idempotency (app_name, user_id, session_id, key, method, response, create_us) "
        f"VALUES ('app', 'u', 's1', 'k1', 'Chat', :response, {NOW})",
        b"reply",
    )  # fmt: skip
    store = AgentStore(db)
    await store.start()
    claim = await store.claim(Conversation("app", "u", "s1"), "k1", "Chat", NOW + 1)
    assert (claim.claimed, claim.response) == (False, b"reply")
    # The same key in another session of the user is another key.
    other = await store.claim(Conversation("app", "u", "s2"), "k1", "Chat", NOW + 1)
    assert (other.claimed, other.response) == (True, None)
    assert (
        await db.read(
            lambda c: _differences(c, AGENT_VERSIONS, agent_tables.metadata, "sk_agent_idempotency")
        )
        == []
    )
    await db.close()


WRITE_RESPONSE = b'{"version": 1, "value": null, "existed": false, "length": 0}'


async def test_state_keys_keep_their_session_and_kind(empty_database: str) -> None:
    db = Database(empty_database)

    def old_data(conn: Connection) -> None:
        command.upgrade(alembic_config(STATE_MIGRATIONS, STATE_VERSIONS, conn), "0001")
        for pk, session in ((7, "s1"), (8, "s2")):
            conn.execute(
                text(
                    "INSERT INTO sk_sessions (pk, app_name, user_id, session_id, state, version, "
                    "event_count, create_us, update_us) VALUES (:pk, 'app', 'u', :s, '{}', 1, 1, :t, :t)"
                ),
                {"pk": pk, "s": session, "t": NOW},
            )
        conn.execute(
            text(
                "INSERT INTO sk_events (id, session_pk, role, content, author, metadata, create_us) "
                "VALUES (3, 7, 'user', 'hi', '', '{}', :t)"
            ),
            {"t": NOW},
        )
        for key, response in (("w1", WRITE_RESPONSE), ("e1", b"event:3")):
            conn.execute(
                text(
                    "INSERT INTO sk_idempotency (session_pk, key, response, create_us) "
                    "VALUES (7, :key, :response, :t)"
                ),
                {"key": key, "response": response, "t": NOW},
            )

    await db.migrate(old_data, STATE_VERSIONS)
    store = SqlStateStore(db)
    await store.start()
    s1, s2 = SessionKey("app", "u", "s1"), SessionKey("app", "u", "s2")

    def replayed(tx: WriteTx) -> bytes | None:
        return tx.replayed_response

    # The state write's key replays its response; the event's key returns the first event.
    assert (
        await store.write(s1, "w1", NOW + 1, replayed)
        == b'{"version": 1, "value": null, "existed": false, "length": 0}'
    )
    again = await store.append_event(s1, EventRecord(0, "user", "again", "", {}, 0), "e1", NOW + 1)
    assert (again.id, again.content) == (3, "hi")
    # Each kept its kind: reused for the other kind, it is refused.
    with pytest.raises(FailedPrecondition) as info:
        await store.append_event(s1, EventRecord(0, "user", "x", "", {}, 0), "w1", NOW + 1)
    assert info.value.reason == "IDEMPOTENCY_KEY_REUSED"
    with pytest.raises(FailedPrecondition):
        await store.write(s1, "e1", NOW + 1, replayed)
    # And its session: in another session of the user the key is free.
    assert await store.write(s2, "w1", NOW + 1, replayed) is None
    rows = await db.read(
        lambda c: c.execute(text("SELECT scope, key, method FROM sk_idempotency ORDER BY key")).all()
    )
    assert [tuple(r) for r in rows] == [("s1", "e1", "an event append"), ("s1", "w1", "a state write")]
    assert (
        await db.read(lambda c: _differences(c, STATE_VERSIONS, state_tables.metadata, "sk_idempotency"))
        == []
    )
    await db.close()
