"""``--netns``: each service in its own network namespace, joined to this machine by a veth pair on one
bridge, so the replicas and the gateway reach each other over real interfaces and addresses (a subnet
such as 10.77.0.0/24) instead of loopback. Needs root and iproute2's ``ip``; ``unavailable()`` says why
not, so the command can skip with that reason."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sessionkit_server.cluster.topology import NetnsPlan, Topology


class NetnsUnavailable(RuntimeError):
    """Namespaces cannot be made here (the message says why)."""


def unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None when they can."""
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2) to make network namespaces"
    if os.geteuid() != 0:
        return "making network namespaces needs root (`ip netns add`)"
    probe = "sk-probe"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def exec_prefix(namespace: str | None) -> list[str]:
    return ["ip", "netns", "exec", namespace] if namespace else []


def setup(topology: Topology) -> None:
    """The bridge (holding the subnet's first address), and per service a namespace whose eth0 holds
    its replicas' addresses. Leftovers of an earlier run that was not taken down are removed first."""
    plan = topology.netns
    assert plan is not None
    reason = unavailable()
    if reason is not None:
        raise NetnsUnavailable(reason)
    teardown(plan)
    prefix = ipaddress.IPv4Network(plan.subnet).prefixlen
    _ip("link", "add", plan.bridge, "type", "bridge")
    _ip("addr", "add", f"{plan.bridge_address}/{prefix}", "dev", plan.bridge)
    _ip("link", "set", plan.bridge, "up")
    for service, namespace in plan.namespaces.items():
        host_side, inside = f"{namespace}-h", f"{namespace}-n"
        _ip("netns", "add", namespace)
        _ip("link", "add", host_side, "type", "veth", "peer", "name", inside, "netns", namespace)
        _ip("link", "set", host_side, "master", plan.bridge)
        _ip("link", "set", host_side, "up")
        _ip("-n", namespace, "link", "set", inside, "name", "eth0")
        for replica in topology.replicas[service]:
            _ip("-n", namespace, "addr", "add", f"{replica.host}/{prefix}", "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")
        _ip("-n", namespace, "link", "set", "lo", "up")


def teardown(plan: NetnsPlan) -> None:
    """Remove the namespaces (their veth pairs go with them) and the bridge; what is not there is fine."""
    for namespace in plan.namespaces.values():
        _ip("netns", "del", namespace, check=False)
    _ip("link", "del", plan.bridge, check=False)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise NetnsUnavailable(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")
    return done
