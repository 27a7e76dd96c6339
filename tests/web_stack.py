"""The whole platform in this process, for the API, web and browser tests: auth, every model service
of the registry (services/registry.py; of another tree with `services_dir`), the gateway. The one
whole-stack fixture of the suite: the integration and e2e tests that need the platform start it here.

Everything listens on free ports. Diagnosis services use the shipped models when they exist (else a
contract-shaped stand-in, as in tests/integration/test_gateway_api.py); the router always uses its
shipped model, because its out-of-distribution output is what auto-routing relies on.
Every log record of every component is kept in `Stack.logs`, so tests can check what was logged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from gateway.settings import GatewaySettings
from gateway.testing import RunningGateway, start_gateway
from services.auth.server import start_server as start_auth
from services.auth.settings import AuthSettings
from services.core.server import RunningServer
from services.core.server import start_server as start_model
from services.core.settings import ServingSettings
from services.core.spec import TaskSpec
from services.registry import AUTO, SERVICES_DIR, diagnosis_specs, model_specs
from tests.serving_models import write_fixture_model

# exam type -> spec of every shipped model service but the router.
SPECS: dict[str, TaskSpec] = {spec.exam_type: spec for spec in diagnosis_specs().values()}


class KeptLogs(logging.Handler):
    """Keeps every formatted record (message and arguments) of every logger."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(f"{record.name} {record.getMessage()} {record.exc_text or ''}")
        except Exception:  # noqa: BLE001 - a badly formatted record is kept raw
            self.lines.append(f"{record.name} {record.msg!r} {record.args!r}")

    def text(self) -> str:
        return "\n".join(self.lines)


@dataclass
class Stack:
    home: Path
    gateway: RunningGateway
    models: dict[str, RunningServer]
    auth_addr: str
    logs: KeptLogs = field(repr=False, default_factory=KeptLogs)
    # The gateway's settings as the stack gave them (DRTECH_* names): another gateway on the same
    # backends starts from these (tests/integration/test_faults.py).
    gateway_values: dict[str, object] = field(repr=False, default_factory=dict)

    @property
    def url(self) -> str:
        return self.gateway.url

    def settings(self, home: Path, **overrides: object) -> GatewaySettings:
        """Settings for another gateway on this stack's services (under its own `home`), e.g. one
        with a model service swapped for a test's own."""
        return GatewaySettings(**{**backend_addresses(self.auth_addr, self.models), "DRTECH_HOME": home,
                                  **overrides})


def backend_addresses(auth_addr: str, models: dict[str, RunningServer]) -> dict[str, object]:
    """The gateway's backend settings for these servers (keyed by exam type)."""
    return {"DRTECH_AUTH_ADDR": auth_addr,
            "DRTECH_MODEL_ADDRS": {server.spec.task: server.target for server in models.values()}}


def serving_settings(refuse_unreadable: bool = False) -> ServingSettings:
    # Small and explicit so the suite shares the machine politely and ignores the environment.
    # The tests upload stand-in images (ramps, solid photos) that the models' gates refuse: the
    # shared stack diagnoses them; the gates' refusals have their own tests (test_gateway_api.py).
    return ServingSettings(intra_op_threads=1, worker_threads=4, warmup_runs=1, grace_seconds=0, metrics_port=0,
                           refuse_unreadable=refuse_unreadable)


def stack_auth_settings(home: Path, overrides: dict[str, object] | None = None) -> AuthSettings:
    # Cheap argon2; every account of the suite comes from 127.0.0.1, so no per-address sign-up limit.
    return AuthSettings(**{"home": home, "port": 0, "grace_s": 0, "argon2_time_cost": 1, "argon2_memory_kib": 1024,
                           "argon2_parallelism": 1, "throttle_max_sign_ups_per_ip": 1_000_000,
                           **(overrides or {})})


def model_spec(spec: TaskSpec, scratch: Path) -> TaskSpec:
    """The shipped model when it exists, else a contract-shaped stand-in model for the same labels."""
    if spec.model_path.exists() and spec.card_path.exists():
        return spec
    return write_fixture_model(spec, scratch / spec.task)


@contextmanager
def running_stack(home: Path, scratch: Path, models_dir: Path | None = None,
                  auth_settings: dict[str, object] | None = None, services_dir: Path = SERVICES_DIR,
                  **gateway_settings: object) -> Iterator[Stack]:
    """The whole platform; `auth_settings` override the auth service's (e.g. its throttles) and
    `gateway_settings` the gateway's (e.g. database_url). `services_dir`: the tree whose model
    services run (Stack.models keyed by exam type, the router's by "auto")."""
    specs = model_specs(services_dir)
    router = next((spec for spec in specs.values() if spec.exam_type == AUTO), None)
    if router is None or not router.model_path.exists():
        raise RuntimeError(f"the router model is missing under {services_dir}; run python -m training.router")
    logs = KeptLogs()
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(logs)
    root.setLevel(logging.DEBUG)
    auth = start_auth(stack_auth_settings(home, auth_settings))
    models: dict[str, RunningServer] = {}
    gateway = None
    try:
        for spec in specs.values():
            # The router always runs its shipped model: auto-routing relies on its ood_ratio output.
            model = spec if spec is router else model_spec(spec, scratch)
            models[spec.exam_type] = start_model(model, serving_settings(), port=0)
        auth_addr = f"127.0.0.1:{auth.port}"
        values: dict[str, object] = {"DRTECH_HOME": home, **backend_addresses(auth_addr, models)}
        if models_dir is not None:
            values["models_dir"] = models_dir
        values.update(gateway_settings)
        gateway = start_gateway(GatewaySettings(**values))
        yield Stack(home=home, gateway=gateway, models=models, auth_addr=auth_addr, logs=logs,
                    gateway_values=values)
    finally:
        if gateway is not None:
            gateway.stop()
        for server in models.values():
            server.stop(grace=0)
        auth.stop(0)
        root.removeHandler(logs)
        root.setLevel(previous_level)
