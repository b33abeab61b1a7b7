"""deploy/k8s as a cluster would get it: every overlay renders with ``kubectl kustomize``, validates
strictly against the schemas of a current and an older Kubernetes, and passes the deployment policy
(tests/deploy/manifests.py). Each policy check is also shown to reject a manifest broken on purpose, so
a check that passes everything cannot hide here. No cluster is needed (there is none on CI)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.deploy import manifests as m

#: A current Kubernetes and the oldest one the manifests support (native grpc probes are GA since 1.27;
#: the preStop hook is an exec of sleep, not the sleep action 1.29 has only behind a feature gate).
KUBERNETES_VERSIONS = ("1.32", "1.29")

#: Who calls whom: each service admits exactly these callers (app.kubernetes.io/name).
CALLERS = {
    "sessionkit-gateway": {m.ANYONE},
    "sessionkit-agent": {"sessionkit-gateway"},
    "sessionkit-state": {"sessionkit-gateway", "sessionkit-agent"},
    "sessionkit-memory": {"sessionkit-gateway", "sessionkit-agent"},
    "sessionkit-knowledge": {"sessionkit-gateway", "sessionkit-agent"},
    "sessionkit-postgres": {
        "sessionkit-state",
        "sessionkit-memory",
        "sessionkit-knowledge",
        "sessionkit-agent",
        "sessionkit-migrate",
    },
    "sessionkit-chroma": {"sessionkit-memory", "sessionkit-knowledge"},
}
SERVICES = ("state", "memory", "knowledge", "agent", "gateway")


def production_secrets() -> dict[tuple[str, str], str]:
    """The production overlay creates no Secret (no credential in git): its documented example stands
    in for the one the operator creates."""
    example = m.K8S / "overlays" / "production" / "secrets.example.env"
    pairs = (
        line.split("=", 1) for line in example.read_text().splitlines() if "=" in line and line[0] != "#"
    )
    return {("sessionkit-secrets", key.strip()): value.strip() for key, value in pairs}


def overlay(name: str) -> list[m.Obj]:
    return m.render(m.K8S / "overlays" / name)


def container(objects: list[m.Obj], service: str) -> m.Obj:
    """The service's container itself (breaking it breaks ``objects``)."""
    deployment = m.find(objects, "Deployment", f"sessionkit-{service}")
    return deployment["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


# -- the real manifests -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["base", *(f"overlays/{o}" for o in m.OVERLAYS)])
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_renders_and_validates_strictly(name: str, version: str) -> None:
    objects = m.render(m.K8S / name)
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "Job"} <= kinds
    assert m.schema_problems(objects, version) == []


@pytest.mark.parametrize("name", m.OVERLAYS)
def test_policy(name: str) -> None:
    objects = overlay(name)
    assert {d["metadata"]["name"] for d in m.of_kind(objects, "Deployment")} == {
        f"sessionkit-{s}" for s in SERVICES
    }
    assert m.probe_problems(objects) == []
    assert m.pdb_and_service_problems(objects) == []
    assert m.image_problems(objects) == []
    assert m.security_problems(objects) == []
    assert m.env_problems(objects, m.known_env_names()) == []
    assert m.storage_problems(objects, production_secrets()) == []


def test_dev_is_one_replica_each_on_in_cluster_postgres_and_chroma() -> None:
    objects = overlay("dev")
    assert {d["spec"]["replicas"] for d in m.of_kind(objects, "Deployment")} == {1}
    assert {s["metadata"]["name"] for s in m.of_kind(objects, "StatefulSet")} == {
        "sessionkit-postgres",
        "sessionkit-chroma",
    }
    state = container(objects, "state")
    url = m.resolve_env(objects, state, "SESSIONKIT_DATABASE_URL", {})
    assert url is not None and url.startswith("postgresql://") and "@sessionkit-postgres:5432/" in url
    assert m.resolve_env(objects, container(objects, "memory"), "SESSIONKIT_VECTOR_URL", {}) == (
        "http://sessionkit-chroma:8000"
    )
    # The postgres component's password is the one in the database URL.
    postgres = m.find(objects, "StatefulSet", "sessionkit-postgres")
    password = m.resolve_env(objects, m.pod_spec(postgres)["containers"][0], "POSTGRES_PASSWORD", {})
    assert f":{password}@" in url


def test_production_is_three_replicas_on_external_stores_behind_policies() -> None:
    objects = overlay("production")
    assert {d["spec"]["replicas"] for d in m.of_kind(objects, "Deployment")} == {3}
    assert {h["spec"]["minReplicas"] for h in m.of_kind(objects, "HorizontalPodAutoscaler")} == {3}
    assert m.of_kind(objects, "StatefulSet") == []
    # No credential is in git: the Secret is the operator's, referenced by name.
    assert m.of_kind(objects, "Secret") == []
    assert m.network_policy_problems(objects, CALLERS) == []
    assert [
        i["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"]
        for i in m.of_kind(objects, "Ingress")
    ] == ["sessionkit-gateway"]


def test_dev_network_policies_cover_the_in_cluster_stores(tmp_path: Path) -> None:
    """The dev overlay plus the network-policies component, as a user with a NetworkPolicy-enforcing
    CNI would combine them: the in-cluster PostgreSQL and Chroma admit only their clients."""
    root = os.path.relpath(m.K8S, tmp_path)  # kustomize refuses absolute paths
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        "namespace: sessionkit-dev\n"
        f"resources: [{root}/overlays/dev]\n"
        f"components: [{root}/components/network-policies]\n"
    )
    objects = m.render(tmp_path)
    assert {"sessionkit-postgres", "sessionkit-chroma"} <= {
        p["metadata"]["name"] for p in m.of_kind(objects, "NetworkPolicy")
    }
    assert m.network_policy_problems(objects, CALLERS) == []


def test_grace_period_covers_the_drain() -> None:
    """SIGTERM comes after the preStop sleep; the drain (SESSIONKIT_DRAIN_SECONDS) must then fit in
    the grace period, or the kubelet kills an upload or an agent turn mid-way."""
    objects = overlay("production")
    drain = float(
        m.find(objects, "ConfigMap", next(iter(m.config_map_names(objects))))["data"][
            "SESSIONKIT_DRAIN_SECONDS"
        ]
    )
    assert drain >= 120, "knowledge uploads and agent turns run for minutes"
    for deployment in m.of_kind(objects, "Deployment"):
        spec = m.pod_spec(deployment)
        command = spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep"
        assert spec["terminationGracePeriodSeconds"] >= float(command[1]) + drain, m.name_of(deployment)


def test_every_variable_the_code_reads_is_in_the_readme() -> None:
    section = Path(m.ROOT / "README.md").read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"\b(?:SESSIONKIT|OPENAI)_[A-Z0-9_]+", section))
    wanted = m.settings_names() | {n for n in m.environ_reads() if n.startswith("SESSIONKIT_")}
    assert sorted(wanted - listed) == []


# -- broken on purpose: each check catches its fault ---------------------------------------------------


Breaker = Callable[[list[m.Obj]], None]


def broken(name: str, breaker: Breaker) -> list[m.Obj]:
    objects = overlay(name)  # a fresh copy
    breaker(objects)
    return objects


def test_strict_validation_rejects_a_misspelled_field() -> None:
    def misspell(objects: list[m.Obj]) -> None:
        state = container(objects, "state")
        state["readinesProbe"] = state.pop("readinessProbe")

    for version in KUBERNETES_VERSIONS:
        problems = m.schema_problems(broken("production", misspell), version)
        assert len(problems) == 1 and "readinesProbe" in problems[0], problems


def test_strict_validation_rejects_a_wrong_type() -> None:
    def wrong(objects: list[m.Obj]) -> None:
        m.find(objects, "Deployment", "sessionkit-memory")["spec"]["replicas"] = "three"

    problems = m.schema_problems(broken("production", wrong), KUBERNETES_VERSIONS[0])
    assert len(problems) == 1 and "Deployment/sessionkit-memory" in problems[0], problems


@pytest.mark.parametrize(
    ("breaker", "expected"),
    [
        (lambda o: container(o, "state").pop("readinessProbe"), "no grpc readinessProbe"),
        (lambda o: container(o, "memory").pop("livenessProbe"), "no grpc livenessProbe"),
        (lambda o: container(o, "agent")["livenessProbe"]["grpc"].update(port=50052), "port 50052"),
        (
            lambda o: container(o, "knowledge")["readinessProbe"]["grpc"].update(
                service="sessionkit.v1.StateService"
            ),
            "does not register",
        ),
        (lambda o: container(o, "gateway")["readinessProbe"]["httpGet"].update(path="/"), "/health"),
    ],
    ids=["removed-readiness", "removed-liveness", "wrong-port", "wrong-service", "gateway-path"],
)
def test_probe_check_rejects(breaker: Breaker, expected: str) -> None:
    problems = m.probe_problems(broken("production", breaker))
    assert len(problems) == 1 and expected in problems[0], problems


@pytest.mark.parametrize(
    ("breaker", "expected"),
    [
        (
            lambda o: m.find(o, "Service", "sessionkit-memory")["spec"]["selector"].update(
                {"app.kubernetes.io/name": "sessionkit-memroy"}
            ),
            "Deployment/sessionkit-memory: no Service selects its pods",
        ),
        (
            lambda o: o.remove(m.find(o, "PodDisruptionBudget", "sessionkit-agent")),
            "Deployment/sessionkit-agent: no PodDisruptionBudget",
        ),
        (
            lambda o: m.find(o, "Service", "sessionkit-state")["spec"]["ports"][0].update(targetPort="grcp"),
            "targetPort grcp",
        ),
    ],
    ids=["selector-mismatch", "no-pdb", "wrong-target-port"],
)
def test_pdb_and_service_check_rejects(breaker: Breaker, expected: str) -> None:
    problems = m.pdb_and_service_problems(broken("production", breaker))
    assert len(problems) == 1 and expected in problems[0], problems


@pytest.mark.parametrize(
    "image",
    [
        "ghcr.io/sessionkit/sessionkit-state:latest",
        "ghcr.io/sessionkit/sessionkit-state",
        "localhost:5000/state",
    ],
)
def test_image_check_rejects_unpinned(image: str) -> None:
    objects = broken("dev", lambda o: container(o, "state").update(image=image))
    problems = m.image_problems(objects)
    assert len(problems) == 1 and image in problems[0], problems


def test_image_check_accepts_a_digest_and_a_registry_port() -> None:
    def repin(objects: list[m.Obj]) -> None:
        container(objects, "state")["image"] = "localhost:5000/sessionkit-state@sha256:" + "a" * 64
        container(objects, "memory")["image"] = "localhost:5000/sessionkit-memory:0.1.0"

    objects = broken("dev", repin)
    assert m.image_problems(objects) == []


@pytest.mark.parametrize(
    ("breaker", "expected"),
    [
        (lambda o: container(o, "state")["securityContext"].pop("readOnlyRootFilesystem"), "writable"),
        (
            lambda o: m.pod_spec(m.find(o, "Deployment", "sessionkit-memory"))["securityContext"].update(
                runAsUser=0, runAsNonRoot=False
            ),
            "root",
        ),
        (
            lambda o: container(o, "gateway")["securityContext"]["capabilities"].update(drop=[]),
            "capabilities",
        ),
        (
            lambda o: m.pod_spec(m.find(o, "Deployment", "sessionkit-agent")).pop("enableServiceLinks"),
            "links",
        ),
    ],
    ids=["writable-root", "root", "capabilities", "service-links"],
)
def test_security_check_rejects(breaker: Breaker, expected: str) -> None:
    problems = m.security_problems(broken("dev", breaker))
    assert problems and all(expected in p.lower() for p in problems), problems


def test_env_check_rejects_an_unknown_variable() -> None:
    def misspell(objects: list[m.Obj]) -> None:
        container(objects, "agent")["env"].append({"name": "SESSIONKIT_AGENT_CONTEXT_TOKEN", "value": "1"})

    problems = m.env_problems(broken("production", misspell), m.known_env_names())
    assert problems == [
        "Deployment/sessionkit-agent container agent: unknown variable SESSIONKIT_AGENT_CONTEXT_TOKEN"
    ]


def test_env_check_rejects_an_unknown_config_map_key() -> None:
    def misspell(objects: list[m.Obj]) -> None:
        for name in m.config_map_names(objects):
            m.find(objects, "ConfigMap", name)["data"]["SESSIONKIT_VECTOR_URI"] = "http://x:8000"

    problems = m.env_problems(broken("production", misspell), m.known_env_names())
    assert len(problems) == 1 and "unknown variable SESSIONKIT_VECTOR_URI" in problems[0], problems


def test_storage_check_rejects_sqlite_and_embedded_chroma_with_replicas() -> None:
    secrets = production_secrets()
    sqlite = {**secrets, ("sessionkit-secrets", "database-url"): "sqlite:////tmp/sessionkit.db"}
    problems = m.storage_problems(overlay("production"), sqlite)
    assert len(problems) == 4 and all("not PostgreSQL" in p for p in problems), problems
    assert m.storage_problems(overlay("production"), {}) != [], "a missing Secret key is no PostgreSQL"

    def embedded(objects: list[m.Obj]) -> None:
        for name in m.config_map_names(objects):
            m.find(objects, "ConfigMap", name)["data"]["SESSIONKIT_VECTOR_URL"] = ""

    problems = m.storage_problems(broken("production", embedded), secrets)
    assert sorted(p.split(" ")[0] for p in problems) == [
        "Deployment/sessionkit-knowledge",
        "Deployment/sessionkit-memory",
    ]
    # One replica may keep its data in the pod (the check is about replicas sharing it).
    single = broken("dev", embedded)
    assert m.storage_problems(single, {}) == []


@pytest.mark.parametrize(
    ("breaker", "expected"),
    [
        (
            lambda o: m.find(o, "NetworkPolicy", "sessionkit-state")["spec"]["ingress"][0]["from"].append(
                {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "sessionkit-memory"}}}
            ),
            "Deployment/sessionkit-state: reachable from ['sessionkit-agent', 'sessionkit-gateway', "
            "'sessionkit-memory']",
        ),
        (
            lambda o: m.find(o, "NetworkPolicy", "sessionkit-agent")["spec"]["ingress"][0].pop("from"),
            "Deployment/sessionkit-agent: reachable from ['*']",
        ),
        (
            lambda o: o.remove(m.find(o, "NetworkPolicy", "sessionkit-knowledge")),
            "Deployment/sessionkit-knowledge: reachable from []",
        ),
        (
            lambda o: o.remove(m.find(o, "NetworkPolicy", "sessionkit-default-deny-ingress")),
            "no default-deny",
        ),
    ],
    ids=["extra-caller", "open-to-all", "no-policy", "no-default-deny"],
)
def test_network_policy_check_rejects(breaker: Breaker, expected: str) -> None:
    problems = m.network_policy_problems(broken("production", breaker), CALLERS)
    assert len(problems) == 1 and problems[0].startswith(expected), problems
