"""The HTTP gateway in front of a real gRPC server (real uvicorn, real sockets): memories and knowledge on
SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from sessionkit_server.common.config import ServerSettings
from tests.gateway.support import gateway_for
from tests.gateway.test_gateway_support import GatewayThread, assert_error
from tests.servers import ServerThread

# -- memories and knowledge ----------------------------------------------------------------------------


@pytest.fixture
def retrieval_server(database_url: str, tmp_path: Path) -> Iterator[ServerThread]:
    """State, memory and knowledge on each backend."""
    settings = ServerSettings(
        port=0,
        data_dir=tmp_path / "data",
        database_url=database_url,
        services=["state", "memory", "knowledge"],
        log_format="text",
    )
    server = ServerThread(settings).start()
    yield server
    server.stop()


@pytest.fixture
def retrieval_gateway(retrieval_server: ServerThread) -> Iterator[GatewayThread]:
    """The server behind a gateway."""
    gateway = gateway_for(retrieval_server)
    yield gateway
    gateway.stop()


def test_memories_and_knowledge_round_trip(retrieval_gateway: GatewayThread, tmp_path: Path) -> None:
    with httpx.Client(base_url=retrieval_gateway.url, timeout=120) as http:
        http.post("/v1/sessions?user_id=ann", json={"session_id": "s"})
        base = "/v1/sessions/s"
        tea = http.post(
            f"{base}/memories?user_id=ann", json={"text": "Ann drinks green tea", "metadata": {"t": 1}}
        )
        assert tea.status_code == 201, tea.text
        tea_id = tea.json()["id"]
        short = http.post(
            f"{base}/memories?user_id=ann", json={"text": "Asked about trains", "memory_type": "short"}
        )
        assert short.json()["memory_type"] == "short"
        hits = http.post(
            f"{base}/memories/search?user_id=ann", json={"query": "what does Ann drink?"}
        ).json()["hits"]
        assert hits[0]["id"] == tea_id and hits[0]["score"] > 0 and set(hits[0]["scores"]) >= {"semantic"}
        assert {m["text"] for m in http.get(f"{base}/memories?user_id=ann").json()["memories"]} == {
            "Ann drinks green tea",
            "Asked about trains",
        }
        assert [
            m["text"] for m in http.get(f"{base}/memories?user_id=ann&memory_type=long").json()["memories"]
        ] == ["Ann drinks green tea"]
        updated = http.patch(
            f"{base}/memories/{tea_id}?user_id=ann", json={"text": "Ann drinks black tea"}
        ).json()
        assert updated["text"] == "Ann drinks black tea" and updated["revision"] == 2
        assert http.get(f"{base}/memories/{tea_id}?user_id=ann").json()["text"] == "Ann drinks black tea"
        assert_error(http.get(f"{base}/memories/{tea_id}?user_id=bob"), 404, "MEMORY_NOT_FOUND")
        assert http.delete(f"{base}/memories/{tea_id}?user_id=ann").json() == {"deleted": True}
        assert http.delete(f"{base}/memories?user_id=ann").json() == {"deleted_count": 1}
        assert http.get(f"{base}/memories?user_id=ann").json()["memories"] == []

        text = http.post(
            f"{base}/knowledge?user_id=ann", json={"text": "The Eiffel Tower is in Paris.", "name": "paris"}
        )
        assert text.status_code == 201 and text.json()["outcome"] == "created", text.text
        upload = http.post(
            f"{base}/knowledge/files?user_id=ann",
            files={
                "file": ("guide.md", b"# Guide\n\nThe gateway answers HTTP on port 8080.\n", "text/markdown")
            },
            data={"metadata": '{"team": "docs"}'},
        )
        assert upload.status_code == 201, upload.text
        assert upload.json()["source"]["name"] == "guide.md" and upload.json()["source"]["metadata"] == {
            "team": "docs"
        }
        hits = http.post(f"{base}/knowledge/search?user_id=ann", json={"query": "which port?"}).json()
        hit = hits["hits"][0]
        assert hit["source"]["name"] == "guide.md" and "8080" in hit["text"]
        # Text that names a file on the gateway's host is text: the gateway never reads its own disk.
        secret = tmp_path / "secret.txt"
        secret.write_text("TOP SECRET")
        as_text = http.post(
            f"{base}/knowledge?user_id=ann", json={"text": str(secret), "name": "path"}
        ).json()
        assert as_text["kind"] == "text" and as_text["source"]["size_bytes"] == len(str(secret))
        names = sorted(s["name"] for s in http.get(f"{base}/knowledge?user_id=ann").json()["sources"])
        assert names == ["guide.md", "paris", "path"]
        assert http.delete(f"{base}/knowledge/paris?user_id=ann").json() == {
            "deleted": True,
            "deleted_chunk_count": 1,
        }
        assert_error(http.delete(f"{base}/knowledge/paris?user_id=ann"), 404, "KNOWLEDGE_SOURCE_NOT_FOUND")
        assert http.delete(f"{base}/knowledge?user_id=ann").json() == {"deleted_source_count": 2}
        # The SSRF guard of the knowledge service answers through the one mapping.
        refused = http.post(f"{base}/knowledge?user_id=ann", json={"url": "http://127.0.0.1:1/x"})
        assert_error(refused, 403, "URL_NOT_ALLOWED")
        assert_error(
            http.post(f"{base}/knowledge?user_id=ann", json={"text": "a", "url": "http://x.org"}), 400
        )


def test_memory_context_history_filter_and_idempotent_writes(retrieval_gateway: GatewayThread) -> None:
    with httpx.Client(base_url=retrieval_gateway.url, timeout=120) as http:
        base = "/v1/sessions/s"
        http.post("/v1/sessions?user_id=ann", json={"session_id": "s"})
        once = {"Idempotency-Key": "add-tea-1"}
        tea = http.post(f"{base}/memories?user_id=ann", json={"text": "Ann drinks green tea"}, headers=once)
        again = http.post(f"{base}/memories?user_id=ann", json={"text": "Ann drinks green tea"}, headers=once)
        assert tea.status_code == again.status_code == 201 and again.json() == tea.json()
        tea_id = tea.json()["id"]
        http.post(
            f"{base}/memories?user_id=ann",
            json={"text": "Ann lives in Porto", "metadata": {"topic": "places"}},
        )
        edit = {"Idempotency-Key": "edit-tea-1"}
        for _ in range(2):
            updated = http.patch(
                f"{base}/memories/{tea_id}?user_id=ann", json={"text": "Ann drinks oolong tea"}, headers=edit
            )
            assert updated.json()["revision"] == 2  # the repeat is answered, not applied again
        history = http.get(f"{base}/memories/{tea_id}/history?user_id=ann").json()["changes"]
        assert [c["operation"] for c in history] == ["ADD", "UPDATE"]
        assert (
            history[1]["old_text"] == "Ann drinks green tea"
            and history[1]["new_text"] == "Ann drinks oolong tea"
        )
        assert http.get(f"{base}/memories/m-missing/history?user_id=ann").json() == {"changes": []}
        filtered = http.get(
            f"{base}/memories", params={"user_id": "ann", "metadata_filter": '{"topic": "places"}'}
        )
        assert [m["text"] for m in filtered.json()["memories"]] == ["Ann lives in Porto"]
        assert_error(
            http.get(f"{base}/memories", params={"user_id": "ann", "metadata_filter": "[1]"}),
            400,
            "INVALID_REQUEST",
        )
        context = http.post(
            f"{base}/memories/context?user_id=ann", json={"query": "what does Ann drink?", "max_items": 1}
        )
        assert context.status_code == 200, context.text
        assert "oolong" in context.json()["context"] and "Porto" not in context.json()["context"]
        assert [h["id"] for h in context.json()["hits"]] == [tea_id]
        assert_error(http.post(f"{base}/memories/context?user_id=ann", json={"query": ""}), 400)
        # Knowledge writes with a key: a repeated delete answers as the first time.
        http.post(f"{base}/knowledge?user_id=ann", json={"text": "Porto is in Portugal.", "name": "porto"})
        drop = {"Idempotency-Key": "drop-porto"}
        first = http.delete(f"{base}/knowledge/porto?user_id=ann", headers=drop)
        assert first.json() == http.delete(f"{base}/knowledge/porto?user_id=ann", headers=drop).json()
        assert first.json()["deleted"] is True


def test_memory_and_knowledge_writes_name_their_owner_and_need_no_session(
    retrieval_server: ServerThread, retrieval_gateway: GatewayThread
) -> None:
    """The chosen rule (docs/ERRORS.md "Sessions, memory and knowledge"): memory and knowledge writes
    on a session id the state service does not know are accepted on both transports, and create no
    session. The ids name the owner; LONG memories and USER/COLLECTION sources belong to no session,
    and a memory-only or knowledge-only deployment has no state service to ask."""
    from sessionkit.v1 import common_pb2, knowledge_pb2, knowledge_pb2_grpc, memory_pb2, memory_pb2_grpc

    with httpx.Client(base_url=retrieval_gateway.url, timeout=120) as http:
        base = "/v1/sessions/never-created"
        short = http.post(
            f"{base}/memories?user_id=ann", json={"text": "Asked about trains", "memory_type": "short"}
        )
        assert short.status_code == 201, short.text
        source = http.post(f"{base}/knowledge?user_id=ann", json={"text": "Trains run hourly.", "name": "t"})
        assert source.status_code == 201, source.text

        # Over gRPC, the same: a SHORT memory and a SESSION source of a session that does not exist.
        channel = grpc.insecure_channel(retrieval_server.address)
        ref = common_pb2.SessionRef(user_id="ann", session_id="never-created-2")
        memory_pb2_grpc.MemoryServiceStub(channel).AddMemory(  # type: ignore[no-untyped-call]
            memory_pb2.AddMemoryRequest(
                session=ref, text="Asked about buses", memory_type=memory_pb2.MEMORY_TYPE_SHORT
            ),
            timeout=120,
        )
        stream = knowledge_pb2_grpc.KnowledgeServiceStub(channel).AddKnowledgeSource(  # type: ignore[no-untyped-call]
            knowledge_pb2.AddKnowledgeSourceRequest(session=ref, text="Buses run every ten minutes."),
            timeout=120,
        )
        assert [r.WhichOneof("event") for r in stream] == ["result"]
        channel.close()

        # Neither write created a session, and what each wrote is readable through the other transport.
        for sid in ("never-created", "never-created-2"):
            assert_error(http.get(f"/v1/sessions/{sid}?user_id=ann"), 404, "SESSION_NOT_FOUND")
        listed = http.get("/v1/sessions/never-created-2/memories?user_id=ann&memory_type=short").json()
        assert [m["text"] for m in listed["memories"]] == ["Asked about buses"]
        assert [s["name"] for s in http.get(f"{base}/knowledge?user_id=ann").json()["sources"]] == ["t"]
        # Creating the session later finds its short memories there.
        assert http.post("/v1/sessions?user_id=ann", json={"session_id": "never-created"}).status_code == 201
        listed = http.get(f"{base}/memories?user_id=ann&memory_type=short").json()
        assert [m["text"] for m in listed["memories"]] == ["Asked about trains"]
