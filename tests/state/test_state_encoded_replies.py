"""GetState's encoded replies (grpc_servicer.EncodedStates): a reply reused from an equal stored state
carries the version read this time, the keys asked for, and nothing of another state; the kept
encodings stay within their byte budget."""

from __future__ import annotations

from sessionkit.jsonvalues import dumps, from_struct
from sessionkit.v1 import state_pb2
from sessionkit_server.state.grpc_servicer import EncodedStates
from sessionkit_server.state.service import StateSnapshot
from sessionkit_server.state.store import JsonObject


def snapshot(version: int, own: JsonObject, keys: tuple[str, ...] = (), user: str = "{}") -> StateSnapshot:
    return StateSnapshot(version, (dumps(own), user, "{}", keys))


def decode(reply: bytes) -> tuple[JsonObject, int]:
    message = state_pb2.GetStateResponse.FromString(reply)
    return from_struct(message.state), message.version


def test_an_equal_state_reuses_its_encoding_with_the_version_read_now() -> None:
    replies = EncodedStates()
    assert decode(replies.encode(snapshot(3, {"a": 1, "b": [1, 2]}))) == ({"a": 1, "b": [1, 2]}, 3)
    # The same texts at another version (another session, or the state written back): same state.
    assert decode(replies.encode(snapshot(9, {"a": 1, "b": [1, 2]}))) == ({"a": 1, "b": [1, 2]}, 9)
    assert decode(replies.encode(snapshot(0, {"a": 1, "b": [1, 2]}))) == ({"a": 1, "b": [1, 2]}, 0)
    # Other keys asked for, another scope's text, another value: each its own answer.
    assert decode(replies.encode(snapshot(9, {"a": 1, "b": [1, 2]}, ("b",)))) == ({"b": [1, 2]}, 9)
    assert decode(replies.encode(snapshot(9, {"a": 1}, (), '{"lang": "en"}'))) == (
        {"a": 1, "user:lang": "en"},
        9,
    )
    assert decode(replies.encode(snapshot(10, {"a": 2, "b": [1, 2]}))) == ({"a": 2, "b": [1, 2]}, 10)


def test_the_kept_encodings_stay_within_their_byte_budget() -> None:
    replies = EncodedStates(max_bytes=4000, max_entry_bytes=1000)
    for i in range(100):
        assert decode(replies.encode(snapshot(i, {"n": i, "pad": "x" * 100}))) == (
            {"n": i, "pad": "x" * 100},
            i,
        )
    assert 0 < replies._bytes <= 4000
    assert len(replies._entries) < 100
    big: JsonObject = {"blob": "y" * 5000}  # over the entry limit: answered, not kept
    assert decode(replies.encode(snapshot(1, big))) == (big, 1)
    assert all("y" * 5000 not in content[0] for content in replies._entries)
