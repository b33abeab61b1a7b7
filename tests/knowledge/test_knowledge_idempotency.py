"""Idempotency keys on knowledge writes: an ingestion, upload, delete or clear whose reply is lost is
applied once however often the SDK retries it (the retry answers the first result, it does not run
again); a repeated key answers the first response (also under concurrency, on SQLite and PostgreSQL)
without reading the repeat's upload; keys are per user and per RPC and expire after 24 hours."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from sessionkit import RetryPolicy, Session
from sessionkit.errors import from_rpc_error
from sessionkit.v1 import common_pb2, knowledge_pb2, knowledge_pb2_grpc
from sessionkit_server.common.idempotency import IDEMPOTENCY_TTL_US
from tests.conftest import _truncate
from tests.knowledge.support import _settings
from tests.sdk.test_sdk_retry import Sleeps
from tests.servers import ServerThread

WRITES = {"AddKnowledgeSource", "UploadKnowledgeFile", "DeleteKnowledgeSource", "ClearKnowledge"}
REF = common_pb2.SessionRef(app_name="default", user_id="alice", session_id="s1")

if TYPE_CHECKING:  # generic in the type stubs only
    Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    Interceptor = grpc.aio.ServerInterceptor


class LostReplies(Interceptor):
    """The first ``failures`` calls of the knowledge writes run to completion, then their reply is
    lost (UNAVAILABLE, as when a connection drops after the server answered)."""

    def __init__(self) -> None:
        self.failures = 0
        self.calls = 0

    def _lose(self) -> bool:
        self.calls += 1
        if self.failures > 0:
            self.failures -= 1
            return True
        return False

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None or details.method.rsplit("/", 1)[-1] not in WRITES:
            return handler
        options = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            unary = handler.unary_unary

            async def lossy_unary(request: Any, context: Any) -> Any:
                lose = self._lose()
                response = await unary(request, context)
                if lose:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "injected: reply lost")
                return response

            return grpc.unary_unary_rpc_method_handler(lossy_unary, **options)
        if handler.unary_stream is not None:
            server_stream = handler.unary_stream

            async def lossy_server_stream(request: Any, context: Any) -> AsyncIterator[Any]:
                lose = self._lose()
                replies = [reply async for reply in server_stream(request, context)]
                if lose:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "injected: reply lost")
                for reply in replies:
                    yield reply

            return grpc.unary_stream_rpc_method_handler(lossy_server_stream, **options)
        bidi = handler.stream_stream

        async def lossy_bidi(requests: Any, context: Any) -> AsyncIterator[Any]:
            lose = self._lose()
            replies = [reply async for reply in bidi(requests, context)]
            if lose:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "injected: reply lost")
            for reply in replies:
                yield reply

        return grpc.stream_stream_rpc_method_handler(lossy_bidi, **options)


@pytest.fixture
def lossy_server(tmp_path: Path) -> Iterator[tuple[ServerThread, LostReplies]]:
    lossy = LostReplies()
    thread = ServerThread(_settings(tmp_path), interceptors=[lossy]).start()
    yield thread, lossy
    thread.stop()


@pytest.fixture(params=["sqlite"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerThread]:
    url = request.getfixturevalue("pg_database") if request.param == "postgres" else ""
    thread = ServerThread(_settings(tmp_path, url)).start()
    yield thread
    thread.stop()
    if url:
        asyncio.run(_truncate(url))


def test_writes_whose_replies_are_lost_apply_exactly_once(
    lossy_server: tuple[ServerThread, LostReplies], tmp_path: Path
) -> None:
    server, lossy = lossy_server
    sleeps = Sleeps()
    s = Session("s1", "alice", address=server.address, retry=RetryPolicy(sleep=sleeps))

    lossy.failures = 2  # ingested on the first call, the reply lost twice
    text = s.add_knowledge("Tide tables list high water at 06:12", name="tides")
    assert lossy.calls == 3 and len(sleeps.delays) == 2
    # The first call's answer: a re-run would have answered "unchanged" with no chunks added.
    assert text["outcome"] == "created" and text["chunks_added"] == 1

    path = tmp_path / "manual.md"
    path.write_text("# Manual\n\nBleed the radiator valves every autumn.\n" * 200)
    lossy.failures = 1
    uploaded = s.add_knowledge(str(path))  # sent twice, from the start of the file each time
    assert lossy.calls == 5
    assert uploaded["outcome"] == "created" and uploaded["chunks_added"] == uploaded["source"]["chunk_count"]
    assert sorted(src["name"] for src in s.list_knowledge()) == ["manual.md", "tides"]

    lossy.failures = 1
    assert s.delete_knowledge("tides") is True  # a retry without the key would find nothing: False
    lossy.failures = 1
    assert s.clear_knowledge() == 1  # a retry without the key would count 0
    assert s.list_knowledge() == []


def _stub(channel: Any) -> Any:
    return knowledge_pb2_grpc.KnowledgeServiceStub(channel)  # type: ignore[no-untyped-call]


def _add(stub: Any, text: str, key: str, ref: common_pb2.SessionRef = REF) -> Any:
    request = knowledge_pb2.AddKnowledgeSourceRequest(
        session=ref, text=text, name="notes", idempotency_key=key, report_progress=True
    )
    return list(stub.AddKnowledgeSource(request))


def _upload(stub: Any, body: bytes, key: str, declared: int | None = None) -> list[Any]:
    header = knowledge_pb2.KnowledgeFileHeader(
        session=REF,
        file_name="report.txt",
        size_bytes=len(body) if declared is None else declared,
        idempotency_key=key,
    )

    def parts() -> Iterator[knowledge_pb2.UploadKnowledgeFileRequest]:
        yield knowledge_pb2.UploadKnowledgeFileRequest(header=header)
        for start in range(0, len(body), 256 << 10):
            yield knowledge_pb2.UploadKnowledgeFileRequest(chunk=body[start : start + (256 << 10)])

    return list(stub.UploadKnowledgeFile(parts()))


def test_a_repeated_key_answers_the_first_result_and_ingests_nothing(server: ServerThread) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = _stub(channel)
        first = _add(stub, "The ferry leaves at nine", "add-1")
        assert first[-1].result.outcome == knowledge_pb2.KnowledgeIngestionResult.CREATED
        assert len(first) > 1  # progress, then the result
        # The repeat (even with other content) is answered with the first result only, no progress.
        repeat = _add(stub, "The ferry leaves at ten", "add-1")
        assert len(repeat) == 1 and repeat[0].result == first[-1].result
        changed = _add(stub, "The ferry leaves at eleven", "add-2")
        assert changed[-1].result.outcome == knowledge_pb2.KnowledgeIngestionResult.UPDATED
        hits = stub.SearchKnowledge(knowledge_pb2.SearchKnowledgeRequest(session=REF, query="ferry leaves"))
        assert [h.text for h in hits.hits] == ["The ferry leaves at eleven"]

        body = b"Quarterly sales rose in the northern region.\n" * 2000
        uploaded = _upload(stub, body, "up-1")
        assert uploaded[-1].result.outcome == knowledge_pb2.KnowledgeIngestionResult.CREATED
        # A retried upload is answered from its header: the repeat's bytes (here a different,
        # wrongly declared body that would be refused) are never read.
        again = _upload(stub, b"garbage", "up-1", declared=12345)
        assert [m.result for m in again] == [uploaded[-1].result]

        # Unchanged content is a result too: replayed as "unchanged".
        same = _add(stub, "The ferry leaves at eleven", "add-3")
        assert same[-1].result.outcome == knowledge_pb2.KnowledgeIngestionResult.UNCHANGED
        assert _add(stub, "ignored", "add-3")[0].result == same[-1].result

        delete = knowledge_pb2.DeleteKnowledgeSourceRequest(
            session=REF, name="notes", idempotency_key="del-1"
        )
        deleted = stub.DeleteKnowledgeSource(delete)
        assert deleted.deleted and deleted.deleted_chunk_count == 1
        assert stub.DeleteKnowledgeSource(delete) == deleted  # not NOT_FOUND
        missing = knowledge_pb2.DeleteKnowledgeSourceRequest(
            session=REF, name="nothing", allow_missing=True, idempotency_key="del-2"
        )
        assert stub.DeleteKnowledgeSource(missing).deleted is False
        _add(stub, "Recreated notes named like the missing one", "add-4")
        clear = knowledge_pb2.ClearKnowledgeRequest(session=REF, idempotency_key="clear-1")
        cleared = stub.ClearKnowledge(clear)
        assert cleared.deleted_source_count == 2  # notes and report.txt
        _add(stub, "Added after the clear", "add-5")
        assert stub.ClearKnowledge(clear) == cleared  # replayed: the new source stays
        listed = stub.ListKnowledgeSources(knowledge_pb2.ListKnowledgeSourcesRequest(session=REF))
        assert [src.name for src in listed.sources] == ["notes"]


def test_keys_belong_to_one_user_and_one_rpc(server: ServerThread) -> None:
    bob = common_pb2.SessionRef(app_name="default", user_id="bob", session_id="s1")
    with grpc.insecure_channel(server.address) as channel:
        stub = _stub(channel)
        mine = _add(stub, "Alice's notes", "k")[-1].result
        theirs = _add(stub, "Bob's notes", "k", bob)[-1].result
        assert theirs.source.id != mine.source.id
        with pytest.raises(grpc.RpcError) as info:
            stub.ClearKnowledge(knowledge_pb2.ClearKnowledgeRequest(session=REF, idempotency_key="k"))
        error = from_rpc_error(info.value)
        assert error.reason == "IDEMPOTENCY_KEY_REUSED" and "AddKnowledgeSource" in str(error)
        with pytest.raises(grpc.RpcError) as too_long:
            _add(stub, "x", "k" * 129)
        assert too_long.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        listed = stub.ListKnowledgeSources(knowledge_pb2.ListKnowledgeSourcesRequest(session=REF))
        assert [src.name for src in listed.sources] == ["notes"]  # the refused clear removed nothing


def test_a_key_older_than_a_day_applies_again(server: ServerThread, tmp_path: Path) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = _stub(channel)
        clear = knowledge_pb2.ClearKnowledgeRequest(session=REF, idempotency_key="daily-clear")
        _add(stub, "Old notes", "a1")
        assert stub.ClearKnowledge(clear).deleted_source_count == 1
        _add(stub, "New notes", "a2")
        assert stub.ClearKnowledge(clear).deleted_source_count == 1  # replayed
        with sqlite3.connect(tmp_path / "data" / "sessionkit.db", timeout=30) as db:
            db.execute(
                "UPDATE sk_knowledge_idempotency SET create_us = create_us - ?", (IDEMPOTENCY_TTL_US + 1,)
            )
        assert stub.ClearKnowledge(clear).deleted_source_count == 1  # expired: applied again
        listed = stub.ListKnowledgeSources(knowledge_pb2.ListKnowledgeSourcesRequest(session=REF))
        assert list(listed.sources) == []


@pytest.mark.parametrize("server", ["sqlite", "postgres"], indirect=True)
async def test_concurrent_repeats_of_one_key_apply_once(server: ServerThread) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = _stub(channel)

        async def add(n: int) -> Any:
            request = knowledge_pb2.AddKnowledgeSourceRequest(
                session=REF, text=f"Version {n} of the rota", name="rota", idempotency_key="same-add"
            )
            return [m async for m in stub.AddKnowledgeSource(request)][-1].result

        results = await asyncio.gather(*(add(n) for n in range(8)))
        assert all(r == results[0] for r in results)
        assert results[0].outcome == knowledge_pb2.KnowledgeIngestionResult.CREATED
        source = await stub.GetKnowledgeSource(
            knowledge_pb2.GetKnowledgeSourceRequest(session=REF, name="rota")
        )
        # Only the winner's content was stored: the others were answered with its result.
        assert source.source.content_hash == results[0].source.content_hash
        assert source.source.update_time == results[0].source.update_time
