"""services.supervisor (`make run`): what its children are given, how a death while starting is
reported, and how a component that dies once the platform is up is started again (backoff)."""

from __future__ import annotations

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


def test_every_default_component_says_which_variable_moves_its_port() -> None:
    assert [c.port_env for c in supervisor.components()] == [
        "DRTECH_AUTH_PORT", "DRTECH_BONE_PORT", "DRTECH_SKIN_PORT", "DRTECH_PNEUMONIA_PORT",
        "DRTECH_ROUTER_PORT", "DRTECH_HTTP_PORT"]


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




def test_a_home_that_cannot_hold_the_state_is_named_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Else the auth service retried its SQLite file for 30 s and failed naming neither."""
    (tmp_path / "a-file").write_text("not a folder")
    blocked = tmp_path / "a-file" / "home"
    problem = supervisor.home_problem(blocked)
    assert problem is not None and f"DRTECH_HOME {blocked}" in problem and "DRTECH_HOME=" in problem
    assert supervisor.home_problem(tmp_path / "fresh") is None and (tmp_path / "fresh").is_dir()

    monkeypatch.setenv("DRTECH_HOME", str(blocked))
    monkeypatch.setattr(supervisor, "ports_in_use", lambda comps: [])
    assert supervisor.main([]) == 1          # refused at once, nothing started
