"""The production manifests' commands and environment, run as real processes on PostgreSQL: the
migration Job's container migrates an empty database, then the state Deployment's container serves, and
each of its probes (start-up, readiness, liveness) gets SERVING on the port and health name it asks for.
Only what a cluster supplies is replaced: the Secret's values (a fresh database, a key file) and the
port (a free one instead of 50051, which other tests on this machine may hold)."""

from __future__ import annotations

import json
import re
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import free_port, fresh_pg_database
from tests.deploy import manifests as m
from tests.servers import ChildProcess, child_env

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

API_KEYS_PATH = "/etc/sessionkit/secrets/api-keys.json"


@pytest.fixture
def empty_pg(pg_admin_dsn: str) -> Iterator[str]:
    with fresh_pg_database(pg_admin_dsn, "sk_k8s_manifest", "the manifests' process test") as url:
        yield url


def manifest_env(
    objects: list[m.Obj], container: m.Obj, secrets: dict[tuple[str, str], str]
) -> dict[str, str]:
    """The environment Kubernetes would give ``container``: its ConfigMaps (envFrom), then its env."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(m.find(objects, "ConfigMap", source["configMapRef"]["name"]).get("data", {}))
    for name in m.env_of(container):
        value = m.resolve_env(objects, container, name, secrets)
        if value is not None:
            env[name] = value
    return env


def command(container: m.Obj) -> list[str]:
    """The container's command, with the image's `sessionkit` being this checkout's CLI."""
    args = [*container["command"], *container.get("args", [])]
    assert args[0] == "sessionkit", args
    return [sys.executable, "-m", "sessionkit.cli", *args[1:]]


def health(target: str, service: str) -> str:
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=2
            )
        except grpc.RpcError as error:
            return error.code().name
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def test_migration_job_then_state_deployment_serve_their_probes(empty_pg: str, tmp_path: Path) -> None:
    objects = m.render(m.K8S / "overlays" / "production")
    keys = tmp_path / "api-keys.json"
    keys.write_text(json.dumps({"k8s-test-key-0123456789": "*"}))
    secrets = {("sessionkit-secrets", "database-url"): empty_pg.replace("+asyncpg", "")}

    job = m.find(objects, "Job", "sessionkit-migrate")
    job_container = m.pod_spec(job)["containers"][0]
    with ChildProcess(
        command(job_container),
        tmp_path / "migrate.log",
        env=child_env(**manifest_env(objects, job_container, secrets)),
    ) as migrate:
        assert migrate.wait(timeout=240) == 0, migrate.log()
    assert "state: upgraded empty ->" in migrate.log()

    state = m.pod_spec(m.find(objects, "Deployment", "sessionkit-state"))["containers"][0]
    env = manifest_env(objects, state, secrets)
    assert env["SESSIONKIT_HOST"] == "0.0.0.0" and env["SESSIONKIT_API_KEYS_FILE"] == API_KEYS_PATH
    port = free_port()
    env.update(SESSIONKIT_PORT=str(port), SESSIONKIT_API_KEYS_FILE=str(keys))
    probes = {kind: state[kind]["grpc"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert {p["port"] for p in probes.values()} == {50051}, "the probes' port is the one SESSIONKIT_PORT sets"
    target = f"127.0.0.1:{port}"
    with ChildProcess(command(state), tmp_path / "state.log", env=child_env(**env)) as server:
        deadline = time.monotonic() + 60
        statuses: dict[str, str] = {}
        while time.monotonic() < deadline and server.returncode is None:
            statuses = {kind: health(target, probe.get("service", "")) for kind, probe in probes.items()}
            if set(statuses.values()) == {"SERVING"}:
                break
            time.sleep(0.2)
        assert statuses == dict.fromkeys(probes, "SERVING"), f"{statuses}\n{server.log()[-3000:]}"
        # Bound beyond loopback, the server requires keys: the Secret's file is what it loaded.
        assert '"auth": true' in server.log() or "authentication on" in server.log()


def _extra_requirements(extra: str, extras: dict[str, list[str]]) -> set[str]:
    """The distribution names an extra of sessionkit-server installs, its own extras followed."""
    names: set[str] = set()
    for requirement in extras[extra]:
        name = re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0].lower()
        if name == "sessionkit-server":
            for inner in requirement.split("[", 1)[1].split("]", 1)[0].split(","):
                names |= _extra_requirements(inner.strip(), extras)
        else:
            names.add(name)
    return names


def test_the_migration_job_image_has_what_every_service_imports() -> None:
    """The Job migrates all four services from one image: its profile's extra must install every
    other service's requirements (their stores are imported to find their migrations)."""
    objects = m.render(m.K8S / "overlays" / "production")
    container = m.pod_spec(m.find(objects, "Job", "sessionkit-migrate"))["containers"][0]
    services = json.loads(m.resolve_env(objects, container, "SESSIONKIT_SERVICES", {}) or "[]")
    assert sorted(services) == ["agent", "knowledge", "memory", "state"]
    profile = container["image"].rsplit("/", 1)[-1].split(":")[0].removeprefix("sessionkit-")
    extras = tomllib.loads((m.ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    installed = _extra_requirements(profile, extras)
    for service in services:
        missing = _extra_requirements(service, extras) - installed
        assert not missing, f"the {profile} image lacks the {service} extra's {sorted(missing)}"
