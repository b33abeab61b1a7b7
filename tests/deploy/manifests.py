"""Render deploy/k8s with kustomize and check the rendered objects. Each check takes the objects and
returns its problems (an empty list when they pass), so the tests call the same function on the real
manifests and on deliberately broken copies of them."""

from __future__ import annotations

import base64
import copy
import functools
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from sessionkit.config import ClientSettings
from sessionkit_server.common.config import ServerSettings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "production")
#: Images built from this repository; only their containers run sessionkit (postgres and chroma do not).
SESSIONKIT_IMAGES = "ghcr.io/sessionkit/"
WORKLOADS = ("Deployment", "StatefulSet", "Job")

Obj = dict[str, Any]


def kubectl() -> str | None:
    return shutil.which("kubectl")


@functools.cache
def _render(directory: Path) -> tuple[Obj, ...]:
    done = subprocess.run(
        [kubectl() or "kubectl", "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise AssertionError(f"kubectl kustomize {directory} failed: {done.stderr.strip()}")
    # libyaml's loader when PyYAML has it: the pure-Python one took seconds per overlay on a busy CI.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return tuple(doc for doc in yaml.load_all(done.stdout, Loader=loader) if doc)


def render(directory: Path) -> list[Obj]:
    """A fresh copy of the rendered objects (callers may break them); skips the test without kubectl."""
    if kubectl() is None:
        pytest.skip("kubectl is not installed: `kubectl kustomize` renders the manifests")
    return copy.deepcopy(list(_render(directory)))


def name_of(obj: Obj) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def of_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def find(objects: list[Obj], kind: str, name: str) -> Obj:
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise KeyError(f"{kind}/{name}")


def pod_spec(workload: Obj) -> Obj:
    return workload["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def containers(workload: Obj) -> Iterator[Obj]:
    spec = pod_spec(workload)
    yield from spec.get("initContainers", [])
    yield from spec.get("containers", [])


def env_of(container: Obj) -> dict[str, Obj]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        if not {
            "In": present and labels.get(key) in values,
            "NotIn": not present or labels.get(key) not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }[operator]:
            return False
    return True


# -- schema ------------------------------------------------------------------------------------------


@functools.cache
def _schema_validator(kind: str, api_version: str, version: str) -> Any:
    """kubernetes-validate's strict schema of ``kind`` for Kubernetes ``version``, compiled once: its
    validate() reads the (large) definitions file on every call, which made these tests slow."""
    import jsonschema
    import kubernetes_validate
    from kubernetes_validate import utils
    from referencing import Registry, Resource

    if version not in {utils.major_minor(v) for v in utils.all_versions()}:
        raise AssertionError(
            f"kubernetes-validate {kubernetes_validate.__version__} has no Kubernetes {version}"
        )
    # The same file naming as kubernetes_validate.validate (rbac.authorization.k8s.io/v1 -> rbac-v1).
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    directory = f"kubernetes-json-schema/v{version}.0-local-strict"
    try:
        schema = utils.schema_contents(f"{directory}/{kind.lower()}-{group_version}.json", version)
    except FileNotFoundError:
        raise utils.SchemaNotFoundError(kind=kind, version=version, api_version=api_version) from None
    definitions = utils.schema_contents(f"{directory}/_definitions.json", version)
    registry: Registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


def schema_problems(objects: list[Obj], version: str) -> list[str]:
    """kubernetes-validate's schemas in strict mode (an unknown or misspelled field is an error) for
    Kubernetes ``version``."""
    from kubernetes_validate import utils

    problems = []
    for obj in objects:
        try:
            validator = _schema_validator(obj["kind"], obj["apiVersion"], version)
        except utils.SchemaNotFoundError as error:
            problems.append(f"{name_of(obj)}: {error.message}")
            continue
        for error in validator.iter_errors(obj):
            where = "/".join(str(p) for p in error.absolute_path)
            problems.append(f"{name_of(obj)} (Kubernetes {version}) at {where}: {error.message}")
    return problems


# -- probes ------------------------------------------------------------------------------------------


def _health_names() -> dict[str, str]:
    """The per-service names the server registers on its grpc.health.v1 service (services/server.py)."""
    from sessionkit_server.server import AGENT_SERVICE, KNOWLEDGE_SERVICE, MEMORY_SERVICE, STATE_SERVICE

    return {
        "state": STATE_SERVICE,
        "memory": MEMORY_SERVICE,
        "knowledge": KNOWLEDGE_SERVICE,
        "agent": AGENT_SERVICE,
    }


def _port_number(container: Obj, port: int | str) -> int | None:
    for declared in container.get("ports", []):
        if port in (declared["containerPort"], declared.get("name")):
            return int(declared["containerPort"])
    return None


def _literal(container: Obj, name: str) -> str | None:
    entry = env_of(container).get(name)
    return None if entry is None else entry.get("value")


def probe_problems(objects: list[Obj]) -> list[str]:
    """Every gRPC container has grpc readiness and liveness probes on the port it serves (the health
    service runs on the gRPC port), readiness asking for a service it runs; the gateway's readiness is
    HTTP GET /health on its HTTP port."""
    health = _health_names()
    problems = []
    for workload in of_kind(objects, "Deployment"):
        for container in pod_spec(workload)["containers"]:
            where = f"{name_of(workload)} container {container['name']}"
            services = _literal(container, "SESSIONKIT_SERVICES")
            if services is not None:
                served = yaml.safe_load(services)
                grpc_port = int(_literal(container, "SESSIONKIT_PORT") or 50051)
                if _literal(container, "SESSIONKIT_HOST") not in ("0.0.0.0", "::"):
                    problems.append(f"{where}: SESSIONKIT_HOST must be 0.0.0.0 for the kubelet to reach it")
                if _port_number(container, grpc_port) != grpc_port:
                    problems.append(f"{where}: no containerPort {grpc_port} (SESSIONKIT_PORT)")
                for kind in ("readinessProbe", "livenessProbe"):
                    probe = container.get(kind, {}).get("grpc")
                    if probe is None:
                        problems.append(f"{where}: no grpc {kind}")
                        continue
                    if probe["port"] != grpc_port:
                        problems.append(f"{where}: {kind} on port {probe['port']}, gRPC serves {grpc_port}")
                    wanted = {health[s] for s in served if s in health}
                    allowed = wanted if kind == "readinessProbe" else {*wanted, ""}
                    if probe.get("service", "") not in allowed:
                        problems.append(
                            f"{where}: {kind} asks for {probe.get('service', '')!r}, which this server does "
                            f"not register (it serves {sorted(wanted)})"
                        )
            elif container["image"].startswith(SESSIONKIT_IMAGES + "sessionkit-gateway"):
                http_port = int(_literal(container, "SESSIONKIT_HTTP_PORT") or 8080)
                probe = container.get("readinessProbe", {}).get("httpGet")
                if probe is None or probe.get("path") != "/health":
                    problems.append(f"{where}: readinessProbe must be HTTP GET /health")
                elif _port_number(container, probe["port"]) != http_port:
                    problems.append(f"{where}: readinessProbe port {probe['port']} is not {http_port}")
                if "livenessProbe" not in container:
                    problems.append(f"{where}: no livenessProbe")
    return problems


# -- PDBs and Services ------------------------------------------------------------------------------


def pdb_and_service_problems(objects: list[Obj]) -> list[str]:
    """Every Deployment has a PodDisruptionBudget and a Service whose selectors match its pods, the
    Service's target port being one its containers declare."""
    problems = []
    for workload in of_kind(objects, "Deployment"):
        namespace = workload["metadata"].get("namespace")
        labels = workload["spec"]["template"]["metadata"].get("labels", {})
        if not matches(workload["spec"]["selector"], labels):
            problems.append(f"{name_of(workload)}: its selector does not match its own pod labels")
        same = [o for o in objects if o["metadata"].get("namespace") == namespace]
        if not any(
            matches(p["spec"].get("selector", {}), labels) for p in of_kind(same, "PodDisruptionBudget")
        ):
            problems.append(f"{name_of(workload)}: no PodDisruptionBudget selects its pods")
        services = [
            s
            for s in of_kind(same, "Service")
            if s["spec"].get("selector") and matches({"matchLabels": s["spec"]["selector"]}, labels)
        ]
        if not services:
            problems.append(f"{name_of(workload)}: no Service selects its pods")
        for service in services:
            for port in service["spec"].get("ports", []):
                target = port.get("targetPort", port["port"])
                if not any(_port_number(c, target) for c in pod_spec(workload)["containers"]):
                    problems.append(
                        f"{name_of(service)}: targetPort {target} is no port of {name_of(workload)}"
                    )
    return problems


# -- images ------------------------------------------------------------------------------------------

_PINNED = re.compile(r"^[^@]+@sha256:[0-9a-f]{64}$|^[^@]+:(?P<tag>[A-Za-z0-9_][A-Za-z0-9._-]{0,127})$")


def image_problems(objects: list[Obj]) -> list[str]:
    """Every image names an exact version: a tag other than latest, or a digest."""
    problems = []
    for workload in (o for o in objects if o["kind"] in WORKLOADS):
        for container in containers(workload):
            image = container.get("image", "")
            # "host:port/name" has a colon that is no tag: look for the tag after the last slash.
            match = _PINNED.match(image) if ":" in image.rsplit("/", 1)[-1] or "@" in image else None
            if match is None or match.group("tag") == "latest":
                problems.append(
                    f"{name_of(workload)} container {container['name']}: image {image!r} not pinned"
                )
    return problems


# -- pod security ------------------------------------------------------------------------------------


def security_problems(objects: list[Obj]) -> list[str]:
    """Every pod meets the restricted Pod Security Standard and more: non-root, read-only root
    filesystem, no privilege escalation, no capabilities, the runtime's seccomp profile; sessionkit pods
    also get no service links (Kubernetes would inject SESSIONKIT_<SERVICE>_PORT=tcp://... variables)."""
    problems = []
    for workload in (o for o in objects if o["kind"] in WORKLOADS):
        spec = pod_spec(workload)
        pod = spec.get("securityContext", {})
        for container in containers(workload):
            where = f"{name_of(workload)} container {container['name']}"
            own = container.get("securityContext", {})
            if not own.get("runAsNonRoot", pod.get("runAsNonRoot")):
                problems.append(f"{where}: runAsNonRoot is not true")
            if own.get("runAsUser", pod.get("runAsUser", 0)) == 0:
                problems.append(f"{where}: no non-root runAsUser")
            if not own.get("readOnlyRootFilesystem"):
                problems.append(f"{where}: the root filesystem is writable")
            if own.get("allowPrivilegeEscalation", True):
                problems.append(f"{where}: allowPrivilegeEscalation is not false")
            if own.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{where}: capabilities are not dropped (drop: [ALL])")
            seccomp = own.get("seccompProfile", pod.get("seccompProfile", {})).get("type")
            if seccomp not in ("RuntimeDefault", "Localhost"):
                problems.append(f"{where}: no seccomp profile")
            if container.get("image", "").startswith(SESSIONKIT_IMAGES) and spec.get(
                "enableServiceLinks", True
            ):
                problems.append(f"{where}: enableServiceLinks is not false")
    return problems


# -- environment -------------------------------------------------------------------------------------


def _settings_env_names(settings: type[BaseSettings]) -> set[str]:
    prefix = str(settings.model_config.get("env_prefix", ""))
    names: set[str] = set()
    for field_name, field in settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {choice for choice in alias.choices if isinstance(choice, str)}
        elif isinstance(alias, str):
            names.add(alias)
        else:
            names.add(f"{prefix}{field_name}".upper())
    return names


_ENVIRON_READ = re.compile(r"""os\.(?:environ\.get\(|environ\[|getenv\()\s*["']([A-Z][A-Z0-9_]*)["']""")


@functools.cache
def environ_reads() -> frozenset[str]:
    """Variables the code reads with os.environ / os.getenv (outside the settings classes)."""
    names: set[str] = set()
    for folder in (ROOT / "services", ROOT / "sdk" / "sessionkit"):
        for path in folder.rglob("*.py"):
            if "v1" not in path.relative_to(folder).parts:
                names |= set(_ENVIRON_READ.findall(path.read_text()))
    return frozenset(names)


def settings_names() -> set[str]:
    """Every variable ServerSettings and ClientSettings read."""
    return _settings_env_names(ServerSettings) | _settings_env_names(ClientSettings)


def known_env_names() -> set[str]:
    return settings_names() | environ_reads()


def config_map_names(objects: list[Obj]) -> set[str]:
    """ConfigMaps that sessionkit containers load whole (envFrom)."""
    return {
        source["configMapRef"]["name"]
        for workload in objects
        if workload["kind"] in WORKLOADS
        for container in containers(workload)
        if container.get("image", "").startswith(SESSIONKIT_IMAGES)
        for source in container.get("envFrom", [])
        if "configMapRef" in source
    }


def env_problems(objects: list[Obj], known: set[str] | frozenset[str]) -> list[str]:
    """Every variable the manifests give a sessionkit container (env, and the keys of the ConfigMaps
    loaded with envFrom) is one the code reads: a misspelled name would be silently ignored."""
    problems = []
    for workload in (o for o in objects if o["kind"] in WORKLOADS):
        for container in containers(workload):
            if container.get("image", "").startswith(SESSIONKIT_IMAGES):
                for name in sorted(set(env_of(container)) - known):
                    problems.append(
                        f"{name_of(workload)} container {container['name']}: unknown variable {name}"
                    )
    for name in config_map_names(objects):
        config_map = find(objects, "ConfigMap", name)
        for key in sorted(set(config_map.get("data", {})) - known):
            problems.append(f"{name_of(config_map)}: unknown variable {key}")
    return problems


# -- storage: no SQLite or embedded Chroma where replicas share data ----------------------------------

#: The services that keep rows in the database, and those that also use the vector index.
DATABASE_SERVICES = {"state", "memory", "knowledge", "agent"}
VECTOR_SERVICES = {"memory", "knowledge"}


def resolve_env(
    objects: list[Obj], container: Obj, name: str, secrets: Mapping[tuple[str, str], str]
) -> str | None:
    """The value ``name`` gets in ``container``: a literal, a ConfigMap's or Secret's key (a Secret
    that is not rendered, because the operator creates it, is looked up in ``secrets``), or envFrom."""
    entry = env_of(container).get(name)
    if entry is not None:
        if "value" in entry:
            return str(entry["value"])
        source = entry.get("valueFrom", {})
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            rendered = [s for s in of_kind(objects, "Secret") if s["metadata"]["name"] == ref["name"]]
            if rendered:
                data = rendered[0].get("data", {})
                return base64.b64decode(data[ref["key"]]).decode() if ref["key"] in data else None
            return secrets.get((ref["name"], ref["key"]))
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            return find(objects, "ConfigMap", ref["name"]).get("data", {}).get(ref["key"])
        return None
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            data = find(objects, "ConfigMap", source["configMapRef"]["name"]).get("data", {})
            if name in data:
                return str(data[name])
    return None


def replicas(objects: list[Obj], deployment: Obj) -> int:
    """The most pods the Deployment may run: its replicas, or its autoscaler's maximum."""
    most = int(deployment["spec"].get("replicas", 1))
    for hpa in of_kind(objects, "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        if target["kind"] == "Deployment" and target["name"] == deployment["metadata"]["name"]:
            most = max(most, int(hpa["spec"]["maxReplicas"]))
    return most


def storage_problems(objects: list[Obj], secrets: Mapping[tuple[str, str], str]) -> list[str]:
    """Where a service runs more than one replica, its database is PostgreSQL (never the SQLite file
    an empty SESSIONKIT_DATABASE_URL means) and its vector index a Chroma server (never embedded)."""
    problems = []
    for deployment in of_kind(objects, "Deployment"):
        if replicas(objects, deployment) <= 1:
            continue
        for container in pod_spec(deployment)["containers"]:
            services = _literal(container, "SESSIONKIT_SERVICES")
            served = set(yaml.safe_load(services)) if services else set()
            where = f"{name_of(deployment)} (up to {replicas(objects, deployment)} replicas)"
            if served & DATABASE_SERVICES:
                url = resolve_env(objects, container, "SESSIONKIT_DATABASE_URL", secrets) or ""
                if not url.startswith(("postgresql://", "postgresql+asyncpg://", "postgres://")):
                    problems.append(f"{where}: SESSIONKIT_DATABASE_URL is {url!r}, not PostgreSQL")
            if served & VECTOR_SERVICES:
                url = resolve_env(objects, container, "SESSIONKIT_VECTOR_URL", secrets) or ""
                if not url.startswith(("http://", "https://")):
                    problems.append(f"{where}: SESSIONKIT_VECTOR_URL is {url!r}, not a Chroma server")
    return problems


# -- NetworkPolicies ---------------------------------------------------------------------------------

#: Anyone (a rule without "from", or with a namespace or IP block).
ANYONE = "*"


def allowed_callers(objects: list[Obj], workload: Obj) -> set[str] | None:
    """The app.kubernetes.io/name of every workload the NetworkPolicies let reach ``workload``'s pods
    (ANYONE when a rule admits any source); None when no policy selects them (all traffic allowed)."""
    namespace = workload["metadata"].get("namespace")
    labels = workload["spec"]["template"]["metadata"].get("labels", {})
    policies = [
        p
        for p in of_kind(objects, "NetworkPolicy")
        if p["metadata"].get("namespace") == namespace
        and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
        and matches(p["spec"]["podSelector"], labels)
    ]
    if not policies:
        return None
    sources = [o for o in objects if o["kind"] in WORKLOADS and o["metadata"].get("namespace") == namespace]
    callers: set[str] = set()
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            peers = rule.get("from")
            if not peers or any("podSelector" not in peer or "namespaceSelector" in peer for peer in peers):
                callers.add(ANYONE)
                continue
            for peer in peers:
                for source in sources:
                    source_labels = source["spec"]["template"]["metadata"].get("labels", {})
                    if matches(peer["podSelector"], source_labels):
                        callers.add(source_labels.get("app.kubernetes.io/name", source["metadata"]["name"]))
    return callers


def network_policy_problems(objects: list[Obj], expected: Mapping[str, set[str]]) -> list[str]:
    """Ingress is denied by default, and each workload named in ``expected`` (by its
    app.kubernetes.io/name) admits exactly the callers listed there."""
    problems = []
    default_deny = [
        p
        for p in of_kind(objects, "NetworkPolicy")
        if p["spec"]["podSelector"] in ({}, None)
        and "Ingress" in p["spec"].get("policyTypes", [])
        and not p["spec"].get("ingress")
    ]
    if not default_deny:
        problems.append("no default-deny ingress NetworkPolicy (podSelector {} with no ingress rule)")
    for workload in (o for o in objects if o["kind"] in WORKLOADS):
        app = workload["spec"]["template"]["metadata"].get("labels", {}).get("app.kubernetes.io/name")
        if app in expected:
            callers = allowed_callers(objects, workload)
            if callers != expected[app]:
                found = sorted(callers) if callers is not None else "anyone (no policy selects it)"
                wanted = sorted(expected[app])
                problems.append(f"{name_of(workload)}: reachable from {found}, expected {wanted}")
    return problems
