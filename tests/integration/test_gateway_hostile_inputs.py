"""Hostile input through the gateway's real HTTP API, on the whole stack (tests/web_stack.py).

The inputs are generated deterministically (tests/hostile_inputs.py): truncated and bit-flipped
images, bombs, polyglots, malformed multipart, hostile file names, broken JSON and hostile strings
in every JSON field, odd paths and queries. Specification: every answer is a 4xx in API.md's error
shape (JSON with a non-empty `detail`), or a success only where the input may legitimately be valid;
never a 5xx; afterwards every service still answers SERVING and the process's memory has not run away.
`make test` sends one seed's cases (about 1,900, in well under a minute of sending); `make soak`
(DRTECH_SOAK=1) three seeds with five times the image mutations (about 11,000).
"""

from __future__ import annotations

import asyncio
import gc
import os
import select
import socket
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.hostile_inputs import PASSWORD, Case, hostile_cases
from tests.web_stack import Stack, running_stack

SOAK = os.environ.get("DRTECH_SOAK") == "1"
CONCURRENCY = 16
# Calls that hash a password (argon2) go at most this many at once: the auth service sheds more than
# its hashing slots with UNAVAILABLE (503 with Retry-After, by design), which is load, not input.
HASHING_PATHS = ("/api/v1/auth/login", "/api/v1/auth/signup", "/api/v1/auth/password")
HASHING_CONCURRENCY = 2
# Generous: the process holds the whole stack (gateway, auth, four model services); a leak of the
# bodies sent (tens of MB) per request would blow far past it.
RSS_GROWTH_LIMIT_MIB = 400


def rss_mib() -> float:
    """This process's resident set (the gateway and the model services all run in it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("home"), tmp_path_factory.mktemp("models")) as running:
        yield running


@pytest.fixture(scope="module")
def tokens(stack: Stack) -> dict[str, str]:
    """Sessions made first: the hostile log-ins throttle any further log-in from 127.0.0.1."""
    return {"uploads": _token(stack.url), "password": _token(stack.url)}


def _token(url: str) -> str:
    email = f"hostile-{uuid.uuid4().hex[:10]}@example.org"
    with httpx.Client(base_url=url, timeout=60) as client:
        signed = client.post("/api/v1/auth/signup", json={"email": email, "password": PASSWORD,
                                                          "first_name": "Hostile", "surname": "Input"})
        assert signed.status_code == 201, signed.text
        logged = client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
        assert logged.status_code == 200, logged.text
        return logged.json()["access_token"]


def _refusal_problem(case: Case, reply: httpx.Response) -> str | None:
    """Why this answer breaks the specification, or None."""
    if reply.status_code in case.may_succeed:
        return None
    if not 400 <= reply.status_code < 500:
        return f"status {reply.status_code}: {reply.text[:300]}"
    try:
        body = reply.json()
    except ValueError:
        return f"status {reply.status_code} without a JSON body: {reply.text[:200]!r}"
    if not isinstance(body, dict) or not isinstance(body.get("detail"), str) or not body["detail"].strip():
        return f"status {reply.status_code} without API.md's error shape: {reply.text[:200]}"
    return None


async def _send(url: str, cases: list[Case], tokens: dict[str, str]) -> list[tuple[Case, httpx.Response]]:
    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        turns = asyncio.Semaphore(CONCURRENCY)
        hashing = asyncio.Semaphore(HASHING_CONCURRENCY)

        async def send(case: Case) -> tuple[Case, httpx.Response]:
            headers = dict(case.headers)
            if case.auth:
                # Wrong current passwords throttle and may end that account's sessions: its own account.
                token = tokens["password" if case.path.endswith("/auth/password") else "uploads"]
                headers["Authorization"] = f"Bearer {token}"
            async with hashing if case.path in HASHING_PATHS else turns:
                return case, await client.request(case.method, case.path, headers=headers, content=case.body)

        return list(await asyncio.gather(*(send(case) for case in cases)))


def _check_alive(stack: Stack) -> None:
    """Every gRPC service answers its health check SERVING; the gateway is ready."""
    for name, server in stack.models.items():
        with grpc.insecure_channel(server.target) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING, name
    ready = httpx.get(f"{stack.url}/readyz", timeout=30)
    assert ready.status_code == 200, ready.text
    assert set(ready.json()["services"].values()) == {"SERVING"}, ready.json()


def test_hostile_inputs_get_clear_4xx_answers_and_leave_the_stack_serving(
    stack: Stack, tokens: dict[str, str]
) -> None:
    # Every case of one seed (~1,900) in `make test`; soak: three seeds, five times the mutations.
    cases = hostile_cases()
    if SOAK:
        cases = [case for seed in (1, 2, 3) for case in hostile_cases(seed, mutations=300)]
    asyncio.run(_send(stack.url, cases[:40], tokens))      # warm-up: RSS is measured from a warm stack
    gc.collect()
    before = rss_mib()
    started = time.perf_counter()
    replies = asyncio.run(_send(stack.url, cases, tokens))
    elapsed = time.perf_counter() - started
    gc.collect()
    after = rss_mib()

    statuses = Counter(reply.status_code for _, reply in replies)
    problems = [(case.category, case.name[:80], problem) for case, reply in replies
                if (problem := _refusal_problem(case, reply))]
    refused = sum(count for status, count in statuses.items() if 400 <= status < 500)
    print(f"\nhostile inputs: {len(cases)} in {elapsed:.0f} s; {refused} 4xx, "
          f"{sum(c for s, c in statuses.items() if s >= 500)} 5xx, "
          f"{sum(c for s, c in statuses.items() if s < 400)} accepted (valid despite the mutation); "
          f"statuses {dict(sorted(statuses.items()))}; RSS {before:.0f} -> {after:.0f} MiB")
    assert not problems, f"{len(problems)} answers break the spec: {problems[:15]}"
    assert len(cases) >= 1000
    _check_alive(stack)
    assert after - before < RSS_GROWTH_LIMIT_MIB, (before, after)


def _stream(port: int, head: str, prefix: bytes, total: int, chunked: bool) -> tuple[int, bytes, int]:
    """Send a request head, then up to `total` body bytes (`prefix`, then "a"s), stopping once the
    server answers. Returns (status, response body, body bytes sent)."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(head.encode())
        response = b""
        try:
            while sent < total and not select.select([sock], [], [], 0)[0]:   # stop once it answers
                piece = prefix if sent == 0 else b"a" * min(1024 * 1024, total - sent)
                sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece)
                sent += len(piece)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass        # the server answered and closed, or stopped reading: the answer is read below
        sock.setblocking(True)
        sock.settimeout(60)
        try:
            while b"\r\n\r\n" not in response or len(response.split(b"\r\n\r\n", 1)[1]) < _length(response):
                more = sock.recv(65536)
                if not more:
                    break
                response += more
        except (ConnectionResetError, TimeoutError):
            pass
    status = int(response.split(b" ", 2)[1])
    return status, response.split(b"\r\n\r\n", 1)[1], sent


def _length(response: bytes) -> int:
    for line in response.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


@pytest.mark.parametrize("path", ["/api/v1/diagnoses", "/api/v1/previews", "/api/v1/auth/login"])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_100_mb_body_is_413_without_being_read(
    stack: Stack, tokens: dict[str, str], path: str, chunked: bool
) -> None:
    token = tokens["uploads"]
    total = 100 * 1024 * 1024
    length = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}"
    content_type = "application/json" if path.endswith("login") else "multipart/form-data; boundary=b"
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: {content_type}\r\n{length}\r\n\r\n")
    # A body that parses as far as it goes (a file part, a JSON string), so only its size is wrong.
    prefix = (b'{"email": "' if path.endswith("login") else
              b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\n\r\n\xff\xd8\xff')
    status, body, sent = _stream(stack.gateway.port, head, prefix, total, chunked)
    assert status == 413, body
    assert b"limit" in body
    assert sent < 40 * 1024 * 1024        # refused at the 20 MiB limit (or before a byte), not read to the end
    _check_alive(stack)
