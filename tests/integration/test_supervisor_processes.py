"""services.supervisor (`make run`) with real child processes and real ports: a death while
starting is named, a port in use is found before anything starts, a stubborn child is killed.
The in-process parts are in tests/unit/test_supervisor.py."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from services import supervisor
from services.supervisor import Component, Supervisor
from tests.unit.test_supervisor import (
    Recording,
)


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


def test_a_restarted_component_that_never_gets_healthy_is_killed_and_tried_again() -> None:
    router = Component("router", "services.router", 1, "grpc")
    runner = Recording([router])
    router.process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    router.started_at = 0.0
    try:
        runner.tend(router, now=50.0)
        assert router.process.poll() is None
        runner.tend(router, now=101.0)        # past start_timeout (100 s)
        assert router.process.returncode == -9
        runner.tend(router, now=102.0)
        assert router.restart_at == 103.0
    finally:
        if router.process.poll() is None:
            router.process.kill()
            router.process.wait()


def test_the_gateways_internal_port_is_checked_and_passed_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRTECH_GATEWAY_INTERNAL_PORT", "9001")
    gateway = supervisor.components()[-1]
    assert gateway.ports() == [(8000, "DRTECH_HTTP_PORT"), (9001, "DRTECH_GATEWAY_INTERNAL_PORT")]
    assert gateway.arguments() == ["--port", "8000", "--internal-port", "9001"]
    with _listening_socket() as taken:
        gateway.port = 0                      # any free port: only the internal one is taken
        gateway.internal_port = taken.getsockname()[1]
        (problem,) = supervisor.ports_in_use([gateway])
    assert f"gateway cannot use port {gateway.internal_port}" in problem and "DRTECH_GATEWAY_INTERNAL_PORT=" in problem
