"""Coalescing concurrent embedding calls into shared model calls.

A model embeds a batch of texts faster per text than a few at a time, and every call pays a hop to the
embedding thread. Concurrent ingestions of small sources (a folder added as a batch: several uploads in
flight, each with one or two chunks) each need a few texts embedded: instead of one model call each,
they join a batch. There is no timer: the first call goes to the model at once, and the calls that
arrive while a batch runs form the next one (up to ``max_batch`` texts), so a lone caller waits for
nothing and a busy server batches by itself. (sessionkit_server.memory.batching builds on it for
single texts.)"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from sessionkit_server.retrieval.embeddings import Embedder

#: Texts sent to the model at once, at most (the local model's own batch size); a larger call runs alone.
MAX_BATCH = 64

In = TypeVar("In")
Out = TypeVar("Out")


class CoalescingEmbedder:
    """``embed`` calls of one event loop, coalesced into ``embedder.embed`` batches."""

    def __init__(self, embedder: Embedder, max_batch: int = MAX_BATCH) -> None:
        self.embedder = embedder
        self.max_batch = max_batch
        self._waiting: list[tuple[list[str], asyncio.Future[list[list[float]]]]] = []
        self._worker: asyncio.Task[None] | None = None

    async def embed(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        if len(texts) >= self.max_batch:
            return await self.embedder.embed(texts)  # a full batch on its own: nothing to gain
        future: asyncio.Future[list[list[float]]] = asyncio.get_running_loop().create_future()
        self._waiting.append((list(texts), future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run())
        return await future

    def _take(self) -> list[tuple[list[str], asyncio.Future[list[list[float]]]]]:
        """The next batch: waiting calls in arrival order while their texts fit in ``max_batch`` (at
        least one call)."""
        taken, size = 0, 0
        for texts, _ in self._waiting:
            if taken and size + len(texts) > self.max_batch:
                break
            taken, size = taken + 1, size + len(texts)
        batch, self._waiting = self._waiting[:taken], self._waiting[taken:]
        return [(texts, future) for texts, future in batch if not future.done()]  # skip cancelled

    async def _run(self) -> None:
        while self._waiting:
            live = self._take()
            if not live:
                continue
            try:
                vectors = await self.embedder.embed([text for texts, _ in live for text in texts])
            except BaseException as error:  # each caller gets the model's error, as from its own call
                failure = error if isinstance(error, Exception) else RuntimeError("embedding was cancelled")
                for _, future in live:
                    if not future.done():
                        future.set_exception(failure)
                if not isinstance(error, Exception):
                    raise  # the worker itself is cancelled (shutdown): the waiting callers were told
                continue
            start = 0
            for texts, future in live:
                if not future.done():
                    future.set_result(vectors[start : start + len(texts)])
                start += len(texts)


class Coalescer(Generic[In, Out]):
    """Concurrent calls of one event loop, each for one item, coalesced into calls of ``run`` on a
    list of items (``run`` answers in order, one result per item). As :class:`CoalescingEmbedder`:
    the first item goes at once and the items that arrive while a batch runs form the next one (up to
    ``max_batch``), so a lone caller waits for nothing. If ``run`` raises, every caller of that batch
    gets the error, as from its own call."""

    def __init__(self, run: Callable[[list[In]], Awaitable[list[Out]]], max_batch: int = MAX_BATCH) -> None:
        self._run_batch = run
        self.max_batch = max_batch
        self._waiting: list[tuple[In, asyncio.Future[Out]]] = []
        self._worker: asyncio.Task[None] | None = None

    async def __call__(self, item: In) -> Out:
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run())
        return await future

    async def _run(self) -> None:
        while self._waiting:
            taken, self._waiting = self._waiting[: self.max_batch], self._waiting[self.max_batch :]
            live = [(item, future) for item, future in taken if not future.done()]  # skip cancelled
            if not live:
                continue
            try:
                results = await self._run_batch([item for item, _ in live])
            except BaseException as error:
                failure = error if isinstance(error, Exception) else RuntimeError("the batch was cancelled")
                for _, future in live:
                    if not future.done():
                        future.set_exception(failure)
                if not isinstance(error, Exception):
                    raise
                continue
            for (_, future), result in zip(live, results, strict=True):
                if not future.done():
                    future.set_result(result)
