"""The synchronous face of agents and workflows, generated from the async implementation
(sessionkit.agent) as Session is from AsyncSession (sessionkit._sync): every public member, with the
same parameters and docstring; streams (``chat(stream=True)``, ``stream``, ``events``) come back as
blocking iterators. Type checkers read agent_sync.pyi (sessionkit._stubgen)."""

from __future__ import annotations

from sessionkit._sync import SyncFacade, sync_of
from sessionkit.agent import AsyncAgent, AsyncWorkflow


@sync_of(AsyncAgent)
class Agent(SyncFacade[AsyncAgent]):
    """An agent of a Session (from ``session.Agent(...)``). ``agent.chat("...")`` returns the answer;
    ``agent.chat("...", stream=True)`` or ``agent.stream("...")`` yields its text pieces as they are
    generated; ``agent.last_metadata`` is the last turn's metadata."""


@sync_of(AsyncWorkflow, construct=True)
class Workflow(SyncFacade[AsyncWorkflow]):
    """Agents of one Session working through tasks in order (process="sequential"); the seed's
    ``PraisonAIAgents``. ``start()`` returns the last task's output; ``result`` holds every task's."""


#: The seed's name for a workflow.
PraisonAIAgents = Workflow
