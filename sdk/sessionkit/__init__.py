"""sessionkit: stateful sessions for AI agents.

from sessionkit import Session
session = Session("customer_support_123")
session.save_state({"customer_name": "John Doe", "ticket_id": "SUP-456"})
"""

from sessionkit.agent import AsyncAgent, AsyncWorkflow, Task
from sessionkit.agent_sync import Agent, PraisonAIAgents, Workflow
from sessionkit.async_session import AsyncSession
from sessionkit.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    NotImplementedByServer,
    PermissionDenied,
    RateLimited,
    ResourceExhausted,
    ServiceUnavailable,
    SessionKitError,
    SessionNotFound,
    StateConflict,
    Unauthenticated,
)
from sessionkit.remote import RemoteConnectionError
from sessionkit.retry import RetryPolicy
from sessionkit.session import Session
from sessionkit.state_client import Event, SessionInfo, StateChange, StateVersion

__all__ = [
    "Agent",
    "AlreadyExists",
    "AsyncAgent",
    "AsyncSession",
    "AsyncWorkflow",
    "DeadlineExceeded",
    "Event",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "NotImplementedByServer",
    "PermissionDenied",
    "PraisonAIAgents",
    "RateLimited",
    "RemoteConnectionError",
    "ResourceExhausted",
    "RetryPolicy",
    "ServiceUnavailable",
    "Session",
    "SessionInfo",
    "SessionKitError",
    "SessionNotFound",
    "StateChange",
    "StateConflict",
    "StateVersion",
    "Task",
    "Unauthenticated",
    "Workflow",
]
__version__ = "0.1.0"
