"""gRPC adapter of the agent service: converts sessionkit.v1 messages to the agent's records and back
(sessionkit_server.agent.convert) and calls AgentService. ChatStream runs the turn as a task and
multiplexes: its progress and CLIENT tool calls go out on the stream, the client's tool results come
back on it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from sessionkit.errors import FieldViolation, InvalidArgument
from sessionkit.v1 import agent_pb2, agent_pb2_grpc
from sessionkit_server.agent import convert
from sessionkit_server.agent.records import ClientToolCall, IfExists, ToolCallRecord, WorkflowEvent
from sessionkit_server.agent.service import AgentService
from sessionkit_server.agent.turn_io import TurnIO
from sessionkit_server.agent.upstream import caller_key
from sessionkit_server.common.auth import key_from_metadata

Context = Any
_DONE = object()


def _caller(context: Context) -> None:
    """Remember the caller's key for the upstream calls this RPC makes (context-local)."""
    caller_key.set(key_from_metadata(context.invocation_metadata()))


def _deadline(context: Context) -> float | None:
    remaining = context.time_remaining()
    return time.monotonic() + remaining if remaining is not None else None


class _StreamIO(TurnIO):
    """Sends a turn's progress to the client and waits for its CLIENT tool results."""

    def __init__(self, out: asyncio.Queue[Any], stream: bool) -> None:
        self.out = out
        self.stream = stream
        self.pending: dict[str, asyncio.Future[tuple[str | None, str | None]]] = {}
        self.answered: set[str] = set()
        self.closed = False

    async def started(self, turn_id: str, waited: float) -> None:
        message = agent_pb2.ChatTurnStarted(turn_id=turn_id)
        message.waited.FromNanoseconds(int(waited * 1e9))
        await self.out.put(agent_pb2.ChatStreamResponse(started=message))

    async def delta(self, text: str, round_: int) -> None:
        if self.stream:
            await self.out.put(
                agent_pb2.ChatStreamResponse(text_delta=agent_pb2.ChatTextDelta(text=text, round=round_))
            )

    async def tool_completed(self, record: ToolCallRecord) -> None:
        await self.out.put(
            agent_pb2.ChatStreamResponse(tool_call_completed=convert.tool_record_message(record))
        )

    async def client_tool(self, call: ClientToolCall, tool_timeout: float) -> tuple[str | None, str | None]:
        if self.closed:
            return None, "the client closed its side of the stream before the tool was called"
        future: asyncio.Future[tuple[str | None, str | None]] = asyncio.get_running_loop().create_future()
        self.pending[call.call_id] = future
        await self.out.put(agent_pb2.ChatStreamResponse(tool_call=convert.client_tool_call_message(call)))
        try:
            return await asyncio.wait_for(future, tool_timeout)
        except TimeoutError:
            return None, f"tool {call.tool_name!r} timed out after {tool_timeout:g}s"
        finally:
            self.pending.pop(call.call_id, None)
            self.answered.add(call.call_id)

    def result(self, message: agent_pb2.ChatToolResult) -> None:
        future = self.pending.get(message.call_id)
        if future is None:
            if message.call_id in self.answered:
                return  # a late answer to a call that timed out: ignored, as documented
            raise InvalidArgument(
                f"tool_result for unknown call id {message.call_id!r}",
                violations=[FieldViolation("tool_result.call_id", "not a call id this turn sent")],
            )
        if message.WhichOneof("outcome") == "error":
            future.set_result((None, message.error or "the tool failed"))
        else:
            future.set_result((message.result_json, None))

    def close(self) -> None:
        self.closed = True
        for future in self.pending.values():
            if not future.done():
                future.set_result((None, "the client closed its side of the stream"))


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, service: AgentService) -> None:
        self.service = service

    async def CreateAgent(
        self, request: agent_pb2.CreateAgentRequest, context: Context
    ) -> agent_pb2.CreateAgentResponse:
        _caller(context)
        agent, created = await self.service.agents.create(
            convert.session_ref(request.session),
            convert.definition(request.agent),
            convert.enum_value(IfExists, request.if_exists),
        )
        return agent_pb2.CreateAgentResponse(agent=convert.definition_message(agent), created=created)

    async def GetAgent(
        self, request: agent_pb2.GetAgentRequest, context: Context
    ) -> agent_pb2.GetAgentResponse:
        _caller(context)
        agent = await self.service.agents.get(convert.session_ref(request.session), request.agent_name)
        return agent_pb2.GetAgentResponse(agent=convert.definition_message(agent))

    async def ListAgents(
        self, request: agent_pb2.ListAgentsRequest, context: Context
    ) -> agent_pb2.ListAgentsResponse:
        _caller(context)
        agents, token = await self.service.agents.list_page(
            convert.session_ref(request.session), request.page_size, request.page_token
        )
        return agent_pb2.ListAgentsResponse(
            agents=[convert.definition_message(a) for a in agents], next_page_token=token
        )

    async def DeleteAgent(
        self, request: agent_pb2.DeleteAgentRequest, context: Context
    ) -> agent_pb2.DeleteAgentResponse:
        _caller(context)
        deleted = await self.service.agents.delete(
            convert.session_ref(request.session), request.agent_name, request.allow_missing
        )
        return agent_pb2.DeleteAgentResponse(deleted=deleted)

    async def Chat(self, request: agent_pb2.ChatRequest, context: Context) -> agent_pb2.ChatResponse:
        _caller(context)
        result = await self.service.turns.chat(
            convert.session_ref(request.session),
            request.agent_name,
            request.message,
            convert.chat_options(request.options),
            idempotency_key=request.idempotency_key,
            deadline=_deadline(context),
        )
        return agent_pb2.ChatResponse(
            text=result.text, metadata=convert.turn_metadata_message(result.metadata)
        )

    async def ChatStream(
        self, request_iterator: AsyncIterator[agent_pb2.ChatStreamRequest], context: Context
    ) -> AsyncIterator[agent_pb2.ChatStreamResponse]:
        _caller(context)
        requests = request_iterator.__aiter__()
        try:
            first = await requests.__anext__()
        except StopAsyncIteration:
            raise InvalidArgument(
                "the stream ended before its start message",
                violations=[FieldViolation("start", "send start first")],
            ) from None
        if first.WhichOneof("kind") != "start":
            raise InvalidArgument(
                "the first message must be start", violations=[FieldViolation("start", "send start first")]
            )
        start = first.start
        out: asyncio.Queue[Any] = asyncio.Queue()
        io = _StreamIO(out, start.stream)
        problem: list[BaseException] = []

        async def turn() -> None:
            try:
                result = await self.service.turns.chat(
                    convert.session_ref(start.session),
                    start.agent_name,
                    start.message,
                    convert.chat_options(start.options),
                    idempotency_key=start.idempotency_key,
                    stream=start.stream,
                    client_tools=convert.tool_specs(start.tools),
                    io=io,
                    deadline=_deadline(context),
                )
                await out.put(agent_pb2.ChatStreamResponse(result=convert.turn_result_message(result)))
            except BaseException as error:  # handed to the handler, which raises it as the status
                problem.append(error)
            finally:
                await out.put(_DONE)

        async def read() -> None:
            try:
                async for message in requests:
                    if message.WhichOneof("kind") != "tool_result":
                        raise InvalidArgument(
                            "start may be sent only once",
                            violations=[FieldViolation("start", "a second start")],
                        )
                    io.result(message.tool_result)
            except InvalidArgument as error:
                problem.append(error)
                runner.cancel()
                return
            io.close()

        runner = asyncio.create_task(turn())
        reader = asyncio.create_task(read())
        try:
            while True:
                item = await out.get()
                if item is _DONE:
                    break
                yield item
        finally:
            runner.cancel()
            reader.cancel()
            for task in (runner, reader):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if problem and not isinstance(problem[0], asyncio.CancelledError):
            raise problem[0]
        if problem:
            raise problem[-1]

    async def RunWorkflow(
        self, request: agent_pb2.RunWorkflowRequest, context: Context
    ) -> AsyncIterator[agent_pb2.RunWorkflowResponse]:
        _caller(context)
        workflow = convert.workflow_request(request)
        out: asyncio.Queue[Any] = asyncio.Queue()
        problem: list[BaseException] = []

        async def send(event: WorkflowEvent) -> None:
            # Converted now: the business layer goes on changing its records after sending them.
            await out.put(convert.workflow_event_message(event))

        async def run() -> None:
            try:
                await self.service.workflows.run(workflow, send, _deadline(context))
            except BaseException as error:
                problem.append(error)
            finally:
                await out.put(_DONE)

        runner = asyncio.create_task(run())
        try:
            while True:
                item = await out.get()
                if item is _DONE:
                    break
                yield item
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        if problem:
            raise problem[0]
