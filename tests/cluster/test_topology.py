"""The launcher's processes get exactly the variables deploy/k8s/base gives each container (names, and
every literal value but the addresses, which it rewrites for this machine), and its rewriting."""

from __future__ import annotations

from pathlib import Path

import pytest

from sessionkit_server.cluster.topology import ARGS, GATEWAY, SERVICES, Secret, manifest_env, plan
from tests.deploy.manifests import K8S, containers, env_of, find, kubectl, render

COMPONENTS = (*SERVICES, GATEWAY)


def _deployment_env(component: str) -> tuple[dict[str, str | Secret], list[str]]:
    """The rendered base's variables for ``component``'s container (ConfigMap keys through envFrom, then
    its env: literals, and Secret references as Secret(key)) and its command."""
    objects = render(K8S / "base")
    (container,) = list(containers(find(objects, "Deployment", f"sessionkit-{component}")))
    env: dict[str, str | Secret] = {}
    for source in container.get("envFrom", []):
        config_map = find(objects, "ConfigMap", source["configMapRef"]["name"])
        env.update({k: str(v) for k, v in config_map.get("data", {}).items()})
    for name, entry in env_of(container).items():
        if "value" in entry:
            env[name] = str(entry["value"])
        else:
            env[name] = Secret(entry["valueFrom"]["secretKeyRef"]["key"])
    return env, list(container["command"])


@pytest.mark.skipif(kubectl() is None, reason="kubectl (kustomize) is not installed")
@pytest.mark.parametrize("component", COMPONENTS)
def test_launcher_env_is_the_manifests(component: str) -> None:
    manifest, command = _deployment_env(component)
    assert manifest_env(component) == manifest
    assert ["sessionkit", *ARGS[component]] == command


def test_addresses_are_rewritten_and_the_rest_kept(tmp_path: Path) -> None:
    topology = plan(
        run_dir=tmp_path,
        database_url="postgresql://postgres@127.0.0.1:5432/db",
        replicas=3,
        secrets={"llm-api-key": "sk-test"},
    )
    agent = topology.replicas["agent"][1]
    env = topology.environment(agent)
    assert set(env) == set(manifest_env("agent"))
    assert env["SESSIONKIT_HOST"] == "127.0.0.3" and env["SESSIONKIT_PORT"] == str(agent.port)
    assert env["SESSIONKIT_STATE_ADDRESS"] == "ipv4:127.0.0.2:50051,127.0.0.3:50051,127.0.0.4:50051"
    assert env["SESSIONKIT_MEMORY_ADDRESS"] == "ipv4:127.0.0.2:50052,127.0.0.3:50052,127.0.0.4:50052"
    assert env["SESSIONKIT_DATABASE_URL"] == "postgresql://postgres@127.0.0.1:5432/db"
    assert env["SESSIONKIT_LLM_API_KEY"] == "sk-test"
    assert env["SESSIONKIT_VECTOR_URL"] == "http://127.0.0.1:8000"
    assert env["SESSIONKIT_API_KEYS_FILE"] == str(tmp_path / "api-keys.json")
    assert env["SESSIONKIT_DRAIN_SECONDS"] == manifest_env("agent")["SESSIONKIT_DRAIN_SECONDS"]
    gateway = topology.environment(topology.gateway)
    assert gateway["SESSIONKIT_HTTP_HOST"] == "127.0.0.1" and gateway["SESSIONKIT_HTTP_PORT"] == "8080"
    assert gateway["SESSIONKIT_AGENT_ADDRESS"].startswith("ipv4:127.0.0.2:50054,")


def test_netns_layout_relays_loopback_endpoints(tmp_path: Path) -> None:
    topology = plan(
        run_dir=tmp_path,
        database_url="postgresql://postgres@127.0.0.1:5432/db",
        replicas=2,
        netns_subnet="10.77.0.0/24",
        llm_base_url="http://127.0.0.1:9999/v1",
    )
    assert topology.netns is not None and topology.netns.bridge_address == "10.77.0.1"
    hosts = [r.host for r in topology.all_replicas()]
    assert len(set(hosts)) == len(hosts) == 8
    assert all(h.startswith("10.77.0.") for h in hosts)
    env = topology.environment(topology.replicas["agent"][0])
    # Namespaces cannot reach this machine's loopback: both endpoints go through relays on the bridge.
    assert env["SESSIONKIT_DATABASE_URL"] == "postgresql://postgres@10.77.0.1:5432/db"
    assert env["SESSIONKIT_LLM_BASE_URL"] == "http://10.77.0.1:9999/v1"
    assert sorted(topology.relays.values()) == ["127.0.0.1:5432", "127.0.0.1:9999"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"replicas": 0}, "replicas: 0"),
        ({"base_port": 65534}, "base port"),
        ({"netns_subnet": "10.77.0.0/30"}, "addresses needed"),
        ({"netns_subnet": "10.77.0.300/24"}, "netns subnet"),
    ],
)
def test_bad_options_are_named(tmp_path: Path, options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan(run_dir=tmp_path, database_url="postgresql://h/db", **options)  # type: ignore[arg-type]
