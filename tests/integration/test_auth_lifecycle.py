"""Start-up and shutdown: `python -m services.auth` as a real process, and health during a graceful stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.drtech.v1 import auth_pb2, auth_pb2_grpc
from services.auth.database import database_reachable, make_engine, make_probe_engine
from services.auth.server import start_server
from services.auth.settings import AuthSettings
from tests.support import ROOT, free_port

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
UNREACHABLE = "postgresql+psycopg://postgres@127.0.0.1:9/nowhere"  # nothing listens on port 9


def auth_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRTECH_AUTH_")}
    env.update({"DRTECH_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT), **extra})
    return env


def test_the_module_serves_on_a_free_port_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "services.auth", "--port", "0"],
        cwd=tmp_path,
        env=auth_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("listening on 127.0.0.1:"), line
        port = int(line.rsplit(":", 1)[1])
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert reply.status == SERVING
        assert (tmp_path / "home" / "auth.db").is_file()  # the default SQLite file under DRTECH_HOME

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_module_exits_with_a_clear_error_when_the_database_is_unreachable(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.auth", "--port", "0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=auth_env(tmp_path, DRTECH_AUTH_DATABASE_URL=UNREACHABLE, DRTECH_AUTH_DATABASE_WAIT_S="2"),
    )
    assert result.returncode == 1
    assert "could not start" in result.stderr
    assert "listening on" not in result.stdout


def test_health_is_not_serving_while_the_database_is_unreachable(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "services.auth", "--port", str(port)],
        cwd=tmp_path,
        env=auth_env(tmp_path, DRTECH_AUTH_DATABASE_URL=UNREACHABLE, DRTECH_AUTH_DATABASE_WAIT_S="60"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            for service in ("", "drtech.v1.AuthService"):
                request = health_pb2.HealthCheckRequest(service=service)
                reply = health_pb2_grpc.HealthStub(channel).Check(request, timeout=10)
                assert reply.status == NOT_SERVING
            # A client that ignores health gets a clear UNAVAILABLE, not an internal error.
            with pytest.raises(grpc.RpcError) as caught:
                auth_pb2_grpc.AuthServiceStub(channel).GetUser(auth_pb2.GetUserRequest(id="x"), timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert caught.value.details() == "The auth service is starting; try again shortly."
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_health_turns_not_serving_as_soon_as_a_graceful_stop_begins(tmp_path: Path) -> None:
    server = start_server(AuthSettings(database_url=f"sqlite:///{tmp_path / 'auth.db'}", port=0))
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        updates = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="drtech.v1.AuthService"), timeout=10
        )
        assert next(updates).status == SERVING
        stopping = threading.Thread(target=server.stop, args=(2.0,))
        stopping.start()
        try:
            assert next(updates).status == NOT_SERVING
        finally:
            stopping.join()


def test_a_second_auth_service_cannot_share_the_first_ones_port(tmp_path: Path) -> None:
    """gRPC sets SO_REUSEPORT on Linux by default: two auth services (two databases) would split the
    log-ins between them, accounts appearing and vanishing. The second must fail to start instead."""
    first = start_server(AuthSettings(database_url=f"sqlite:///{tmp_path / 'a.db'}", port=0))
    try:
        with pytest.raises((OSError, RuntimeError)):
            second = start_server(AuthSettings(database_url=f"sqlite:///{tmp_path / 'b.db'}", port=first.port))
            second.stop(0)
    finally:
        first.stop(0)


def test_health_follows_the_database_after_start_up(tmp_path: Path) -> None:
    """Health goes NOT_SERVING when the database becomes unreachable, and back when it returns.

    The SQLite file's directory is moved away and back: the service can no longer open its database
    there, whatever connections it already holds (the same as a volume or server going away).
    """
    database_dir = tmp_path / "database"
    server = start_server(
        AuthSettings(database_url=f"sqlite:///{database_dir / 'auth.db'}", port=0, database_check_s=0.05)
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            updates = health.Watch(health_pb2.HealthCheckRequest(service="drtech.v1.AuthService"), timeout=10)
            assert next(updates).status == SERVING

            database_dir.rename(tmp_path / "moved-away")
            assert next(updates).status == NOT_SERVING
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == NOT_SERVING
            # Liveness is about the process, not the database: restarting it would not bring the database back.
            liveness = health.Check(health_pb2.HealthCheckRequest(service="liveness"), timeout=10)
            assert liveness.status == SERVING

            (tmp_path / "moved-away").rename(database_dir)
            assert next(updates).status == SERVING
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == SERVING
            updates.cancel()
    finally:
        server.stop(0)


def test_the_database_check_says_unreachable_for_a_closed_postgresql_port() -> None:
    """The periodic check's own engine, pointed at a port where no PostgreSQL listens."""
    probe = make_probe_engine(make_engine(UNREACHABLE))
    try:
        assert database_reachable(probe) is False
    finally:
        probe.dispose()
