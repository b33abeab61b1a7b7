"""The agent service's settings (the composition root, sessionkit_server.server, fills them in)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class AgentSettings:
    #: Prompt budget in tokens (system prompt, context, history and message).
    context_tokens: int = 6000
    #: A turn's conversation lease; renewed while the turn runs, so only a dead replica's lapses.
    lease_seconds: float = 30.0
    #: How often a waiting turn looks again (a turn ending in this process wakes it at once).
    busy_poll_seconds: float = 0.1
    max_agents_per_session: int = 100
    default_history_events: int = 20
    default_tool_rounds: int = 8
    default_tool_timeout: float = 60.0
    #: Write each turn's memory after answering (the exchange is in the event log already, durably):
    #: embedding it took 40% of a turn's own time (bench/agent_bench.py). False: before answering,
    #: with the ids in TurnMetadata.stored_memory_ids.
    memory_after_reply: bool = True
