"""services.supervisor (`make run`): what its children are given, and how a death while starting is reported."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from services import supervisor
from services.supervisor import Component, Supervisor


def test_children_never_inherit_a_port_every_model_service_would_bind(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """DRTECH_SERVING_HEALTH_PORT / _METRICS_PORT are one process's ports (set per pod in k8s):
    exported in the shell, all four local model services would try to bind the same one."""
    monkeypatch.setenv("DRTECH_HOME", str(tmp_path))
    monkeypatch.setenv("DRTECH_SERVING_HEALTH_PORT", "50060")
    monkeypatch.setenv("DRTECH_SERVING_METRICS_PORT", "9100")
    monkeypatch.setenv("DRTECH_SERVING_MODEL_WORKERS", "2")   # a setting every service may share
    env = supervisor._child_env(supervisor.components())
    assert "DRTECH_SERVING_HEALTH_PORT" not in env and "DRTECH_SERVING_METRICS_PORT" not in env
    assert env["DRTECH_SERVING_MODEL_WORKERS"] == "2"
    assert env["DRTECH_BONE_ADDR"] == "127.0.0.1:50052"


def test_a_component_that_dies_while_a_later_one_starts_is_named_at_once() -> None:
    """Not the full start timeout spent on a gateway that can never be ready without it."""
    dead = Component("auth", "services.auth", 1, "grpc")
    dead.process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    dead.process.wait()
    starting = Component("bone", "services.bone", 2, "grpc")
    starting.process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="auth exited with status 3 while bone was starting"):
            Supervisor([dead, starting], start_timeout=20, grace=1)._wait_healthy(starting)
        assert time.monotonic() - started < 5
    finally:
        starting.process.kill()
        starting.process.wait()
