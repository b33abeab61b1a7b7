"""The agent service's tables: agent definitions (stored with their session), conversation leases
(one turn per session at a time, across replicas) and idempotency records of turns and writes."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, LargeBinary, MetaData, String, Table

from sessionkit_server.common.idempotency import idempotency_table

metadata = MetaData()
ID = String(128)

agents = Table(
    "sk_agents",
    metadata,
    Column("app_name", ID, primary_key=True),
    Column("user_id", ID, primary_key=True),
    Column("session_id", ID, primary_key=True),
    Column("name", String(128), primary_key=True),
    # The serialized sessionkit.v1.AgentDefinition (without session and times): the proto is the schema,
    # so adding a field to it needs no migration.
    Column("definition", LargeBinary, nullable=False),
    # The create time of the session the agent was defined in: a session deleted and created again
    # under the same id does not inherit the old session's agents.
    Column("session_create_us", BigInteger, nullable=False),
    Column("create_us", BigInteger, nullable=False),
    Column("update_us", BigInteger, nullable=False),
)

# At most one row per session: the turn (or workflow) holding the conversation, until expire_us. A
# lease, not a lock held by a connection: a replica that dies mid-turn frees it when it expires.
leases = Table(
    "sk_agent_leases",
    metadata,
    Column("app_name", ID, primary_key=True),
    Column("user_id", ID, primary_key=True),
    Column("session_id", ID, primary_key=True),
    Column("holder", String(64), nullable=False),
    Column("expire_us", BigInteger, nullable=False),
)

# A call with an idempotency key, per session (scope = session id): claimed (response NULL) when it
# starts, completed with its response.
idempotency = idempotency_table(metadata, "sk_agent_idempotency")
