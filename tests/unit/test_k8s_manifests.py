"""deploy/k8s: the Kustomize base and overlays run Dr.Tech the way DESIGN.md (7, 8) and
docs/architecture.md say.

Two layers of checks, so a broken manifest fails CI:
- always: every YAML file parses, every path a kustomization names exists, and the base's objects
  (plain YAML, read with pyyaml) meet the workload invariants below;
- when a Kustomize renderer is on PATH (`kubectl` >= 1.27, whose `kubectl kustomize` is Kustomize 5,
  or a standalone `kustomize`): every overlay is rendered, the same invariants are checked on what
  would be applied, plus each overlay's own promises, and every rendered object is validated
  against the Kubernetes OpenAPI schema (kubernetes-validate, strict: unknown fields fail).
  Without a renderer those tests skip and say why.

No cluster is needed: nothing here talks to an API server.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from gateway.settings import GatewaySettings
from services.auth.settings import AuthSettings
from services.bone.spec import SPEC as BONE
from services.core.settings import ServingSettings
from services.pneumonia.spec import SPEC as PNEUMONIA
from services.router.spec import SPEC as ROUTER
from services.skin.spec import SPEC as SKIN

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAYS = ("dev", "production", "gpu")
NAMESPACES = {"dev": "drtech-dev", "production": "drtech", "gpu": "drtech"}

# docs/architecture.md: processes and ports. The model services' ports come from their specs.
MODEL_SERVICES = {spec.task: spec.default_port for spec in (BONE, SKIN, PNEUMONIA, ROUTER)}
GRPC_SERVICES = {"auth": 50051, **MODEL_SERVICES}
GATEWAY_PORT = 8000
GATEWAY_INTERNAL_PORT = 8001   # /metrics and the detailed readiness (DRTECH_GATEWAY_INTERNAL_PORT)
HEALTH_PORT = 50060     # the model services' probe port (ServingSettings.health_port)
SETTINGS: dict[str, type[BaseSettings]] = {
    "auth": AuthSettings,
    "gateway": GatewaySettings,
    **{task: ServingSettings for task in MODEL_SERVICES},
}
# Read outside the settings classes (services/core/logs.py).
SHARED_ENV = {"DRTECH_LOG_LEVEL"}
# How long each component drains on SIGTERM, by the environment variable its manifest sets.
GRACE_ENV = {
    "auth": "DRTECH_AUTH_GRACE_S",
    **{task: "DRTECH_SERVING_GRACE_SECONDS" for task in MODEL_SERVICES},
}
# Secrets the operator creates (deploy/k8s/README.md); never committed.
EXTERNAL_SECRETS = {"drtech-database", "drtech-tls"}
# Images are tagged with the project's version.
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
MIN_KUBERNETES = "1.27.0"  # native gRPC probes are GA from 1.27
# The overlays that ship to a cluster pull by digest (deploy/k8s/README.md, "Pin the image").
RELEASED_OVERLAYS = ("production", "gpu")
DIGEST = r"sha256:[0-9a-f]{64}"


# ------------------------------------------------------------------------------------------------
# Reading manifests


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc is not None]


def kustomization_files() -> list[Path]:
    return sorted(K8S.rglob("kustomization.yaml"))


def base_objects() -> list[dict[str, Any]]:
    """The base's objects as written (before Kustomize), in the order its kustomization lists them."""
    kustomization = load_yaml_documents(BASE / "kustomization.yaml")[0]
    objects = []
    for resource in kustomization["resources"]:
        objects += load_yaml_documents(BASE / resource)
    # The one transformer the base uses: common labels on every object and pod template.
    for entry in kustomization.get("labels", []):
        for obj in objects:
            obj["metadata"].setdefault("labels", {}).update(entry["pairs"])
            if entry.get("includeTemplates") and "template" in obj.get("spec", {}):
                obj["spec"]["template"]["metadata"].setdefault("labels", {}).update(entry["pairs"])
    return objects


def base_generated_configmaps() -> set[str]:
    kustomization = load_yaml_documents(BASE / "kustomization.yaml")[0]
    return {generator["name"] for generator in kustomization.get("configMapGenerator", [])}


def renderer() -> list[str] | None:
    """The command that renders a kustomization folder, or None (with why, via renderer_missing)."""
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl") and kubectl_kustomize_major() >= 5:
        return ["kubectl", "kustomize"]
    return None


@functools.cache
def kubectl_kustomize_major() -> int:
    result = subprocess.run(
        ["kubectl", "version", "--client", "-o", "json"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0:
        return 0
    version = json.loads(result.stdout).get("kustomizeVersion", "v0")
    match = re.match(r"v?(\d+)", version)
    return int(match.group(1)) if match else 0


needs_renderer = pytest.mark.skipif(
    renderer() is None,
    reason="no Kustomize renderer: install kubectl >= 1.27 (its `kubectl kustomize` is Kustomize 5) "
    "or kustomize 5 to render and check the overlays; the plain-YAML checks still ran",
)


@functools.cache
def render(folder: str) -> tuple[dict[str, Any], ...]:
    command = renderer()
    assert command is not None
    result = subprocess.run(
        [*command, str(K8S / folder)], check=False, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"{' '.join(command)} {folder} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc is not None)


def of_kind(
    objects: list[dict[str, Any]] | tuple[dict[str, Any], ...], kind: str
) -> dict[str, dict[str, Any]]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == kind}


def containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    pod = deployment["spec"]["template"]["spec"]
    return pod.get("initContainers", []) + pod["containers"]


def env_value(container: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((entry for entry in container.get("env", []) if entry["name"] == name), None)


def settings_env_names(settings: type[BaseSettings]) -> set[str]:
    """Every environment variable a pydantic-settings class reads."""
    prefix = settings.model_config.get("env_prefix", "")
    names = set()
    for field_name, field in settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, str):
            names.add(alias)
        elif isinstance(alias, AliasChoices):
            names.update(choice for choice in alias.choices if isinstance(choice, str))
        else:
            names.add(f"{prefix}{field_name}".upper())
    return names


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def prestop_sleep_seconds(container: dict[str, Any]) -> float:
    prestop = container.get("lifecycle", {}).get("preStop")
    if prestop is None:
        return 0.0
    if "sleep" in prestop:
        return float(prestop["sleep"]["seconds"])
    command = prestop["exec"]["command"]
    assert command[0] == "sleep", f"unexpected preStop hook {command}"
    return float(command[1])


def gateway_grace_seconds() -> float:
    """uvicorn's graceful-shutdown timeout, as gateway/__main__.py sets it."""
    source = (REPO / "gateway" / "__main__.py").read_text(encoding="utf-8")
    match = re.search(r"timeout_graceful_shutdown\s*=\s*(\d+(?:\.\d+)?)", source)
    assert match, (
        "gateway/__main__.py no longer sets timeout_graceful_shutdown: update this test and gateway.yaml"
    )
    return float(match.group(1))


# ------------------------------------------------------------------------------------------------
# Invariants every set of objects (the base as written, or a rendered overlay) must meet


def workload_problems(
    objects: list[dict[str, Any]] | tuple[dict[str, Any], ...], rendered: bool
) -> Iterator[str]:
    """Yield one line per broken invariant; empty means the workloads are fine."""
    deployments = of_kind(objects, "Deployment")
    services = of_kind(objects, "Service")
    configmaps = set(of_kind(objects, "ConfigMap")) if rendered else base_generated_configmaps()
    claims = of_kind(objects, "PersistentVolumeClaim")
    accounts = of_kind(objects, "ServiceAccount")
    autoscalers = of_kind(objects, "HorizontalPodAutoscaler")
    budgets = of_kind(objects, "PodDisruptionBudget")

    expected = set(GRPC_SERVICES) | {"gateway"}
    if set(deployments) != expected:
        yield f"Deployments are {sorted(deployments)}, expected {sorted(expected)}"

    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        if not selects(deployment["spec"]["selector"]["matchLabels"], labels):
            yield f"{name}: selector does not match its own pod labels"
        if labels.get("app.kubernetes.io/part-of") != "drtech" and rendered:
            yield f"{name}: pods lack app.kubernetes.io/part-of=drtech (the default-deny policy keys on it)"
        if pod.get("serviceAccountName") != name or name not in accounts:
            yield f"{name}: must run as its own ServiceAccount '{name}'"
        if pod.get("automountServiceAccountToken") is not False:
            yield f"{name}: mounts a service account token it never uses"

        pod_security = pod.get("securityContext", {})
        if pod_security.get("runAsNonRoot") is not True or not pod_security.get("runAsUser"):
            yield f"{name}: pod must set runAsNonRoot and a non-zero runAsUser"
        if pod_security.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            yield f"{name}: pod seccompProfile must be RuntimeDefault"

        volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
        for volume in volumes.values():
            claim = volume.get("persistentVolumeClaim", {}).get("claimName")
            if claim and pod_security.get("fsGroup") and pod_security.get("fsGroupChangePolicy") != "OnRootMismatch":
                # The default (Always) re-owns every file of the volume on each pod start.
                yield f"{name}: sets fsGroup on volume '{volume['name']}' without fsGroupChangePolicy OnRootMismatch"
            if claim and claim not in claims:
                yield f"{name}: volume '{volume['name']}' claims '{claim}', which is not defined"
            elif claim and claims[claim]["spec"]["accessModes"] == ["ReadWriteOnce"]:
                # A rolling update would start the new pod while the old one holds the volume.
                if deployment["spec"].get("strategy", {}).get("type") != "Recreate":
                    yield f"{name}: mounts ReadWriteOnce claim '{claim}' but is not updated with Recreate"

        for container in containers(deployment):
            where = f"{name}/{container['name']}"
            yield from container_problems(where, container, volumes, rendered)
            yield from reference_problems(where, container, objects, configmaps)
            yield from env_name_problems(name, where, container)
            yield from command_problems(name, where, container)
            yield from probe_problems(name, where, container)
            yield from termination_problems(name, where, container, pod)

        targeted = [hpa for hpa in autoscalers.values() if hpa["spec"]["scaleTargetRef"]["name"] == name]
        if targeted and "replicas" in deployment["spec"]:
            yield f"{name}: sets spec.replicas while an HorizontalPodAutoscaler owns it"
        if name in MODEL_SERVICES and not any(
            selects(pdb["spec"]["selector"]["matchLabels"], labels) for pdb in budgets.values()
        ):
            yield f"{name}: no PodDisruptionBudget covers its pods"

    for name, port in GRPC_SERVICES.items():
        service = services.get(name)
        if service is None:
            yield f"{name}: no Service"
            continue
        if service["spec"].get("clusterIP") != "None":
            yield f"{name}: Service must be headless (clusterIP: None) for dns:/// round_robin"
        ports = {p.get("name"): p for p in service["spec"]["ports"]}
        if "grpc" not in ports or ports["grpc"]["port"] != port or ports["grpc"].get("targetPort") != "grpc":
            yield f"{name}: Service needs a port named grpc, {port} -> targetPort grpc"

    gateway_service = services.get("gateway")
    if gateway_service is None:
        yield "gateway: no Service"
    else:
        if (
            gateway_service["spec"].get("type", "ClusterIP") != "ClusterIP"
            or gateway_service["spec"].get("clusterIP") == "None"
        ):
            yield "gateway: Service must be a plain ClusterIP (the Ingress controller balances HTTP)"
        if [p.get("targetPort") for p in gateway_service["spec"]["ports"]] != ["http"]:
            yield "gateway: Service must target the container port named http"

    for name, service in services.items():
        selector = service["spec"].get("selector", {})
        if not any(
            selects(selector, d["spec"]["template"]["metadata"]["labels"]) for d in deployments.values()
        ):
            yield f"Service {name}: selector {selector} matches no Deployment's pods"

    for name, hpa in autoscalers.items():
        target = hpa["spec"]["scaleTargetRef"]
        if target["kind"] != "Deployment" or target["name"] not in deployments:
            yield f"HPA {name}: scales {target['kind']}/{target['name']}, which is not defined"
        metrics = [m["resource"]["name"] for m in hpa["spec"].get("metrics", []) if m["type"] == "Resource"]
        if "cpu" not in metrics:
            yield f"HPA {name}: must scale on CPU"
        if hpa["spec"].get("minReplicas", 1) > hpa["spec"]["maxReplicas"]:
            yield f"HPA {name}: minReplicas exceeds maxReplicas"

    yield from network_policy_problems(objects, deployments)

    for name, ingress in of_kind(objects, "Ingress").items():
        nginx = any(key.startswith("nginx.ingress.kubernetes.io/")
                    for key in ingress["metadata"].get("annotations", {}))
        if nginx and ingress["spec"].get("ingressClassName") != "nginx":
            yield f"Ingress {name}: carries ingress-nginx annotations, so spec.ingressClassName must be nginx"
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                if backend["name"] != "gateway" or backend["port"].get("name") != "http":
                    yield f"Ingress {name}: must route to Service gateway, port http"


def container_problems(
    where: str, container: dict[str, Any], volumes: dict[str, dict[str, Any]], rendered: bool
) -> Iterator[str]:
    """Pinned image, hardened security context, requests and limits, writable /tmp."""
    image = container["image"]
    if not re.match(rf"^[\w./-]*drtech(-gpu)?(:[\w.-]+)?(@{DIGEST})?$", image) or ":latest" in image:
        yield f"{where}: image '{image}' is not a pinned Dr.Tech image"
    if rendered and ":" not in image.split("@")[0].rsplit("/", 1)[-1]:
        yield f"{where}: rendered image '{image}' has no tag"

    security = container.get("securityContext", {})
    if security.get("allowPrivilegeEscalation") is not False:
        yield f"{where}: allowPrivilegeEscalation must be false"
    if security.get("readOnlyRootFilesystem") is not True:
        yield f"{where}: root filesystem must be read-only"
    if security.get("capabilities", {}).get("drop") != ["ALL"]:
        yield f"{where}: must drop ALL capabilities"
    if security.get("privileged"):
        yield f"{where}: must not be privileged"

    resources = container.get("resources", {})
    for section in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            if resource not in resources.get(section, {}):
                yield f"{where}: resources.{section}.{resource} is not set"

    mounts = {mount["mountPath"]: mount["name"] for mount in container.get("volumeMounts", [])}
    for path, volume in mounts.items():
        if volume not in volumes:
            yield f"{where}: mounts '{volume}' at {path}, which is not a volume of the pod"
    if "emptyDir" not in volumes.get(mounts.get("/tmp", ""), {}):
        yield f"{where}: a read-only root needs an emptyDir at /tmp"


def reference_problems(
    where: str,
    container: dict[str, Any],
    objects: list[dict[str, Any]] | tuple[dict[str, Any], ...],
    configmaps: set[str],
) -> Iterator[str]:
    """Every ConfigMap and Secret the container reads exists (or is one the operator creates)."""
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef", {}).get("name")
        if ref is not None and ref not in configmaps:
            yield f"{where}: envFrom names ConfigMap '{ref}', which is not defined"
    secrets = EXTERNAL_SECRETS | set(of_kind(objects, "Secret"))
    for entry in container.get("env", []):
        secret = entry.get("valueFrom", {}).get("secretKeyRef", {}).get("name")
        if secret is not None and secret not in secrets:
            yield f"{where}: env {entry['name']} reads unknown Secret '{secret}'"


def termination_problems(
    name: str, where: str, container: dict[str, Any], pod: dict[str, Any]
) -> Iterator[str]:
    """SIGKILL must not come before the preStop sleep and the app's own drain have both finished."""
    if name == "gateway":
        grace = gateway_grace_seconds()
    else:
        entry = env_value(container, GRACE_ENV[name])
        if entry is None:
            yield f"{where}: sets no {GRACE_ENV[name]}, so its drain time is unknown"
            return
        grace = float(entry["value"])
    needed = prestop_sleep_seconds(container) + grace
    allowed = pod.get("terminationGracePeriodSeconds", 30)
    if allowed <= needed:
        yield f"{where}: terminationGracePeriodSeconds {allowed} must exceed preStop + drain ({needed:g} s)"


def env_name_problems(name: str, where: str, container: dict[str, Any]) -> Iterator[str]:
    """A misspelt setting is silently ignored by pydantic-settings (extra="ignore"): catch it here."""
    known = settings_env_names(SETTINGS[name]) | SHARED_ENV
    for entry in container.get("env", []):
        if entry["name"].startswith("DRTECH_") and entry["name"] not in known:
            yield f"{where}: env {entry['name']} is read by no setting of {SETTINGS[name].__name__}"


def command_problems(name: str, where: str, container: dict[str, Any]) -> Iterator[str]:
    module = "gateway" if name == "gateway" else f"services.{name}"
    # `command` would replace the image's ENTRYPOINT (tini): Python as PID 1 ignores SIGTERM
    # until it installs a handler, so a pod stopped while starting waits out its grace period.
    if "command" in container:
        yield f"{where}: sets command {container['command']}, which drops the image's tini entrypoint; use args"
    elif container.get("args") != ["python", "-m", module]:
        yield f"{where}: args must be python -m {module}, got {container.get('args')}"
    elif not (REPO / module.replace(".", "/")).is_dir():
        yield f"{where}: runs {module}, which is not a package of this repository"


def probe_problems(name: str, where: str, container: dict[str, Any]) -> Iterator[str]:
    ports = {port.get("name"): port["containerPort"] for port in container.get("ports", [])}
    probes = {kind: container.get(kind) for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    for kind, probe in probes.items():
        if probe is None:
            yield f"{where}: no {kind}"
    if any(probe is None for probe in probes.values()):
        return
    if name in GRPC_SERVICES:
        port = GRPC_SERVICES[name]
        # A model service answers probes on its health port, whose threads Diagnose calls never hold
        expected = {"grpc": port, "health": HEALTH_PORT} if name in MODEL_SERVICES else {"grpc": port}
        if ports != expected:
            yield f"{where}: must expose exactly the ports {expected} (got {ports})"
        probe_port = expected.get("health", port)
        env = {item["name"]: item.get("value") for item in container.get("env", [])}
        if name in MODEL_SERVICES and env.get("DRTECH_SERVING_HEALTH_PORT") != str(HEALTH_PORT):
            yield f"{where}: DRTECH_SERVING_HEALTH_PORT must be {HEALTH_PORT}, the port the probes use"
        for kind, probe in probes.items():
            handlers = set(probe) & {"grpc", "httpGet", "tcpSocket", "exec"}
            if handlers != {"grpc"} or probe["grpc"].get("port") != probe_port:
                yield f"{where}: {kind} must be a native grpc probe on port {probe_port}"
    else:
        if ports != {"http": GATEWAY_PORT, "internal": GATEWAY_INTERNAL_PORT}:
            yield (f"{where}: must expose exactly the ports http {GATEWAY_PORT} and internal "
                   f"{GATEWAY_INTERNAL_PORT} (got {ports})")
        env = {item["name"]: item.get("value") for item in container.get("env", [])}
        if env.get("DRTECH_GATEWAY_INTERNAL_PORT") != str(GATEWAY_INTERNAL_PORT):
            yield f"{where}: DRTECH_GATEWAY_INTERNAL_PORT must be {GATEWAY_INTERNAL_PORT}, the port named internal"
        paths = {kind: probe.get("httpGet", {}).get("path") for kind, probe in probes.items()}
        # Readiness is the gateway's own (/readyz/gateway), not /readyz (every model service too).
        expected = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz/gateway"}
        if paths != expected:
            yield f"{where}: probes must be /healthz (startup, liveness) and /readyz/gateway (readiness): {paths}"
        probe_ports = {kind: probe.get("httpGet", {}).get("port") for kind, probe in probes.items()}
        # /readyz/gateway is served on the internal port only; /healthz on both.
        if probe_ports != {"startupProbe": "http", "livenessProbe": "http", "readinessProbe": "internal"}:
            yield f"{where}: probes must use the port named http, readiness the port named internal: {probe_ports}"
    # Warm-up (model load + warm-up runs) must fit in the startup probe's window.
    startup = probes["startupProbe"]
    if startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3) < 60:
        yield f"{where}: startupProbe allows under 60 s for start-up and warm-up"


def network_policy_problems(
    objects: list[dict[str, Any]] | tuple[dict[str, Any], ...], deployments: dict[str, dict[str, Any]]
) -> Iterator[str]:
    policies = list(of_kind(objects, "NetworkPolicy").values())
    gateway_labels = (
        deployments.get("gateway", {})
        .get("spec", {})
        .get("template", {})
        .get("metadata", {})
        .get("labels", {})
    )
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        applying = [
            p
            for p in policies
            if "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
            and selects(p["spec"]["podSelector"].get("matchLabels", {}), labels)
        ]
        if not any(not p["spec"].get("ingress") for p in applying):
            yield f"{name}: no default-deny NetworkPolicy selects its pods"
        rules = [rule for p in applying for rule in p["spec"].get("ingress", [])]
        if name == "gateway":
            if not any("http" in [port.get("port") for port in rule.get("ports", [])] for rule in rules):
                yield "gateway: no NetworkPolicy admits traffic to its http port"
            for rule in rules:
                opened = [port.get("port") for port in rule.get("ports", [])]
                # No `ports` opens every port, the internal one included.
                if (not opened or "internal" in opened or GATEWAY_INTERNAL_PORT in opened) and not rule.get("from"):
                    yield "gateway: a NetworkPolicy opens its internal port (metrics, detailed readiness) to anyone"
            continue
        if not rules:
            yield f"{name}: no NetworkPolicy admits the gateway"
        for rule in rules:
            peers = rule.get("from", [])
            only_gateway = peers and all(
                set(peer) == {"podSelector"}
                and selects(peer["podSelector"].get("matchLabels", {}), gateway_labels)
                and peer["podSelector"].get("matchLabels")
                for peer in peers
            )
            if not only_gateway:
                yield f"{name}: a NetworkPolicy admits more than the gateway: {peers}"
            if [port.get("port") for port in rule.get("ports", [])] != ["grpc"]:
                yield f"{name}: its NetworkPolicy must open the grpc port only"


# ------------------------------------------------------------------------------------------------
# Plain-YAML checks (always run)


def test_every_manifest_file_parses_and_names_its_objects() -> None:
    files = sorted(K8S.rglob("*.yaml"))
    assert files, f"no manifests under {K8S}"
    for path in files:
        docs = load_yaml_documents(path)
        assert docs, f"{path.relative_to(REPO)} is empty"
        for doc in docs:
            assert isinstance(doc, dict) and "kind" in doc and "apiVersion" in doc, (
                f"{path.relative_to(REPO)}: a document without kind/apiVersion"
            )
            assert doc["kind"] in {"Kustomization", "Component"} or doc.get("metadata", {}).get("name"), (
                f"{path.relative_to(REPO)}: {doc['kind']} without metadata.name"
            )


@pytest.mark.parametrize("kustomization", kustomization_files(), ids=lambda p: str(p.parent.relative_to(K8S)))
def test_every_path_a_kustomization_names_exists(kustomization: Path) -> None:
    spec = load_yaml_documents(kustomization)[0]
    named = list(spec.get("resources", [])) + list(spec.get("components", []))
    named += [patch["path"] for patch in spec.get("patches", []) if "path" in patch]
    named += [f for generator in spec.get("configMapGenerator", []) for f in generator.get("files", [])]
    assert named, f"{kustomization} names nothing"
    for entry in named:
        target = kustomization.parent / entry
        assert target.exists(), f"{kustomization.relative_to(REPO)} names {entry}, which does not exist"
        if target.is_dir():
            assert (target / "kustomization.yaml").is_file(), f"{target} has no kustomization.yaml"


def test_base_is_namespace_agnostic() -> None:
    spec = load_yaml_documents(BASE / "kustomization.yaml")[0]
    assert "namespace" not in spec
    for obj in base_objects():
        assert "namespace" not in obj["metadata"], f"{obj['kind']}/{obj['metadata']['name']} pins a namespace"
        assert obj["kind"] != "Namespace"


def test_base_workloads_meet_every_invariant() -> None:
    problems = list(workload_problems(base_objects(), rendered=False))
    assert not problems, "\n".join(problems)


def test_base_keeps_sqlite_components_to_one_replica() -> None:
    """SQLite has one writer: auth runs once, on a ReadWriteOnce claim, and is recreated, not rolled."""
    objects = base_objects()
    auth = of_kind(objects, "Deployment")["auth"]
    assert auth["spec"]["replicas"] == 1
    assert auth["spec"]["strategy"]["type"] == "Recreate"
    assert "auth" not in {
        h["spec"]["scaleTargetRef"]["name"] for h in of_kind(objects, "HorizontalPodAutoscaler").values()
    }
    assert of_kind(objects, "PersistentVolumeClaim")["auth-data"]["spec"]["accessModes"] == ["ReadWriteOnce"]
    server = containers(auth)[0]
    assert env_value(server, "DRTECH_AUTH_DATABASE_URL") is None, "the base's default is SQLite"


def test_each_model_service_scales_on_its_own() -> None:
    objects = base_objects()
    autoscalers = {
        h["spec"]["scaleTargetRef"]["name"]: h for h in of_kind(objects, "HorizontalPodAutoscaler").values()
    }
    for task in MODEL_SERVICES:
        assert task in autoscalers, f"{task} has no HorizontalPodAutoscaler"
    assert "gateway" in autoscalers


def test_gateway_shares_its_upload_store_and_reaches_services_by_headless_dns() -> None:
    objects = base_objects()
    gateway = of_kind(objects, "Deployment")["gateway"]
    server = containers(gateway)[0]
    assert env_value(server, "DRTECH_HTTP_PORT")["value"] == str(GATEWAY_PORT)
    store = of_kind(objects, "PersistentVolumeClaim")["gateway-data"]
    assert store["spec"]["accessModes"] == ["ReadWriteMany"], "every gateway replica shares the upload store"
    mounts = {m["mountPath"]: m["name"] for m in server["volumeMounts"]}
    volumes = {v["name"]: v for v in gateway["spec"]["template"]["spec"]["volumes"]}
    configmap = load_yaml_documents(BASE / "kustomization.yaml")[0]["configMapGenerator"][0]["literals"]
    drtech_home = next(item.split("=", 1)[1] for item in configmap if item.startswith("DRTECH_HOME="))
    assert volumes[mounts[drtech_home]]["persistentVolumeClaim"]["claimName"] == "gateway-data"
    for name, port in GRPC_SERVICES.items():
        address = env_value(server, f"DRTECH_{name.upper()}_ADDR")
        assert address is not None, f"gateway has no DRTECH_{name.upper()}_ADDR"
        assert address["value"] == f"dns:///{name}.$(POD_NAMESPACE).svc.$(CLUSTER_DOMAIN):{port}"
    # $(VAR) expands only variables defined before it (env after envFrom): both must be there.
    assert env_value(server, "POD_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert any(item.startswith("CLUSTER_DOMAIN=") for item in configmap)


# Each gRPC server's connection age: the environment variable its manifest may set, the default.
CONNECTION_AGE_ENV = {
    "auth": ("DRTECH_AUTH_MAX_CONNECTION_AGE_S", AuthSettings.model_fields["max_connection_age_s"].default),
    **{task: ("DRTECH_SERVING_MAX_CONNECTION_AGE_SECONDS",
              ServingSettings.model_fields["max_connection_age_seconds"].default)
       for task in MODEL_SERVICES},
}
# docs/architecture.md: a pod the autoscaler adds gets calls within about one connection age.
MAX_CONNECTION_AGE_S = 60.0


def test_grpc_servers_close_connections_soon_enough_for_the_gateway_to_find_new_pods() -> None:
    deployments = of_kind(base_objects(), "Deployment")
    ages = {}
    for name, (variable, default) in CONNECTION_AGE_ENV.items():
        entry = env_value(containers(deployments[name])[0], variable)
        ages[name] = float(entry["value"]) if entry is not None else default
        assert ages[name] <= MAX_CONNECTION_AGE_S, (
            f"{name}: {variable}={ages[name]}: a new pod would wait that long for calls"
        )
    gateway = containers(deployments["gateway"])[0]
    entry = env_value(gateway, "DRTECH_GATEWAY_GRPC_DNS_MIN_INTERVAL_S")
    interval = float(entry["value"]) if entry is not None else GatewaySettings.model_fields[
        "grpc_dns_min_interval_s"].default
    assert interval < min(ages.values()), "the gateway would look names up less often than connections close"


def trusted_proxies(objects: list[dict[str, Any]] | tuple[dict[str, Any], ...], literals: list[str]) -> str:
    """The gateway's DRTECH_GATEWAY_FORWARDED_ALLOW_IPS, resolved from the drtech-config key it names."""
    server = containers(of_kind(objects, "Deployment")["gateway"])[0]
    # uvicorn's own FORWARDED_ALLOW_IPS is ignored: the gateway always passes its setting.
    assert env_value(server, "FORWARDED_ALLOW_IPS") is None
    entry = env_value(server, "DRTECH_GATEWAY_FORWARDED_ALLOW_IPS")
    assert entry is not None, "the gateway must say which proxies' X-Forwarded-For it trusts"
    reference = entry["valueFrom"]["configMapKeyRef"]
    assert reference["name"].startswith("drtech-config")
    values = dict(item.split("=", 1) for item in literals)
    return values[reference["key"]]


def assert_trusted_proxies_are_a_restricted_range(value: str, env: str) -> None:
    """Not everyone ("*"), and addresses or networks that GatewaySettings accepts in this
    DRTECH_ENV (production: none wider than 256 addresses)."""
    assert "*" not in value, "any pod could then choose its client IP (and dodge log-in throttling)"
    GatewaySettings(forwarded_allow_ips=value, DRTECH_ENV=env, database_url=STAND_IN_POSTGRES)


# What the operator's Secret drtech-database holds, for checking the settings the overlays give.
STAND_IN_POSTGRES = "postgresql+psycopg://drtech@postgres.example:5432/drtech"


def test_gateway_trusts_x_forwarded_for_only_from_the_ingress_controller_range() -> None:
    literals = load_yaml_documents(BASE / "kustomization.yaml")[0]["configMapGenerator"][0]["literals"]
    value = trusted_proxies(base_objects(), literals)
    assert value == "10.244.0.0/16", "the documented default (deploy/k8s/README.md)"
    assert "DRTECH_ENV=development" in literals
    assert_trusted_proxies_are_a_restricted_range(value, "development")


# One manifest mistake each, and the words the invariant checks must report it with.
BREAKAGES = {
    "ClusterIP Service for a model service": (
        lambda objs: of_kind(objs, "Service")["bone"]["spec"].pop("clusterIP"),
        "headless",
    ),
    "HTTP probe on a gRPC service": (
        lambda objs: containers(of_kind(objs, "Deployment")["skin"])[0].update(
            readinessProbe={"httpGet": {"path": "/", "port": 50053}}
        ),
        "native grpc probe",
    ),
    "writable root filesystem": (
        lambda objs: containers(of_kind(objs, "Deployment")["auth"])[0]["securityContext"].update(
            readOnlyRootFilesystem=False
        ),
        "read-only",
    ),
    "misspelt setting": (
        lambda objs: containers(of_kind(objs, "Deployment")["pneumonia"])[0]["env"].append(
            {"name": "DRTECH_SERVING_HOSTNAME", "value": "0.0.0.0"}
        ),
        "read by no setting",
    ),
    "command instead of args": (
        lambda objs: containers(of_kind(objs, "Deployment")["auth"])[0].update(
            command=["python", "-m", "services.auth"]
        ),
        "drops the image's tini entrypoint",
    ),
    "port not named grpc": (
        lambda objs: containers(of_kind(objs, "Deployment")["bone"])[0]["ports"][0].update(name="rpc"),
        "must expose exactly the ports",
    ),
    "probe on the busy main port": (
        lambda objs: containers(of_kind(objs, "Deployment")["skin"])[0]["readinessProbe"]["grpc"].update(port=50053),
        "readinessProbe must be a native grpc probe on port 50060",
    ),
    "health port not set": (
        lambda objs: containers(of_kind(objs, "Deployment")["router"])[0]["env"].__setitem__(
            slice(None), [item for item in containers(of_kind(objs, "Deployment")["router"])[0]["env"]
                          if item["name"] != "DRTECH_SERVING_HEALTH_PORT"]),
        "DRTECH_SERVING_HEALTH_PORT must be 50060",
    ),
    "no memory limit": (
        lambda objs: containers(of_kind(objs, "Deployment")["gateway"])[0]["resources"]["limits"].pop(
            "memory"
        ),
        "limits.memory",
    ),
    "SIGKILL before the drain ends": (
        lambda objs: of_kind(objs, "Deployment")["auth"]["spec"]["template"]["spec"].update(
            terminationGracePeriodSeconds=10
        ),
        "must exceed preStop + drain",
    ),
    "gateway internal port open to anyone": (
        lambda objs: of_kind(objs, "NetworkPolicy")["gateway-http"]["spec"]["ingress"][1].pop("from"),
        "opens its internal port",
    ),
    "gateway readiness on the public port": (
        lambda objs: containers(of_kind(objs, "Deployment")["gateway"])[0]["readinessProbe"]["httpGet"].update(
            port="http"
        ),
        "readiness the port named internal",
    ),
    "gateway readiness on every model service": (
        lambda objs: containers(of_kind(objs, "Deployment")["gateway"])[0]["readinessProbe"]["httpGet"].update(
            path="/readyz"
        ),
        "/readyz/gateway (readiness)",
    ),
    "model service open to every pod": (
        lambda objs: of_kind(objs, "NetworkPolicy")["bone-from-gateway"]["spec"]["ingress"][0].pop("from"),
        "more than the gateway",
    ),
    "nginx settings on a cluster's default Ingress class": (
        lambda objs: of_kind(objs, "Ingress")["gateway"]["spec"].pop("ingressClassName"),
        "ingressClassName must be nginx",
    ),
}


@pytest.mark.parametrize("mistake", BREAKAGES)
def test_invariant_checks_catch_a_broken_manifest(mistake: str) -> None:
    """The checks can fail: break one thing in a copy of the base and see it reported."""
    breakage, expected = BREAKAGES[mistake]
    objects = base_objects()
    breakage(objects)
    problems = list(workload_problems(objects, rendered=False))
    assert any(expected in problem for problem in problems), f"{mistake} went unnoticed: {problems}"


def test_image_definition_installs_serving_extras_without_tensorflow() -> None:
    dockerfile = (REPO / "deploy" / "docker" / "Dockerfile").read_text(encoding="utf-8")
    # The base image by digest (a tag alone moves), and every stage built on it.
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", dockerfile, re.MULTILINE)
    assert base and re.fullmatch(rf"python:3\.11-slim(-\w+)?@{DIGEST}", base.group(1)), (
        "PYTHON_IMAGE must be python:3.11-slim...@sha256:<64 hex digits>"
    )
    assert set(re.findall(r"^FROM (\S+)", dockerfile, re.MULTILINE)) == {"${PYTHON_IMAGE}"}
    # Python packages from the hashed locks only: the serving profile (or its gpu twin), then the
    # project itself without resolving anything.
    assert "pip install --require-hashes -r requirements/build.txt" in dockerfile
    assert re.search(r"cpu\) lock=requirements/run\.txt", dockerfile)
    assert re.search(r"gpu\) lock=requirements/gpu\.txt", dockerfile)
    assert 'pip install --require-hashes -r "$lock"' in dockerfile
    assert "pip install --no-deps --no-build-isolation ." in dockerfile
    assert not re.search(r"pip install (?!--require-hashes|--no-deps)", dockerfile), (
        "every pip install in the image is hash-checked or resolves nothing"
    )
    assert "grpc_tools.protoc" in dockerfile, "the image generates the gRPC code at build time"
    assert re.search(r"^USER 10001", dockerfile, re.MULTILINE), (
        "the image runs as the non-root uid the pods use"
    )
    assert "tensorflow" not in dockerfile.lower().replace("no tensorflow", "")
    # The pods pass only args, so this entrypoint is what forwards SIGTERM to the service.
    assert re.search(r'^ENTRYPOINT \["/usr/bin/tini", "--"\]', dockerfile, re.MULTILINE)
    exposed = set(re.search(r"^EXPOSE (.+)$", dockerfile, re.MULTILINE).group(1).split())
    assert exposed == {str(GATEWAY_PORT), str(GATEWAY_INTERNAL_PORT), *(str(port) for port in MODEL_SERVICES.values()), "50051"}
    ignored = (REPO / ".dockerignore").read_text(encoding="utf-8").split()
    for path in (".venv", "var", "training", "tests"):
        assert path in ignored, f".dockerignore must exclude {path}"
    assert not any(p.startswith("services") for p in ignored), (
        "the shipped models must stay in the build context"
    )
    base_images = load_yaml_documents(BASE / "kustomization.yaml")[0]["images"]
    assert base_images == [{"name": "drtech", "newTag": VERSION}], "the base image tag is the project version"
    # The uid the pods declare is the image's.
    for deployment in of_kind(base_objects(), "Deployment").values():
        assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 10001


# ------------------------------------------------------------------------------------------------
# Rendered overlays (need a Kustomize renderer)


@needs_renderer
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_meets_every_invariant(overlay: str) -> None:
    objects = render(f"overlays/{overlay}")
    problems = list(workload_problems(objects, rendered=True))
    assert not problems, "\n".join(problems)
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == NAMESPACES[overlay], (
                f"{obj['kind']}/{obj['metadata']['name']} is not in namespace {NAMESPACES[overlay]}"
            )
    namespace = of_kind(objects, "Namespace")[NAMESPACES[overlay]]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@needs_renderer
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_sqlite_components_never_run_more_than_one_replica(overlay: str) -> None:
    """Auth and the gateway may scale out only when their database URL comes from a Secret."""
    objects = render(f"overlays/{overlay}")
    autoscalers = {
        h["spec"]["scaleTargetRef"]["name"]: h for h in of_kind(objects, "HorizontalPodAutoscaler").values()
    }
    for name, variable in (("auth", "DRTECH_AUTH_DATABASE_URL"), ("gateway", "DRTECH_GATEWAY_DATABASE_URL")):
        deployment = of_kind(objects, "Deployment")[name]
        url = env_value(containers(deployment)[0], variable)
        if url is not None:
            assert "secretKeyRef" in url.get("valueFrom", {}), (
                f"{overlay}: {variable} must come from a Secret"
            )
            continue
        most = (
            autoscalers[name]["spec"]["maxReplicas"]
            if name in autoscalers
            else deployment["spec"].get("replicas", 1)
        )
        assert most == 1, f"{overlay}: {name} uses SQLite but may run {most} replicas"


@needs_renderer
def test_dev_overlay_runs_everything_once_on_sqlite() -> None:
    objects = render("overlays/dev")
    assert not of_kind(objects, "HorizontalPodAutoscaler")
    for name, deployment in of_kind(objects, "Deployment").items():
        assert deployment["spec"]["replicas"] == 1, name
        for variable in ("DRTECH_AUTH_DATABASE_URL", "DRTECH_GATEWAY_DATABASE_URL"):
            assert env_value(containers(deployment)[0], variable) is None
    assert set(of_kind(objects, "PersistentVolumeClaim")) == {"auth-data", "gateway-data"}
    assert of_kind(objects, "ConfigMap")  # the generated drtech-config, hash-suffixed
    config = next(iter(of_kind(objects, "ConfigMap").values()))["data"]
    assert config["DRTECH_ENV"] == "development"


@needs_renderer
def test_production_overlay_uses_postgresql_from_a_secret_and_several_replicas() -> None:
    objects = render("overlays/production")
    config = next(iter(of_kind(objects, "ConfigMap").values()))["data"]
    assert config["DRTECH_ENV"] == "production"
    deployments = of_kind(objects, "Deployment")
    for name, variable in (("auth", "DRTECH_AUTH_DATABASE_URL"), ("gateway", "DRTECH_GATEWAY_DATABASE_URL")):
        url = env_value(containers(deployments[name])[0], variable)
        assert url is not None, f"production {name} has no {variable}"
        assert url["valueFrom"]["secretKeyRef"]["name"] == "drtech-database"
    assert deployments["auth"]["spec"]["replicas"] >= 2
    assert deployments["auth"]["spec"]["strategy"]["type"] == "RollingUpdate"
    assert "auth-data" not in of_kind(objects, "PersistentVolumeClaim"), (
        "auth keeps no SQLite file in production"
    )
    for hpa in of_kind(objects, "HorizontalPodAutoscaler").values():
        assert hpa["spec"]["minReplicas"] >= 2, hpa["metadata"]["name"]
    ingress = of_kind(objects, "Ingress")["gateway"]
    assert ingress["spec"]["tls"][0]["secretName"] == "drtech-tls"
    for deployment in deployments.values():
        assert re.fullmatch(rf"registry\.example\.com/drtech:{re.escape(VERSION)}@{DIGEST}",
                            containers(deployment)[0]["image"])


def cpu_cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


@needs_renderer
def test_the_dev_overlay_fits_a_two_cpu_laptop_cluster() -> None:
    """minikube's default is 2 CPUs, of which its control plane requests ~0.75: every pod of the
    dev overlay must schedule in the rest."""
    objects = render("overlays/dev")
    requested = sum(
        cpu_cores(container["resources"]["requests"]["cpu"])
        for deployment in of_kind(objects, "Deployment").values()
        for container in containers(deployment)
    )
    assert requested <= 1.2, f"the dev overlay requests {requested:.2f} CPUs"


@needs_renderer
def test_gpu_overlay_puts_only_the_three_diagnosis_services_on_gpus_with_cuda() -> None:
    objects = render("overlays/gpu")
    on_gpu = {"bone", "skin", "pneumonia"}          # not the router: a small model, once per auto upload
    gpu_autoscalers = {name for name, hpa in of_kind(objects, "HorizontalPodAutoscaler").items()
                       if hpa["spec"]["maxReplicas"] == 4}
    assert gpu_autoscalers == on_gpu, "one GPU per pod: only the GPU services' autoscalers are capped at 4"
    for name, deployment in of_kind(objects, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        server = containers(deployment)[0]
        limits = server["resources"]["limits"]
        if name not in on_gpu:
            assert "nvidia.com/gpu" not in limits and "nodeSelector" not in pod, f"{name} needs no GPU"
            continue
        assert limits["nvidia.com/gpu"] == 1
        # The GPU limit places the pod; a feature-discovery label would strand it on stock clusters.
        assert "nodeSelector" not in pod
        assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}, (
            "a surge pod needs a GPU a full pool does not have"
        )
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        providers = env_value(server, "DRTECH_SERVING_PROVIDERS")
        assert providers is not None and providers["value"].split(",")[0] == "CUDAExecutionProvider"
        assert re.fullmatch(rf"registry\.example\.com/drtech:{re.escape(VERSION)}-gpu@{DIGEST}",
                            server["image"]), "CUDA needs the gpu image variant"
    # Still production underneath.
    config = next(iter(of_kind(objects, "ConfigMap").values()))["data"]
    assert config["DRTECH_ENV"] == "production"


@pytest.mark.parametrize("overlay", RELEASED_OVERLAYS)
def test_released_overlays_name_every_image_by_digest(overlay: str) -> None:
    """A tag can be pushed again; a digest names one image. Kustomize keeps both (name:tag@digest)."""
    images = load_yaml_documents(K8S / "overlays" / overlay / "kustomization.yaml")[0]["images"]
    assert images, f"{overlay} maps no image"
    for entry in images:
        assert re.fullmatch(DIGEST, str(entry.get("digest", ""))), (
            f"{overlay}: image {entry['name']} has no digest: kustomize edit set image "
            f"{entry['name']}=REGISTRY/drtech:TAG@sha256:... (deploy/k8s/README.md)"
        )


@needs_renderer
@pytest.mark.parametrize("overlay", RELEASED_OVERLAYS)
def test_rendered_released_overlays_pull_every_container_by_digest(overlay: str) -> None:
    for name, deployment in of_kind(render(f"overlays/{overlay}"), "Deployment").items():
        for container in containers(deployment):
            assert re.search(rf"^[^@]+:[\w.-]+@{DIGEST}$", container["image"]), (
                f"{overlay}: {name}/{container['name']} runs {container['image']}, not tag@digest"
            )


@needs_renderer
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_gateway_trusts_only_a_restricted_proxy_range(overlay: str) -> None:
    objects = render(f"overlays/{overlay}")
    configmap = next(
        obj for obj in objects if obj["kind"] == "ConfigMap" and obj["metadata"]["name"].startswith("drtech-config")
    )
    literals = [f"{key}={value}" for key, value in configmap["data"].items()]
    assert_trusted_proxies_are_a_restricted_range(trusted_proxies(objects, literals), configmap["data"]["DRTECH_ENV"])


@needs_renderer
@pytest.mark.parametrize("overlay", ["production", "gpu"])
def test_production_overlays_pass_what_production_refuses(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway and auth would start: every setting they read from the rendered manifests (the
    config map, their literal env entries; the Secret's URL as a PostgreSQL stand-in) passes
    DRTECH_ENV=production's refusals (services/core/production.py)."""
    objects = render(f"overlays/{overlay}")
    config = next(iter(of_kind(objects, "ConfigMap").values()))["data"]
    assert config["DRTECH_ENV"] == "production"
    for name, settings_class in (("gateway", GatewaySettings), ("auth", AuthSettings)):
        for variable in list(os.environ):
            if variable.startswith("DRTECH_"):
                monkeypatch.delenv(variable)
        server = containers(of_kind(objects, "Deployment")[name])[0]
        environment = dict(config)
        for entry in server.get("env", []):
            if "value" in entry:
                environment[entry["name"]] = entry["value"]
            elif "configMapKeyRef" in entry.get("valueFrom", {}):
                environment[entry["name"]] = config[entry["valueFrom"]["configMapKeyRef"]["key"]]
            elif entry["valueFrom"].get("secretKeyRef", {}).get("name") == "drtech-database":
                environment[entry["name"]] = STAND_IN_POSTGRES
        for variable, value in environment.items():
            monkeypatch.setenv(variable, value)
        settings = settings_class()
        assert settings.database_url == STAND_IN_POSTGRES, name
        if isinstance(settings, GatewaySettings):
            assert settings.cookie_secure is True


@needs_renderer
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_objects_match_the_kubernetes_schema(overlay: str) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate (dev extra) is not installed"
    )
    from kubernetes_validate.utils import all_versions

    # The oldest schema the package ships that is at least ours: each release keeps ~13 versions
    # and drops the oldest, and asking for a dropped one is an error of its own.
    def parsed(version: str) -> tuple[int, ...]:
        return tuple(int(part) for part in version.split("."))

    schema = min((v for v in all_versions() if parsed(v) >= parsed(MIN_KUBERNETES)), key=parsed)
    for obj in render(f"overlays/{overlay}"):
        try:
            kubernetes_validate.validate(obj, schema, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(
                f"{overlay}: {obj['kind']}/{obj['metadata']['name']} is invalid for "
                f"Kubernetes {MIN_KUBERNETES}: {error.message} at {list(error.path)}"
            )
