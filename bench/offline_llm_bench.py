"""Answer speed of the offline default LLM: today's runtime (transformers on torch's CPU build) against
the llama.cpp one it replaced (llama-cpp-python), same model file, same prompts, same HTTP endpoint code.

The llama.cpp endpoint is the module as it was before the change (``git show REF:services/agent/
offline_llm.py``, loaded from a temporary file), so both are measured through the same OpenAI-compatible
path with the real ``openai`` client. It needs llama-cpp-python installed (it compiles: not part of
``make install``); without it only the current runtime is measured.

Rounds alternate between the runtimes so that both see the same background load; the machine's load
average is printed with the figures. Per runtime:

- load: seconds to load and warm up the model (once per process; transformers reads the converted copy
  its first load kept, see offline_model.converted_copy: SESSIONKIT_OFFLINE_LLM_CACHE=off measures
  the conversion from the GGUF);
- TTFT: time to the first streamed text of a short question (the prompt's prefill plus one token);
- decode: tokens/s between the first and the last streamed piece of a 128-token answer;
- answer: seconds for a whole non-streamed answer of at most 64 tokens to the short question (the
  runtimes' numerics differ, so their greedy answers, and lengths, may too: printed at the end).

Usage: python bench/offline_llm_bench.py [--rounds 5] [--baseline-ref c65a034] [--threads N]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import openai
from openai.types.chat import ChatCompletionMessageParam

ROOT = Path(__file__).resolve().parent.parent
SHORT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is the capital of France?"}]
LONG: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Write a long story about a robot who learns to paint."}
]


def load_baseline(ref: str) -> ModuleType | None:
    """The offline_llm module as of ``ref`` (the llama.cpp runtime), or None if it cannot run here."""
    if importlib.util.find_spec("llama_cpp") is None:
        print("llama-cpp-python is not installed: measuring the current runtime only", file=sys.stderr)
        return None
    source = subprocess.run(
        ["git", "show", f"{ref}:services/agent/offline_llm.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "offline_llm_llamacpp.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("offline_llm_llamacpp", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


async def ttft(client: openai.AsyncOpenAI) -> float:
    started = time.perf_counter()
    stream = await client.chat.completions.create(
        model="offline", messages=SHORT, max_tokens=8, temperature=0, stream=True
    )
    first = 0.0
    async for chunk in stream:
        if not first and any(c.delta.content for c in chunk.choices):
            first = time.perf_counter() - started
    return first


async def decode_rate(client: openai.AsyncOpenAI) -> float:
    stream = await client.chat.completions.create(
        model="offline",
        messages=LONG,
        max_tokens=128,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    arrivals: list[float] = []
    tokens = 0
    async for chunk in stream:
        if any(c.delta.content for c in chunk.choices):
            arrivals.append(time.perf_counter())
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return (tokens - 1) / (arrivals[-1] - arrivals[0])


async def answer(client: openai.AsyncOpenAI) -> tuple[float, str]:
    started = time.perf_counter()
    reply = await client.chat.completions.create(
        model="offline", messages=SHORT, max_tokens=64, temperature=0
    )
    tokens = reply.usage.completion_tokens if reply.usage else 0
    return time.perf_counter() - started, f"{tokens} tokens: {reply.choices[0].message.content!r}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline-ref", default="c65a034", help="git ref of the llama.cpp runtime")
    parser.add_argument("--threads", type=int, default=None, help="threads of each runtime")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sessionkit_server.agent import offline_llm

    runtimes: dict[str, Any] = {"transformers": offline_llm}
    baseline = load_baseline(args.baseline_ref)
    if baseline is not None:
        runtimes["llama.cpp"] = baseline
    print(f"load average before: {os.getloadavg()}")
    endpoints: dict[str, tuple[Any, openai.AsyncOpenAI]] = {}
    loads: dict[str, float] = {}
    for name, module in runtimes.items():
        llm = module.OfflineLLM(n_threads=args.threads)
        await llm.start()
        loads[name] = llm.load_seconds
        endpoints[name] = (llm, openai.AsyncOpenAI(base_url=llm.base_url, api_key="x", max_retries=0))
    results: dict[str, dict[str, list[float]]] = {
        n: {"ttft": [], "decode": [], "answer": []} for n in runtimes
    }
    answers: dict[str, str] = {}
    for _ in range(args.rounds):
        for name, (_, client) in endpoints.items():
            results[name]["ttft"].append(await ttft(client))
            results[name]["decode"].append(await decode_rate(client))
            seconds, text = await answer(client)
            results[name]["answer"].append(seconds)
            answers[name] = text
    print(f"load average after: {os.getloadavg()}")
    print(f"threads: {next(iter(endpoints.values()))[0].n_threads}, rounds: {args.rounds}")
    print("| runtime | load s | TTFT ms p50 | decode tokens/s p50 (min-max) | 64-token answer s p50 |")
    print("|---|---|---|---|---|")
    for name, figures in results.items():
        decode = figures["decode"]
        print(
            f"| {name} | {loads[name]:.1f} | {statistics.median(figures['ttft']) * 1000:.0f} | "
            f"{statistics.median(decode):.1f} ({min(decode):.1f}-{max(decode):.1f}) | "
            f"{statistics.median(figures['answer']):.2f} |"
        )
    for name, text in answers.items():
        print(f"{name} answers in {text}")
    for llm, client in endpoints.values():
        await client.close()
        await llm.close()


if __name__ == "__main__":
    asyncio.run(main())
