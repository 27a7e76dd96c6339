"""The gateway's cache of verified sessions against a real auth service: revocation through the
same gateway is immediate, revocation elsewhere takes effect within the TTL, and no cached verdict
outlives the session itself (gateway/session_cache.py)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from gateway.settings import GatewaySettings
from gateway.testing import RunningGateway, start_gateway
from protos.drtech.v1 import auth_pb2, auth_pb2_grpc
from services.auth.server import AuthServer, start_server as start_auth
from services.auth.settings import AuthSettings

PASSWORD = "correct horse 42"
NEW_PASSWORD = "seven horses and a cart"
CSRF = {"X-Requested-With": "fetch"}


Start = Callable[..., tuple[AuthServer, RunningGateway]]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """start(cache_s, **auth settings) -> (auth service, gateway using it with that cache TTL)."""
    running: list[tuple[AuthServer, RunningGateway]] = []

    def started(cache_s: float, **auth_settings: object) -> tuple[AuthServer, RunningGateway]:
        home = tmp_path / str(len(running))
        auth = start_auth(AuthSettings(home=home, port=0, grace_s=0, argon2_time_cost=1,
                                       argon2_memory_kib=1024, argon2_parallelism=1, **auth_settings))
        gateway = start_gateway(GatewaySettings(DRTECH_HOME=home, DRTECH_AUTH_ADDR=f"127.0.0.1:{auth.port}",
                                                auth_cache_seconds=cache_s))
        running.append((auth, gateway))
        return auth, gateway

    yield started
    for auth, gateway in running:
        gateway.stop()
        auth.stop(0)


def account(client: httpx.Client) -> str:
    email = f"user-{uuid.uuid4().hex[:10]}@example.org"
    reply = client.post("/api/v1/auth/signup", json={"email": email, "password": PASSWORD,
                                                      "first_name": "Ada", "surname": "Lovelace"})
    assert reply.status_code == 201, reply.text
    return email


def bearer(client: httpx.Client, email: str, password: str = PASSWORD) -> dict[str, str]:
    reply = client.post("/api/v1/auth/login", json={"email": email, "password": password})
    assert reply.status_code == 200, reply.text
    return {"Authorization": f"Bearer {reply.json()['access_token']}"}


def me(client: httpx.Client, headers: dict[str, str]) -> int:
    return client.get("/api/v1/me", headers=headers).status_code


def log_out_at_the_auth_service(auth: AuthServer, headers: dict[str, str]) -> None:
    """A log-out this gateway never sees (made through another replica)."""
    token = headers["Authorization"].removeprefix("Bearer ")
    with grpc.insecure_channel(f"127.0.0.1:{auth.port}") as channel:
        auth_pb2_grpc.AuthServiceStub(channel).LogOut(auth_pb2.LogOutRequest(access_token=token), timeout=10)


def test_a_log_out_through_this_gateway_is_refused_at_once(start: Start) -> None:
    _, gateway = start(cache_s=60)
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        headers = bearer(client, account(client))
        assert me(client, headers) == 200                        # verified, and cached
        assert client.post("/api/v1/auth/logout", headers=headers).status_code == 204
        assert me(client, headers) == 401


def test_log_out_everywhere_through_this_gateway_ends_every_cached_session_at_once(start: Start) -> None:
    _, gateway = start(cache_s=60)
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        email = account(client)
        this, other = bearer(client, email), bearer(client, email)
        assert me(client, this) == me(client, other) == 200
        assert client.post("/api/v1/auth/logout-all", headers=this).status_code == 204
        assert me(client, other) == me(client, this) == 401


def test_a_password_change_through_this_gateway_ends_the_other_cached_sessions_at_once(start: Start) -> None:
    _, gateway = start(cache_s=60)
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        email = account(client)
        this, other = bearer(client, email), bearer(client, email)
        assert me(client, this) == me(client, other) == 200
        changed = client.post("/api/v1/auth/password", headers=this,
                              json={"current_password": PASSWORD, "new_password": NEW_PASSWORD})
        assert changed.status_code == 204, changed.text
        assert me(client, other) == 401
        assert me(client, this) == 200                           # this session stays


def test_a_log_out_elsewhere_takes_effect_here_within_the_ttl(start: Start) -> None:
    auth, gateway = start(cache_s=1)
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        headers = bearer(client, account(client))
        assert me(client, headers) == 200
        log_out_at_the_auth_service(auth, headers)
        # The staleness bound across replicas: the verdict cached a moment ago may still answer...
        assert me(client, headers) == 200
        time.sleep(1.1)
        # ...but not past the TTL.
        assert me(client, headers) == 401


def test_without_a_cache_a_log_out_elsewhere_is_refused_at_once(start: Start) -> None:
    auth, gateway = start(cache_s=0)
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        headers = bearer(client, account(client))
        assert me(client, headers) == 200
        log_out_at_the_auth_service(auth, headers)
        assert me(client, headers) == 401


def test_a_cached_verdict_never_outlives_the_sessions_idle_timeout(start: Start) -> None:
    """A TTL far past the session's 2 s idle timeout: a session left unused still ends on time."""
    _, gateway = start(cache_s=60, session_idle_minutes=2 / 60)
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        headers = bearer(client, account(client))
        assert me(client, headers) == 200
        time.sleep(2.2)
        assert me(client, headers) == 401


def test_a_cached_verdict_never_outlives_the_sessions_lifetime(start: Start) -> None:
    _, gateway = start(cache_s=60, session_ttl_hours=2 / 3600)   # two seconds
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        email = account(client)
        # The session is made between these two moments, however long the log-in takes.
        before_log_in = time.monotonic()
        headers = bearer(client, email)
        logged_in = time.monotonic()
        while time.monotonic() - before_log_in < 1.5:            # in use all along, cached
            assert me(client, headers) == 200
            time.sleep(0.2)
        time.sleep(max(0.0, 2.2 - (time.monotonic() - logged_in)))
        assert me(client, headers) == 401


def test_a_session_in_use_through_the_cache_stays_alive_past_its_idle_timeout(start: Start) -> None:
    """Cached hits do not reach the auth service, yet the session is checked again, and kept alive,
    before its idle timeout could end it."""
    _, gateway = start(cache_s=60, session_idle_minutes=2 / 60)
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        headers = bearer(client, account(client))
        started = time.monotonic()
        while time.monotonic() - started < 4:                    # twice the idle timeout
            assert me(client, headers) == 200
            time.sleep(0.3)
