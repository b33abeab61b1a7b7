"""Session: the synchronous API of the seed (PraisonAI's Session), generated from AsyncSession.

Every public member of AsyncSession is here with the same name, parameters and docstring
(sessionkit._sync): coroutines run on the SDK's background loop, async iterators (``watch_state``,
``iter_events``, ``chat(stream=True)``) come back as blocking iterators, agents as sync Agents.
Only what does more than forward is written here (``Agent()`` stores the agent at once). Type
checkers read session.pyi, written from AsyncSession by sessionkit._stubgen.
"""

from __future__ import annotations

from typing import Any

from sessionkit import _loop, agent_sync
from sessionkit._sync import SyncFacade, same_api, sync_of
from sessionkit.async_session import AsyncSession, SessionKnowledge, SessionMemory


@sync_of(SessionKnowledge)
class SyncSessionKnowledge(SyncFacade[SessionKnowledge]):
    """``session.knowledge``: the session's knowledge methods on one object."""


@sync_of(SessionMemory)
class SyncSessionMemory(SyncFacade[SessionMemory]):
    """``session.memory``: the session's memory methods on one object."""


@sync_of(AsyncSession, construct=True)
class Session(SyncFacade[AsyncSession]):
    """A persistent session: state, an event log, memory, knowledge and agents.

    ``Session("x")`` just works: with no address configured it uses an embedded local server that keeps
    its data under ``storage_path`` (default ``.sessionkit``), shared safely by every process using that
    path. ``Session("x", address="host:port")`` (or ``SESSIONKIT_ADDRESS``) talks to running services;
    ``Session("x", agent_url="host:port/agent")`` to a remote sessionkit gateway over HTTP.

    ``auto_save=True`` (the default) writes each change through at once. With ``auto_save=False``,
    ``set_state``/``delete_state`` changes stay in this object (``get_state`` sees them) until
    ``save_state()`` writes them in one atomic write; ``restore_state()`` returns the saved state.
    Keys prefixed ``user:`` are shared by the user's sessions, ``app:`` by every user of the app,
    and ``temp:`` keys are never persisted.

    The methods are AsyncSession's, run synchronously (see its methods for their documentation).
    """

    @same_api(AsyncSession.Agent)
    def Agent(self, *args: Any, **kwargs: Any) -> agent_sync.Agent:
        agent = self._async.Agent(*args, **kwargs)
        # Stored at once, so a bad definition fails here, where it is written.
        _loop.run(agent.ensure())
        return agent_sync.Agent._wrap(agent)

    create_agent = Agent  # the seed's legacy name
