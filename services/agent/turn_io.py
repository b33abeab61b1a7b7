"""Where a turn's progress goes while it runs. The unary Chat ignores it; ChatStream (in the gRPC
servicer) sends it to the client and answers CLIENT tool calls with the client's results; a workflow
reports it per task."""

from __future__ import annotations

from sessionkit_server.agent.records import ClientToolCall, ToolCallRecord


class TurnIO:
    async def started(self, turn_id: str, waited: float) -> None:
        return None

    async def delta(self, text: str, round_: int) -> None:
        return None

    async def tool_completed(self, record: ToolCallRecord) -> None:
        return None

    async def client_tool(self, call: ClientToolCall, tool_timeout: float) -> tuple[str | None, str | None]:
        """Ask the client to run a CLIENT tool: (result_json, None) or (None, error)."""
        return None, "client tools can only be used through ChatStream"
