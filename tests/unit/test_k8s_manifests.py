"""deploy/k8s: the Kustomize base and overlays run Dr.Tech the way DESIGN.md (7, 8) and
docs/architecture.md say.

Three layers of checks, so a broken manifest fails CI:
- here (the unit tier, in process): every YAML file parses, every path a kustomization names
  exists, and the base's objects (plain YAML, read with pyyaml, each model folder expanded from the
  model-service component) meet the workload invariants below;
- rendered (tests/integration/test_k8s_overlays.py: Kustomize runs as a process): every overlay is
  rendered and the same invariants are checked on what would be applied, plus each overlay's own
  promises and the Kubernetes OpenAPI schema;
- policy (the same file): checkov on the rendered production and gpu overlays.

No cluster is needed: nothing here talks to an API server.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from gateway.settings import GatewaySettings, model_addr_variable
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
# Read outside the settings classes (services/common/logs.py).
SHARED_ENV = {"DRTECH_LOG_LEVEL"}
# How long each component drains on SIGTERM, by the environment variable its manifest sets.
GRACE_ENV = {
    "auth": "DRTECH_AUTH_GRACE_S",
    **{task: "DRTECH_SERVING_GRACE_SECONDS" for task in MODEL_SERVICES},
}
# Secrets the operator creates (deploy/k8s/README.md); never committed.
EXTERNAL_SECRETS = {"drtech-database", "drtech-database-migrator", "drtech-object-store", "drtech-tls"}
# Images are tagged with the project's version.
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
MIN_KUBERNETES = "1.27.0"  # native gRPC probes are GA from 1.27
# The overlays that ship to a cluster pull by digest (deploy/k8s/README.md, "Pin the image").
RELEASED_OVERLAYS = ("production", "gpu")
DIGEST = r"sha256:[0-9a-f]{64}"
TARGET_KUBERNETES = "1.33.0"  # the version the overlays are validated against (deploy/k8s/README.md)
# What the operator labels the edge proxies' namespace with (deploy/k8s/README.md, "Edge").
EDGE_NAMESPACE_LABEL = {"drtech/edge": "true"}
MONITORING_PEER = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
}
# The model services on GPUs in the gpu overlay (the router stays on CPU nodes).
ON_GPU = {"bone", "skin", "pneumonia"}


# ------------------------------------------------------------------------------------------------
# Reading manifests


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc is not None]


def kustomization_files() -> list[Path]:
    return sorted(K8S.rglob("kustomization.yaml"))


def base_objects() -> list[dict[str, Any]]:
    """The base's objects as written (before Kustomize), in the order its kustomization lists them:
    files as they are, each model folder expanded from the model-service component."""
    kustomization = load_yaml_documents(BASE / "kustomization.yaml")[0]
    objects = []
    for resource in kustomization["resources"]:
        path = BASE / resource
        objects += model_service_objects(path) if path.is_dir() else load_yaml_documents(path)
    # The one transformer the base uses: common labels on every object and pod template.
    for entry in kustomization.get("labels", []):
        for obj in objects:
            obj["metadata"].setdefault("labels", {}).update(entry["pairs"])
            if entry.get("includeTemplates") and "template" in obj.get("spec", {}):
                obj["spec"]["template"]["metadata"].setdefault("labels", {}).update(entry["pairs"])
    return objects


def model_service_objects(folder: Path) -> list[dict[str, Any]]:
    """A model folder of the base (base/models/<name>/) as Kustomize builds it: the model-service
    component's objects with the replacements it lists filled from the folder's values (model.yaml).
    tests/integration/test_k8s_overlays.py checks that this reading matches Kustomize's own."""
    kustomization = load_yaml_documents(folder / "kustomization.yaml")[0]
    assert set(kustomization) <= {"apiVersion", "kind", "resources", "components"}, (
        f"{folder}: a model folder holds its values and the component, nothing this reading would miss"
    )
    [component] = [(folder / path).resolve() for path in kustomization["components"]]
    [values] = [doc for path in kustomization["resources"] for doc in load_yaml_documents(folder / path)]
    spec = load_yaml_documents(component / "kustomization.yaml")[0]
    objects = [doc for path in spec["resources"] for doc in load_yaml_documents(component / path)]
    for replacement in spec["replacements"]:
        source = replacement["source"]
        assert source["kind"] == values["kind"], f"{component}: a source other than the model's values"
        value = field(values, source["fieldPath"])
        for target in replacement["targets"]:
            options = target.get("options", {})
            assert set(target["select"]) == {"kind"} and set(options) <= {"delimiter", "index"}, (
                f"{component}: a replacement this reading does not understand: {target}"
            )
            for obj in (obj for obj in objects if obj["kind"] == target["select"]["kind"]):
                for path in target["fieldPaths"]:
                    replace_field(obj, path, value, options)
    return objects


def field_path(path: str) -> list[str]:
    """Kustomize's field path: dot-separated, with [key=value] list items and [dotted.keys] whole."""
    return re.findall(r"\[[^\]]*\]|[^.]+", path)


def step(node: Any, segment: str) -> tuple[Any, Any]:
    """The key (or list index) a path segment names in node, and what it holds."""
    if segment.startswith("[") and "=" in segment:
        key, wanted = segment[1:-1].split("=", 1)
        index = next(i for i, item in enumerate(node) if str(item.get(key)) == wanted)
        return index, node[index]
    key: Any = segment.strip("[]")
    if isinstance(node, list):
        key = int(key)
    return key, node[key]


def field(obj: dict[str, Any], path: str) -> Any:
    node: Any = obj
    for segment in field_path(path):
        node = step(node, segment)[1]
    return node


def replace_field(obj: dict[str, Any], path: str, value: str, options: dict[str, Any]) -> None:
    """Kustomize's replacement of one field: the whole value (keeping the field's type, so a port
    stays a number), or one part of it between delimiters."""
    *parents, last = field_path(path)
    node: Any = obj
    for segment in parents:
        node = step(node, segment)[1]
    key, current = step(node, last)
    if "delimiter" in options:
        parts = current.split(options["delimiter"])
        parts[options.get("index", 0)] = value
        node[key] = options["delimiter"].join(parts)
    else:
        node[key] = type(current)(value)


def edge_objects() -> list[dict[str, Any]]:
    """Both edge components' objects as written: the Gateway API one and the Ingress."""
    objects = []
    for component in ("gateway-api", "ingress"):
        folder = K8S / "components" / component
        for resource in load_yaml_documents(folder / "kustomization.yaml")[0]["resources"]:
            objects += load_yaml_documents(folder / resource)
    return objects


def base_generated_configmaps() -> set[str]:
    kustomization = load_yaml_documents(BASE / "kustomization.yaml")[0]
    return {generator["name"] for generator in kustomization.get("configMapGenerator", [])}


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


def selects_pods(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A full label selector (matchLabels and matchExpressions with In, NotIn, Exists)."""
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return selects(selector.get("matchLabels", {}), labels)


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

    yield from edge_problems(objects, rendered)


# The edge's path matches, as (type, value) with Gateway API's types (an Ingress's Prefix is PathPrefix).
PathMatch = tuple[str, str]


def route_matches(objects: list[dict[str, Any]] | tuple[dict[str, Any], ...]) -> Iterator[tuple[str, PathMatch]]:
    """Every path match of every HTTPRoute rule and Ingress path that sends traffic to a backend."""
    for name, route in of_kind(objects, "HTTPRoute").items():
        for rule in route["spec"].get("rules", []):
            if rule.get("backendRefs"):
                for match in rule.get("matches", [{"path": {"type": "PathPrefix", "value": "/"}}]):
                    path = match.get("path", {"type": "PathPrefix", "value": "/"})
                    yield f"HTTPRoute {name}", (path.get("type", "PathPrefix"), path["value"])
    for name, ingress in of_kind(objects, "Ingress").items():
        for rule in ingress["spec"].get("rules", []):
            for path in rule["http"]["paths"]:
                kind = {"Exact": "Exact", "Prefix": "PathPrefix"}.get(path["pathType"], path["pathType"])
                yield f"Ingress {name}", (kind, path["path"])


def path_matches(match: PathMatch, path: str) -> bool:
    """Gateway API / Ingress semantics: Exact is the whole path, PathPrefix whole segments."""
    kind, value = match
    if kind == "Exact":
        return path == value
    if kind == "PathPrefix":
        prefix = value.rstrip("/")
        return path == prefix or path.startswith(prefix + "/") or value == "/"
    return False  # ImplementationSpecific or a regular expression: never allowed here


def public_paths() -> set[str]:
    """One concrete path per route the gateway's public app serves (gateway/app.py): its routers,
    the /static mount, the schema and its interactive docs (gateway.app.install_api_docs); path
    parameters filled in."""
    from gateway import accounts, diagnoses, model_files, operations, previews, web

    paths = {"/static/app.css", "/openapi.json", "/docs"}
    for router in (accounts.router, diagnoses.router, operations.router, model_files.router,
                   previews.router, web.router):
        paths.update(re.sub(r"\{[^}]+\}", "x1", route.path) for route in router.routes)
    return paths


def internal_only_paths() -> set[str]:
    """Served only on the internal port (metrics, detailed readiness): never routed."""
    from gateway import operations

    return {route.path for route in operations.internal_router.routes} - {
        route.path for route in operations.router.routes
    }


def edge_problems(objects: list[dict[str, Any]] | tuple[dict[str, Any], ...], rendered: bool) -> Iterator[str]:
    """The edge (HTTPRoutes, Ingresses) sends the public paths, and only those, to the gateway's
    http port; an Ingress names its class (no annotations of a particular controller)."""
    matches = list(route_matches(objects))
    for where, match in matches:
        if match[0] not in {"Exact", "PathPrefix"}:
            yield f"{where}: path match {match} is neither Exact nor a prefix"
        if not any(path_matches(match, path) for path in public_paths()):
            yield f"{where}: routes {match[1]}, which the gateway does not serve publicly"
        for path in internal_only_paths():
            if path_matches(match, path):
                yield f"{where}: routes {path}, which is internal (metrics, detailed readiness)"
    edges = {where for where, _ in matches}
    for where in edges:
        mine = [match for other, match in matches if other == where]
        for path in sorted(public_paths()):
            if not any(path_matches(match, path) for match in mine):
                yield f"{where}: does not route the public path {path}"
    gateways = of_kind(objects, "Gateway")
    for name, route in of_kind(objects, "HTTPRoute").items():
        for parent in route["spec"]["parentRefs"]:
            if rendered and parent["name"] not in gateways:
                yield f"HTTPRoute {name}: attaches to Gateway {parent['name']}, which is not defined"
        for rule in route["spec"].get("rules", []):
            for backend in rule.get("backendRefs", []):
                if backend.get("kind", "Service") != "Service" or backend["name"] != "gateway" or backend.get("port") != 80:
                    yield f"HTTPRoute {name}: must send traffic to Service gateway, port 80 (http)"
            if rule.get("backendRefs") and "request" not in rule.get("timeouts", {}):
                yield f"HTTPRoute {name}: a rule without a request timeout (a diagnosis takes up to 30 s)"
    for name, gateway in gateways.items():
        if rendered and gateway["spec"]["gatewayClassName"] == "SET-BY-OVERLAY":
            yield f"Gateway {name}: the overlay did not set its gatewayClassName"
        for listener in gateway["spec"]["listeners"]:
            if listener["protocol"] == "HTTPS" and listener.get("tls", {}).get("mode") != "Terminate":
                yield f"Gateway {name}: HTTPS listener {listener['name']} does not terminate TLS"
    for name, ingress in of_kind(objects, "Ingress").items():
        if rendered and not ingress["spec"].get("ingressClassName"):
            yield f"Ingress {name}: the overlay must set spec.ingressClassName (else the cluster's default class)"
        if any("ingress.kubernetes.io/" in key for key in ingress["metadata"].get("annotations", {})):
            yield f"Ingress {name}: carries one controller's annotations; set them in the overlay for yours"
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
    if SETTINGS[name] is GatewaySettings:   # each model service's address, read beside DRTECH_MODEL_ADDRS
        known |= {model_addr_variable(task) for task in MODEL_SERVICES}
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
        metrics = env_value(container, "DRTECH_SERVING_METRICS_PORT")
        if name in MODEL_SERVICES and metrics is not None:
            # Prometheus /metrics (the gpu component: KEDA's signal), on the port the setting names.
            expected = {**expected, "metrics": int(metrics["value"])}
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
            and selects_pods(p["spec"]["podSelector"], labels)
        ]
        if not any(not p["spec"].get("ingress") for p in applying):
            yield f"{name}: no default-deny NetworkPolicy selects its pods"
        rules = [rule for p in applying for rule in p["spec"].get("ingress", [])]
        if name == "gateway":
            if not any("http" in [port.get("port") for port in rule.get("ports", [])] for rule in rules):
                yield "gateway: no NetworkPolicy admits traffic to its http port"
            for rule in rules:
                opened = [port.get("port") for port in rule.get("ports", [])]
                peers = rule.get("from", [])
                # No `ports` opens every port, the internal one included.
                if (not opened or "internal" in opened or GATEWAY_INTERNAL_PORT in opened) and peers != [MONITORING_PEER]:
                    yield "gateway: a NetworkPolicy opens its internal port (metrics, detailed readiness) to more than Prometheus"
                if "http" in opened or GATEWAY_PORT in opened or not opened:
                    edge_only = peers and all(
                        set(peer) == {"namespaceSelector"}
                        and peer["namespaceSelector"].get("matchLabels") == EDGE_NAMESPACE_LABEL
                        for peer in peers
                    )
                    if not edge_only:
                        yield (f"gateway: a NetworkPolicy admits its http port from more than the edge's "
                               f"namespace (labelled {EDGE_NAMESPACE_LABEL}): {peers}")
            continue
        if not rules:
            yield f"{name}: no NetworkPolicy admits the gateway"
        for rule in rules:
            if [port.get("port") for port in rule.get("ports", [])] == ["metrics"]:
                # The metrics port (gpu component): Prometheus only.
                if rule.get("from") != [MONITORING_PEER]:
                    yield f"{name}: its metrics port is open to more than Prometheus: {rule.get('from')}"
                continue
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
    # The checkov waiver list is configuration of a check, not a manifest.
    files = sorted(path for path in K8S.rglob("*.yaml") if path.name != "checkov-waivers.yaml")
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


def test_base_workloads_and_both_edges_meet_every_invariant() -> None:
    problems = list(workload_problems(base_objects() + edge_objects(), rendered=False))
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


def test_base_gateway_keeps_its_state_on_one_volume_any_storage_class_offers() -> None:
    """The base (one replica, SQLite, local uploads) asks for ReadWriteOnce, which every default
    storage class gives; a ReadWriteMany claim stays Pending on most managed clusters."""
    objects = base_objects()
    gateway = of_kind(objects, "Deployment")["gateway"]
    server = containers(gateway)[0]
    assert env_value(server, "DRTECH_HTTP_PORT")["value"] == str(GATEWAY_PORT)
    store = of_kind(objects, "PersistentVolumeClaim")["gateway-data"]
    assert store["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert gateway["spec"]["strategy"]["type"] == "Recreate", "a second pod could not attach the volume"
    mounts = {m["mountPath"]: m["name"] for m in server["volumeMounts"]}
    volumes = {v["name"]: v for v in gateway["spec"]["template"]["spec"]["volumes"]}
    configmap = load_yaml_documents(BASE / "kustomization.yaml")[0]["configMapGenerator"][0]["literals"]
    drtech_home = next(item.split("=", 1)[1] for item in configmap if item.startswith("DRTECH_HOME="))
    assert volumes[mounts[drtech_home]]["persistentVolumeClaim"]["claimName"] == "gateway-data"


def test_gateway_reaches_services_by_headless_dns() -> None:
    objects = base_objects()
    server = containers(of_kind(objects, "Deployment")["gateway"])[0]
    configmap = load_yaml_documents(BASE / "kustomization.yaml")[0]["configMapGenerator"][0]["literals"]
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
    GatewaySettings(forwarded_allow_ips=value, DRTECH_ENV=env, database_url=STAND_IN_POSTGRES,
                    blob_store="s3", s3_bucket="stand-in")


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
    "gateway's public port open to every namespace": (
        lambda objs: of_kind(objs, "NetworkPolicy")["gateway-http"]["spec"]["ingress"][0].pop("from"),
        "from more than the edge's namespace",
    ),
    "metrics routed to the internet": (
        lambda objs: of_kind(objs, "HTTPRoute")["gateway"]["spec"]["rules"][1]["matches"].append(
            {"path": {"type": "PathPrefix", "value": "/metrics"}}
        ),
        "which is internal",
    ),
    "detailed readiness routed by a prefix": (
        lambda objs: of_kind(objs, "Ingress")["gateway"]["spec"]["rules"][0]["http"]["paths"][-1].update(
            pathType="Prefix"
        ),
        "routes /readyz/gateway",
    ),
    "a public path left out": (
        lambda objs: of_kind(objs, "HTTPRoute")["gateway"]["spec"]["rules"][2]["matches"].pop(1),
        "does not route the public path /static/",
    ),
    "one controller's annotations on the Ingress": (
        lambda objs: of_kind(objs, "Ingress")["gateway"]["metadata"].update(
            annotations={"nginx.ingress.kubernetes.io/proxy-body-size": "21m"}
        ),
        "one controller's annotations",
    ),
    "route to the wrong port": (
        lambda objs: of_kind(objs, "HTTPRoute")["gateway"]["spec"]["rules"][0]["backendRefs"][0].update(port=8001),
        "Service gateway, port 80",
    ),
}


@pytest.mark.parametrize("mistake", BREAKAGES)
def test_invariant_checks_catch_a_broken_manifest(mistake: str) -> None:
    """The checks can fail: break one thing in a copy of the base and see it reported."""
    breakage, expected = BREAKAGES[mistake]
    objects = base_objects() + edge_objects()
    assert not list(workload_problems(objects, rendered=False)), "the unbroken copy must pass"
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


def cpu_cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def metric_names() -> set[str]:
    """The model services' Prometheus metric names (services/core/metrics.py)."""
    from services.core import metrics

    return {value._name for value in vars(metrics).values() if hasattr(value, "_name")}


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


def test_time_slicing_config_shares_each_gpu_between_several_model_pods() -> None:
    """The documented GPU-sharing option (NVIDIA device plugin configuration): each GPU advertised
    as several nvidia.com/gpu, so the manifests' limit of 1 is one slice."""
    (configmap,) = load_yaml_documents(K8S / "cluster" / "nvidia-time-slicing.yaml")
    assert configmap["kind"] == "ConfigMap"
    for name, text in configmap["data"].items():
        config = yaml.safe_load(text)
        assert config["version"] == "v1", name
        (resource,) = config["sharing"]["timeSlicing"]["resources"]
        assert resource["name"] == "nvidia.com/gpu" and resource["replicas"] >= 2
        assert config["sharing"]["timeSlicing"].get("renameByDefault") is False, (
            "renamed, the slices would be nvidia.com/gpu.shared and the pods' limit would not match"
        )


def pod_env(container: dict[str, Any], name: str, default: int) -> int:
    entry = env_value(container, name)
    return int(entry["value"]) if entry is not None else default


def most_pods(objects: tuple[dict[str, Any], ...], name: str) -> int:
    """The most pods a Deployment runs at once: its autoscaler's maxReplicas (else its replicas),
    plus the extra pod a rolling update surges."""
    deployment = of_kind(objects, "Deployment")[name]
    hpa = of_kind(objects, "HorizontalPodAutoscaler").get(name)
    replicas = hpa["spec"]["maxReplicas"] if hpa else deployment["spec"].get("replicas", 1)
    strategy = deployment["spec"].get("strategy", {})
    surge = strategy.get("rollingUpdate", {}).get("maxSurge", "25%") if strategy.get("type") != "Recreate" else 0
    if isinstance(surge, str):   # a percentage rounds up (Kubernetes' rule)
        surge = -(-replicas * int(surge.rstrip("%")) // 100)
    return replicas + surge


# deploy/k8s/README.md, "Database connections": PostgreSQL's default max_connections, less what is
# kept for others: superuser_reserved_connections (3), the two migration Jobs (1 each), and 5 for
# operators and monitoring.
MAX_CONNECTIONS = 100
RESERVED_CONNECTIONS = 3 + 2 + 5


def test_the_connection_budget_counts_every_pod_an_autoscaler_and_a_rollout_can_make() -> None:
    """The budget test must be able to fail: a gateway allowed 30 replicas of the default pool
    (5 + 5) would need 310 connections."""
    deployment = {"kind": "Deployment", "metadata": {"name": "gateway"},
                  "spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}}
    hpa = {"kind": "HorizontalPodAutoscaler", "metadata": {"name": "gateway"}, "spec": {"maxReplicas": 30}}
    assert most_pods((deployment, hpa), "gateway") == 31
    deployment["spec"]["strategy"] = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%"}}
    assert most_pods((deployment, hpa), "gateway") == 38


MIGRATIONS = {"auth": ("services.auth.migrate", "DRTECH_AUTH"), "gateway": ("gateway.migrate", "DRTECH_GATEWAY")}


# The custom resources' structure, as far as these manifests use it, written down from the upstream
# CRDs (Gateway API v1.2 standard channel, KEDA v2 keda.sh/v1alpha1, Prometheus Operator
# monitoring.coreos.com/v1): kubernetes-validate ships core schemas only, and the CRDs themselves
# are too large to vendor here. Unknown fields fail, as kubernetes-validate's strict mode does.
def _object(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "additionalProperties": False, "properties": properties}


_STRING = {"type": "string", "minLength": 1}
_INT = {"type": "integer"}
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = _object(["name"], name=_STRING, namespace=_STRING, labels=_LABELS, annotations=_LABELS)
_DURATION = {"type": "string", "pattern": r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"}
_PATH = _object(["value"], type={"enum": ["Exact", "PathPrefix", "RegularExpression"]},
                value={"type": "string", "pattern": "^/", "maxLength": 1024})
_SELECTOR = _object(
    [], matchLabels=_LABELS,
    matchExpressions={"type": "array", "items": _object(
        ["key", "operator"], key=_STRING, operator={"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
        values={"type": "array", "items": {"type": "string"}})},
)
CUSTOM_RESOURCE_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("gateway.networking.k8s.io/v1", "Gateway"): _object(
        ["apiVersion", "kind", "metadata", "spec"], apiVersion=_STRING, kind=_STRING, metadata=_METADATA,
        spec=_object(
            ["gatewayClassName", "listeners"], gatewayClassName=_STRING,
            infrastructure=_object([], labels=_LABELS, annotations=_LABELS),
            listeners={"type": "array", "minItems": 1, "maxItems": 64, "items": _object(
                ["name", "protocol", "port"], name=_STRING, hostname=_STRING, port=_INT,
                protocol={"enum": ["HTTP", "HTTPS", "TLS", "TCP", "UDP"]},
                tls=_object([], mode={"enum": ["Terminate", "Passthrough"]},
                            certificateRefs={"type": "array", "items": _object(
                                ["name"], name=_STRING, kind={"const": "Secret"}, group={"const": ""},
                                namespace=_STRING)}),
                allowedRoutes=_object([], namespaces=_object([], **{"from": {"enum": ["All", "Same", "Selector"]},
                                                                     "selector": _SELECTOR})),
            )},
        ),
    ),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): _object(
        ["apiVersion", "kind", "metadata", "spec"], apiVersion=_STRING, kind=_STRING, metadata=_METADATA,
        spec=_object(
            ["parentRefs"],
            parentRefs={"type": "array", "minItems": 1, "maxItems": 32, "items": _object(
                ["name"], name=_STRING, namespace=_STRING, sectionName=_STRING, port=_INT)},
            hostnames={"type": "array", "maxItems": 16, "items": _STRING},
            rules={"type": "array", "maxItems": 16, "items": _object(
                [],
                matches={"type": "array", "maxItems": 8, "items": _object(
                    [], path=_PATH, method={"enum": ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"]})},
                filters={"type": "array", "items": _object(
                    ["type"], type={"enum": ["RequestRedirect", "RequestHeaderModifier", "ResponseHeaderModifier",
                                             "URLRewrite", "RequestMirror"]},
                    requestRedirect=_object([], scheme={"enum": ["http", "https"]}, hostname=_STRING, port=_INT,
                                            statusCode={"enum": [301, 302]}))},
                backendRefs={"type": "array", "items": _object(
                    ["name", "port"], name=_STRING, port=_INT, weight=_INT, kind={"const": "Service"},
                    group={"const": ""})},
                timeouts=_object([], request=_DURATION, backendRequest=_DURATION),
            )},
        ),
    ),
    ("keda.sh/v1alpha1", "ScaledObject"): _object(
        ["apiVersion", "kind", "metadata", "spec"], apiVersion=_STRING, kind=_STRING, metadata=_METADATA,
        spec=_object(
            ["scaleTargetRef", "triggers"],
            scaleTargetRef=_object(["name"], name=_STRING, kind=_STRING, apiVersion=_STRING),
            minReplicaCount=_INT, maxReplicaCount=_INT, pollingInterval=_INT, cooldownPeriod=_INT,
            fallback=_object(["failureThreshold", "replicas"], failureThreshold=_INT, replicas=_INT),
            advanced=_object([], horizontalPodAutoscalerConfig=_object(
                [], name=_STRING, behavior={"type": "object"})),
            triggers={"type": "array", "minItems": 1, "items": _object(
                ["type", "metadata"], type=_STRING, name=_STRING,
                metricType={"enum": ["AverageValue", "Value", "Utilization"]},
                # KEDA's trigger metadata is a map of strings (numbers too: "16", not 16).
                metadata={"type": "object", "additionalProperties": {"type": "string"}})},
        ),
    ),
    ("monitoring.coreos.com/v1", "PodMonitor"): _object(
        ["apiVersion", "kind", "metadata", "spec"], apiVersion=_STRING, kind=_STRING, metadata=_METADATA,
        spec=_object(
            ["selector"], selector=_SELECTOR,
            namespaceSelector=_object([], any={"type": "boolean"}, matchNames={"type": "array"}),
            podMetricsEndpoints={"type": "array", "items": _object(
                [], port=_STRING, path=_STRING, interval=_DURATION, scheme={"enum": ["http", "https"]})},
        ),
    ),
}


def kubernetes_schema_problems(objects: list[dict[str, Any]] | tuple[dict[str, Any], ...], version: str) -> Iterator[str]:
    """Core objects against Kubernetes' own schema (kubernetes-validate, strict); custom resources
    against CUSTOM_RESOURCE_SCHEMAS. A kind in neither is a problem of its own."""
    import jsonschema
    import kubernetes_validate

    for obj in objects:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        custom = CUSTOM_RESOURCE_SCHEMAS.get((obj["apiVersion"], obj["kind"]))
        if custom is not None:
            for error in jsonschema.Draft7Validator(custom).iter_errors(obj):
                yield f"{where}: {error.message} at {list(error.path)}"
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            yield f"{where}: {obj['apiVersion']} {obj['kind']} has no schema here (add one to CUSTOM_RESOURCE_SCHEMAS)"
        except kubernetes_validate.ValidationError as error:
            yield f"{where}: {error.message} at {list(error.path)}"


def test_custom_resource_checks_catch_an_unknown_field() -> None:
    """The hand-written custom-resource schemas can fail: a misspelt field or a number where KEDA
    wants a string is reported."""
    objects = edge_objects() + load_yaml_documents(K8S / "components" / "gpu" / "scaledobjects.yaml")
    assert not list(kubernetes_schema_problems(objects, TARGET_KUBERNETES))
    route = next(obj for obj in objects if obj["kind"] == "HTTPRoute")
    route["spec"]["rules"][0]["timeout"] = {"request": "60s"}
    scaled = next(obj for obj in objects if obj["kind"] == "ScaledObject")
    scaled["spec"]["triggers"][0]["metadata"]["threshold"] = 16
    problems = "\n".join(kubernetes_schema_problems(objects, TARGET_KUBERNETES))
    assert "'timeout' was unexpected" in problems
    assert "16 is not of type 'string'" in problems


