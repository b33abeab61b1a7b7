"""What the agent tests share: server settings pointing at the scripted LLM, an SDK session, waiting for
background writes, and the system prompt a request carried."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sessionkit import Session
from sessionkit_server.common.config import ServerSettings
from tests.servers import ServerThread

MODEL = "test-model"


def settings(tmp_path: Path, llm_base_url: str, database_url: str = "") -> ServerSettings:
    return ServerSettings(
        port=0,
        data_dir=tmp_path / "data",
        database_url=database_url,
        log_format="text",
        llm_base_url=llm_base_url,
        llm_model=MODEL,
        llm_api_key="sk-test",
    )


def session(server: ServerThread, sid: str = "chat-1", user: str = "alice", **kwargs: Any) -> Session:
    return Session(sid, user, address=server.address, **kwargs)


def eventually(check: Any, timeout: float = 20.0) -> Any:
    """``check()``'s first truthy value (memory is written after the reply, in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def system_prompt(request: Any) -> str:
    return str(request.messages[0]["content"])
