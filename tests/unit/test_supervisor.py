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


def _listening_socket():
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_a_port_already_in_use_is_named_before_anything_starts() -> None:
    """Else another server on that port (an earlier `make run`) answers the new one's health check."""
    with _listening_socket() as taken:
        port = taken.getsockname()[1]
        comps = [Component("gateway", "gateway", port, "http", "DRTECH_HTTP_PORT")]
        (problem,) = supervisor.ports_in_use(comps)
    assert f"gateway cannot use port {port}" in problem and "DRTECH_HTTP_PORT=" in problem
    assert supervisor.ports_in_use(comps) == []        # free again


def test_every_default_component_says_which_variable_moves_its_port() -> None:
    assert [c.port_env for c in supervisor.components()] == [
        "DRTECH_AUTH_PORT", "DRTECH_BONE_PORT", "DRTECH_SKIN_PORT", "DRTECH_PNEUMONIA_PORT",
        "DRTECH_ROUTER_PORT", "DRTECH_HTTP_PORT"]


def test_a_second_signal_kills_a_component_that_ignores_the_first() -> None:
    import threading

    stubborn = Component("auth", "services.auth", 1, "grpc")
    stubborn.process = subprocess.Popen(
        [sys.executable, "-c", ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                                "print('ready', flush=True); time.sleep(120)")], stdout=subprocess.PIPE)
    assert stubborn.process.stdout is not None and stubborn.process.stdout.readline() == b"ready\n"
    runner = Supervisor([stubborn], start_timeout=1, grace=120)
    threading.Timer(0.5, runner.hurry.set).start()
    started = time.monotonic()

    runner.stop_all()

    assert stubborn.process.returncode == -9
    assert time.monotonic() - started < 60          # not the 120 s grace


def test_the_gateway_says_its_port_is_in_use_instead_of_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.__main__ import main as gateway_main

    with _listening_socket() as taken:
        port = taken.getsockname()[1]
        assert gateway_main(["--host", "127.0.0.1", "--port", str(port)]) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
