"""services.supervisor (`make run`): what its children are given, how a death while starting is
reported, and how a component that dies once the platform is up is started again (backoff)."""

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


# --- restarts -------------------------------------------------------------------------------------


def test_the_restart_wait_doubles_up_to_its_cap_and_starts_over_after_a_healthy_run() -> None:
    policy = supervisor.RestartPolicy(initial_s=1, max_s=30, reset_after_s=60)
    waits, previous = [], 0.0
    for _ in range(7):
        previous = policy.next_delay(previous, healthy_for_s=5)
        waits.append(previous)
    assert waits == [1, 2, 4, 8, 16, 30, 30]
    assert policy.next_delay(30, healthy_for_s=60) == 1     # it had stayed healthy a while
    assert policy.next_delay(30, healthy_for_s=59) == 30


class Exited:
    """A finished process, as far as the supervisor looks (poll)."""

    def __init__(self, returncode: int) -> None:
        self.returncode = returncode

    def poll(self) -> int:
        return self.returncode


class Running:
    returncode = None

    def poll(self) -> None:
        return None


class Recording(Supervisor):
    """Starts nothing: records each start and answers health from `healthy_now`."""

    def __init__(self, comps: list[Component]) -> None:
        super().__init__(comps, start_timeout=100, grace=1,
                         policy=supervisor.RestartPolicy(initial_s=1, max_s=4, reset_after_s=60))
        self.started: list[str] = []
        self.healthy_now = False

    def spawn(self, comp: Component) -> Running:   # type: ignore[override]
        self.started.append(comp.name)
        return Running()

    def healthy(self, comp: Component) -> bool:
        return self.healthy_now


def test_a_component_that_dies_is_started_again_after_its_wait_and_logged_in_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    skin, bone = Component("skin", "services.skin", 1, "grpc"), Component("bone", "services.bone", 2, "grpc")
    runner = Recording([bone, skin])
    bone.process, skin.process = Running(), Exited(-9)
    bone.healthy_since = skin.healthy_since = 0.0

    for comp in (bone, skin):
        runner.tend(comp, now=10.0)
    (line,) = [record.getMessage() for record in caplog.records]
    assert line == "skin exited unexpectedly (killed by SIGKILL); restarting it in 1 s (restart 1)"
    assert runner.started == []                      # not before its wait is over
    runner.tend(skin, now=10.5)
    assert runner.started == []
    runner.tend(skin, now=11.0)
    assert runner.started == ["skin"]
    assert skin.healthy_since is None
    runner.healthy_now = True
    runner.tend(skin, now=12.0)
    assert skin.healthy_since == 12.0 and "skin is healthy again (restart 1)" in caplog.messages
    runner.tend(bone, now=12.0)
    assert bone.restarts == 0 and runner.started == ["skin"]   # the others are left alone


def test_a_component_that_keeps_dying_waits_longer_each_time_up_to_the_cap() -> None:
    auth = Component("auth", "services.auth", 1, "grpc")
    runner = Recording([auth])
    waits = []
    now = 0.0
    for _ in range(5):
        auth.process = Exited(1)          # dies at once, never healthy
        runner.tend(auth, now)
        waits.append(auth.restart_at - now)
        now = auth.restart_at
        runner.tend(auth, now)            # started again
    assert waits == [1, 2, 4, 4, 4]
    assert runner.started == ["auth"] * 5 and auth.restarts == 5


def test_a_component_healthy_for_a_while_before_it_dies_waits_the_shortest_time_again() -> None:
    pneumonia = Component("pneumonia", "services.pneumonia", 1, "grpc")
    runner = Recording([pneumonia])
    pneumonia.backoff_s, pneumonia.restarts = 4.0, 3
    pneumonia.process, pneumonia.healthy_since = Exited(1), 100.0
    runner.tend(pneumonia, now=160.0)
    assert pneumonia.restart_at == 161.0 and pneumonia.restarts == 4


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
