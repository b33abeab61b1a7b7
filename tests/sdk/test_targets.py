"""Address settings as gRPC targets: single addresses and gRPC URIs unchanged, IP lists as gRPC's
multi-address targets, and a clear error for a list with a host name."""

from __future__ import annotations

import pytest

from sessionkit import Session
from sessionkit.config import ClientSettings, grpc_target
from sessionkit.errors import InvalidArgument


@pytest.mark.parametrize(
    "value",
    ["127.0.0.1:5001", "state:5001", "dns:///state.ns.svc:5001", "dns://127.0.0.1:5353/state:1", "unix:/x"],
)
def test_a_single_target_is_kept(value: str) -> None:
    assert grpc_target(value) == value


def test_an_ip_list_becomes_a_multi_address_target() -> None:
    assert grpc_target("127.0.0.2:5001, 127.0.0.3:5001") == "ipv4:127.0.0.2:5001,127.0.0.3:5001"
    assert grpc_target("[::1]:5001,[::1]:5002") == "ipv6:[::1]:5001,[::1]:5002"
    assert grpc_target("ipv4:10.0.0.1:1,10.0.0.2:1") == "ipv4:10.0.0.1:1,10.0.0.2:1"


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("state-0:5001,state-1:5001", "'state-0:5001'"),
        ("127.0.0.1:5001,127.0.0.2", "'127.0.0.2'"),
        ("127.0.0.1:5001,[::1]:5001", "mixes IPv4 and IPv6"),
    ],
)
def test_a_bad_list_names_the_bad_entry(value: str, named: str) -> None:
    with pytest.raises(ValueError) as caught:
        grpc_target(value)
    assert named in str(caught.value)


def test_every_address_setting_takes_a_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SESSIONKIT_MEMORY_ADDRESS", "127.0.0.2:1,127.0.0.3:1")
    targets = ClientSettings(address="127.0.0.1:9").targets()
    assert targets == {
        "state": "127.0.0.1:9",
        "memory": "ipv4:127.0.0.2:1,127.0.0.3:1",
        "knowledge": "127.0.0.1:9",
        "agent": "127.0.0.1:9",
    }


def test_a_host_name_list_in_the_environment_is_a_settings_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SESSIONKIT_STATE_ADDRESS", "a:1,b:1")
    with pytest.raises(ValueError, match=r"(?s)state_address.*IP addresses only.*dns:///"):
        ClientSettings()


def test_a_host_name_list_as_address_argument_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match=r"address: 'a:1' in the address list.*dns:///NAME:PORT"):
        Session("s", "u", address="a:1,b:1")
