"""AuthService over real gRPC: the server runs in-process on a free port, tests call it through the stub.

Every test runs on SQLite and on PostgreSQL (DRTECH_TEST_POSTGRES_URL, a fresh schema per test; skipped
with the reason when unset or unreachable).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from sqlalchemy import MetaData, create_engine, select

from protos.drtech.v1 import auth_pb2, auth_pb2_grpc
from services.auth.server import AuthServer, start_server
from services.auth.settings import AuthSettings
from tests.support import hold_argon2_verifications

DEADLINE_S = 10
PASSWORD = "correct horse 7"


class Client:
    """The generated stub on its own channel, with a deadline on every call."""

    def __init__(self, server: AuthServer) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        self.stub = auth_pb2_grpc.AuthServiceStub(self.channel)

    def sign_up(self, **fields: str) -> auth_pb2.User:
        request = {
            "email": f"{uuid.uuid4().hex[:8]}@example.com",
            "password": PASSWORD,
            "first_name": "Ada",
            "surname": "Lovelace",
        }
        request.update(fields)
        return self.stub.SignUp(auth_pb2.SignUpRequest(**request), timeout=DEADLINE_S)

    def log_in(self, email: str, password: str = PASSWORD, client_ip: str = "192.0.2.1") -> auth_pb2.Session:
        request = auth_pb2.LogInRequest(email=email, password=password, client_ip=client_ip)
        return self.stub.LogIn(request, timeout=DEADLINE_S)

    def authenticate(self, token: str) -> auth_pb2.User:
        return self.stub.Authenticate(auth_pb2.AuthenticateRequest(access_token=token), timeout=DEADLINE_S)

    def log_out(self, token: str) -> None:
        self.stub.LogOut(auth_pb2.LogOutRequest(access_token=token), timeout=DEADLINE_S)


@pytest.fixture
def start(database_url: str, tmp_path: Path) -> Iterator[Callable[..., tuple[AuthServer, Client]]]:
    """Start an auth server on a free port (settings overridable); everything started is stopped after."""
    running: list[tuple[AuthServer, Client]] = []

    def _start(**overrides: object) -> tuple[AuthServer, Client]:
        settings = {
            "database_url": database_url,
            "home": tmp_path,
            "port": 0,
            "grace_s": 0,
            # Cheap argon2 so the suite is fast; production uses the RFC 9106 defaults.
            "argon2_time_cost": 1,
            "argon2_memory_kib": 1024,
            "argon2_parallelism": 1,
        }
        settings.update(overrides)
        server = start_server(AuthSettings(**settings))
        running.append((server, Client(server)))
        return running[-1]

    yield _start
    for server, client in running:
        client.channel.close()
        server.stop(0)


@pytest.fixture
def client(start: Callable[..., tuple[AuthServer, Client]]) -> Client:
    return start()[1]


def rpc_error(call: Callable[..., object], *args: object, **kwargs: object) -> grpc.RpcError:
    """The error ``call(*args, **kwargs)`` fails with (the test fails if it succeeds)."""
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, **kwargs)
    return caught.value


def field_violations(error: grpc.RpcError) -> dict[str, str]:
    status = rpc_status.from_call(error)
    assert status is not None, "INVALID_ARGUMENT must carry a google.rpc.Status with details"
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            return {v.field: v.description for v in bad_request.field_violations}
    raise AssertionError("no google.rpc.BadRequest in the status details")


def read_tables(database_url: str) -> dict[str, list[dict[str, object]]]:
    """Every row of every table, read straight from the database (not through the service)."""
    engine = create_engine(database_url)
    try:
        metadata = MetaData()
        metadata.reflect(engine)
        with engine.connect() as connection:
            return {
                table.name: [dict(row._mapping) for row in connection.execute(select(table))]
                for table in metadata.sorted_tables
            }
    finally:
        engine.dispose()


def test_health_is_serving_once_started_and_reflection_lists_the_service(start) -> None:
    server, client = start()
    health = health_pb2_grpc.HealthStub(client.channel)
    for service in ("", "drtech.v1.AuthService"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=DEADLINE_S)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

    reflection = reflection_pb2_grpc.ServerReflectionStub(client.channel)
    replies = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {service.name for reply in replies for service in reply.list_services_response.service}
    assert "drtech.v1.AuthService" in names


def test_sign_up_returns_the_user_and_get_user_finds_it(client: Client) -> None:
    user = client.sign_up(
        email="  Grace.Hopper@Example.COM ",
        first_name="Grace",
        surname="Hopper",
        address1="1 Navy Way",
        city="Arlington",
        state="VA",
        zip="22202-1234",
        gender="female",
        birth_date="1906-12-09",
    )
    assert uuid.UUID(user.id)
    assert user.email == "grace.hopper@example.com"
    assert (user.first_name, user.surname, user.zip, user.gender, user.birth_date) == (
        "Grace",
        "Hopper",
        "22202-1234",
        "female",
        "1906-12-09",
    )
    assert abs(user.created_at.ToDatetime(UTC) - datetime.now(UTC)) < timedelta(minutes=1)
    assert client.stub.GetUser(auth_pb2.GetUserRequest(id=user.id), timeout=DEADLINE_S) == user


def test_an_email_can_sign_up_only_once_whatever_its_case(client: Client) -> None:
    client.sign_up(email="alan@example.com")
    error = rpc_error(client.sign_up, email="ALAN@example.com")
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error.details() == "An account with this email already exists."


def test_an_email_can_sign_up_only_once_whatever_its_unicode_spelling(client: Client) -> None:
    """A decomposed accent, or a punycode domain, is the same mailbox: not a second account, and its
    owner logs in with any spelling."""
    user = client.sign_up(email="jos\u00e9@b\u00fccher.de")
    for spelling in ["jose\u0301@b\u00fccher.de", "jos\u00e9@xn--bcher-kva.de"]:
        assert rpc_error(client.sign_up, email=spelling).code() == grpc.StatusCode.ALREADY_EXISTS
        assert client.log_in(spelling).user == user


def test_invalid_fields_come_back_as_per_field_violations(client: Client) -> None:
    error = rpc_error(
        client.sign_up,
        email="nope",
        password="short",
        first_name="",
        zip="ABC",
        gender="robot",
        birth_date="2999-01-01",
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = field_violations(error)
    assert set(violations) == {"email", "password", "first_name", "zip", "gender", "birth_date"}
    assert violations["password"] == "Password must be at least 12 characters."
    assert violations["birth_date"] == "Birth date cannot be in the future."


def test_log_in_gives_a_token_that_authenticates_its_user(client: Client) -> None:
    user = client.sign_up()
    session = client.log_in(user.email.upper())
    assert session.user == user
    assert len(session.access_token) >= 43
    expires_in = session.expires_at.ToDatetime(UTC) - datetime.now(UTC)
    assert timedelta(hours=11, minutes=59) < expires_in <= timedelta(hours=12)
    assert client.authenticate(session.access_token) == user


def test_wrong_password_and_unknown_email_look_the_same(client: Client) -> None:
    user = client.sign_up()
    wrong_password = rpc_error(client.log_in, user.email, "wrong password 1")
    unknown_email = rpc_error(client.log_in, "nobody@example.com", PASSWORD)
    for error in (wrong_password, unknown_email):
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error.details() == "Incorrect email or password."


def test_repeated_failures_for_an_email_are_throttled_even_across_restarts(start) -> None:
    _, client = start(throttle_max_failures_per_email=3)
    user = client.sign_up()
    for attempt in range(3):
        error = rpc_error(client.log_in, user.email, "wrong password 1", client_ip=f"198.51.100.{attempt}")
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED

    # Even the right password is refused now, and a restarted server (same database) still refuses it.
    _, restarted = start(throttle_max_failures_per_email=3)
    for c in (client, restarted):
        error = rpc_error(c.log_in, user.email)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error.details() == "Too many failed log-in attempts. Try again in about 15 minutes."
        status = rpc_status.from_call(error)
        assert status is not None and status.details[0].Is(error_details_pb2.RetryInfo.DESCRIPTOR)

    other = client.sign_up()
    assert client.log_in(other.email).access_token  # other accounts are unaffected


def test_throttling_ends_when_the_failures_leave_the_window(start) -> None:
    _, client = start(throttle_max_failures_per_email=2, throttle_window_minutes=1 / 60)  # a 1 s window
    user = client.sign_up()
    for _ in range(2):
        rpc_error(client.log_in, user.email, "wrong password 1")
    assert rpc_error(client.log_in, user.email).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    time.sleep(1.2)
    assert client.log_in(user.email).access_token


def test_repeated_failures_from_one_client_ip_are_throttled(start) -> None:
    _, client = start(throttle_max_failures_per_ip=3)
    for attempt in range(3):
        rpc_error(client.log_in, f"guess{attempt}@example.com", "wrong password 1", client_ip="203.0.113.9")
    user = client.sign_up()
    error = rpc_error(client.log_in, user.email, client_ip="203.0.113.9")
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert client.log_in(user.email, client_ip="203.0.113.10").access_token


@pytest.mark.parametrize(
    ("guessing_from", "blocked", "elsewhere"),
    [
        # a client holding an IPv6 /64 (one subscriber's network) rotating through its addresses
        (["2001:db8:1:2::1", "2001:db8:1:2::ab", "2001:db8:1:2:ffff::9"], "2001:db8:1:2::77",
         "2001:db8:1:3::1"),
        # an IPv4 address written IPv4-mapped is the same client
        (["203.0.113.9", "::ffff:203.0.113.9", "::FFFF:cb00:7109"], "203.0.113.9", "203.0.113.10"),
        # IPv4 clients seen through NAT64 are each themselves, not one shared /64
        (["64:ff9b::203.0.113.9"] * 3, "203.0.113.9", "64:ff9b::198.51.100.1"),
    ],
    ids=["ipv6-one-64", "ipv4-mapped", "nat64"],
)
def test_ip_throttling_counts_one_client_under_every_spelling_of_its_address(
    start, guessing_from: list[str], blocked: str, elsewhere: str
) -> None:
    _, client = start(throttle_max_failures_per_ip=3)
    for attempt, address in enumerate(guessing_from):
        rpc_error(client.log_in, f"guess{attempt}@example.com", "wrong password 1", client_ip=address)
    user = client.sign_up()
    refused = rpc_error(client.log_in, user.email, client_ip=blocked)
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert client.log_in(user.email, client_ip=elsewhere).access_token


def test_accounts_created_from_one_address_are_limited_per_window(start, database_url: str) -> None:
    """A flood of sign-ups from one client address stops at the limit (RESOURCE_EXHAUSTED with
    RetryInfo); other addresses, the same /64, and calls without an address are counted apart."""
    _, client = start(throttle_max_sign_ups_per_ip=2, throttle_sign_up_window_minutes=1 / 60)   # 1 s
    client.sign_up(client_ip="203.0.113.7")
    client.sign_up(client_ip="::ffff:203.0.113.7")                 # the same client, another spelling
    refused = rpc_error(client.sign_up, client_ip="203.0.113.7")
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.details().startswith("Too many accounts were created from your network.")
    status = rpc_status.from_call(refused)
    assert status is not None and status.details[0].Is(error_details_pb2.RetryInfo.DESCRIPTOR)
    client.sign_up(client_ip="198.51.100.1")                       # another client
    client.sign_up()                                               # no address: not limited
    assert len(read_tables(database_url)["users"]) == 4            # the refused one created nothing
    time.sleep(1.2)                                                # the window has passed
    client.sign_up(client_ip="203.0.113.7")


def test_a_successful_log_in_clears_the_accounts_failures(start) -> None:
    _, client = start(throttle_max_failures_per_email=3)
    user = client.sign_up()
    for _ in range(2):
        rpc_error(client.log_in, user.email, "wrong password 1")
    client.log_in(user.email)
    for _ in range(2):
        rpc_error(client.log_in, user.email, "wrong password 1")
    assert client.log_in(user.email).access_token


def test_an_expired_token_is_rejected(start) -> None:
    # Three seconds: in a fresh-clone `make test` on a busy 2-core machine a one-second session
    # expired between its log-in (argon2) and its first use.
    _, client = start(session_ttl_hours=3 / 3600)
    user = client.sign_up()
    token = client.log_in(user.email).access_token
    logged_in = time.monotonic()   # the session was made before this
    assert client.authenticate(token) == user
    time.sleep(max(0.0, logged_in + 3.2 - time.monotonic()))
    error = rpc_error(client.authenticate, token)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "Session has expired; log in again."


@pytest.mark.parametrize("token", ["", "not-a-token"])
def test_missing_or_unknown_tokens_are_rejected(client: Client, token: str) -> None:
    assert rpc_error(client.authenticate, token).code() == grpc.StatusCode.UNAUTHENTICATED


def test_log_out_revokes_the_token_at_once_and_only_that_token(client: Client) -> None:
    user = client.sign_up()
    token, other_token = client.log_in(user.email).access_token, client.log_in(user.email).access_token
    client.log_out(token)
    error = rpc_error(client.authenticate, token)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "Access token is invalid or has been revoked."
    client.log_out(token)  # idempotent
    client.log_out("never-issued")
    assert client.authenticate(other_token) == user


def test_get_user_errors(client: Client) -> None:
    missing = rpc_error(
        client.stub.GetUser, auth_pb2.GetUserRequest(id=str(uuid.uuid4())), timeout=DEADLINE_S
    )
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    malformed = rpc_error(client.stub.GetUser, auth_pb2.GetUserRequest(id="42"), timeout=DEADLINE_S)
    assert malformed.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(malformed) == {"id": "User id must be a UUID."}


def test_the_database_keeps_no_plaintext_password_or_token(start, database_url: str) -> None:
    _, client = start()
    password = "plain text secret 42"
    user = client.sign_up(password=password)
    token = client.log_in(user.email, password).access_token
    rpc_error(client.log_in, user.email, "another secret 43")

    tables = read_tables(database_url)
    everything = " ".join(str(value) for rows in tables.values() for row in rows for value in row.values())
    token_hashes = [row["token_hash"] for row in tables["sessions"]]
    assert user.email in everything  # the dump did read the tables
    for secret in (password, "another secret 43", token):
        assert secret not in everything
    assert token_hashes == [hashlib.sha256(token.encode()).hexdigest()]
    assert "$argon2id$" in everything


def test_a_password_hashed_with_old_parameters_is_rehashed_at_log_in(start, database_url: str) -> None:
    _, old = start(argon2_time_cost=1)
    user = old.sign_up()
    _, new = start(argon2_time_cost=2)
    new.log_in(user.email)

    [row] = read_tables(database_url)["users"]
    stored = row["password_hash"]
    assert stored.startswith("$argon2id$") and ",t=2," in stored
    assert new.log_in(user.email).access_token  # and the new hash verifies


def test_requests_over_the_message_size_limit_are_refused(start) -> None:
    _, client = start(max_message_bytes=4096)
    error = rpc_error(client.sign_up, address1="x" * 10_000)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_concurrent_sign_ups_with_one_email_create_one_account(client: Client) -> None:
    def attempt(_: int) -> str:
        try:
            client.sign_up(email="race@example.com")
            return "created"
        except grpc.RpcError as error:
            return error.code().name

    with ThreadPoolExecutor(max_workers=6) as pool:
        outcomes = sorted(pool.map(attempt, range(6)))
    assert outcomes == ["ALREADY_EXISTS"] * 5 + ["created"]


def test_concurrent_users_each_get_their_own_working_session(client: Client) -> None:
    def sign_up_and_log_in(_: int) -> tuple[str, str]:
        user = client.sign_up()
        token = client.log_in(user.email).access_token
        return user.id, client.authenticate(token).id

    with ThreadPoolExecutor(max_workers=6) as pool:
        pairs = list(pool.map(sign_up_and_log_in, range(12)))
    assert all(signed_up == authenticated for signed_up, authenticated in pairs)
    assert len({signed_up for signed_up, _ in pairs}) == 12


def test_an_overlong_password_is_just_a_failed_log_in(client: Client) -> None:
    user = client.sign_up()
    error = rpc_error(client.log_in, user.email, "a1" * 100_000)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "Incorrect email or password."


def test_log_in_forgets_the_users_dead_sessions(start, database_url: str) -> None:
    _, client = start(session_ttl_hours=1 / 3600)
    user = client.sign_up()
    revoked = client.log_in(user.email).access_token
    client.log_out(revoked)
    client.log_in(user.email)  # expires within a second
    time.sleep(1.2)
    live = client.log_in(user.email).access_token

    kept = [row["token_hash"] for row in read_tables(database_url)["sessions"]]
    assert kept == [hashlib.sha256(live.encode()).hexdigest()]


def test_parallel_guesses_get_no_more_tries_than_the_limit(start) -> None:
    """Each attempt is recorded before the throttle is checked, so guesses sent at once see each
    other instead of all passing a check that none of them has counted in yet."""
    _, client = start(throttle_max_failures_per_email=3)
    user = client.sign_up()
    def guess(n: int) -> grpc.RpcError:
        return rpc_error(client.log_in, user.email, f"wrong password {n}", client_ip=f"198.51.100.{n}")

    with ThreadPoolExecutor(12) as pool:
        errors = list(pool.map(guess, range(12)))
    codes = [error.code() for error in errors]
    assert set(codes) <= {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.RESOURCE_EXHAUSTED}
    # Passwords tried: at most the limit (a throttled attempt tries none and is not counted as one).
    assert codes.count(grpc.StatusCode.UNAUTHENTICATED) <= 3


def test_nul_characters_get_a_clear_answer_not_an_internal_error(client: Client) -> None:
    """PostgreSQL text cannot hold NUL: such an email is simply not an account, and a sign-up
    field with one is refused by validation."""
    user = client.sign_up()
    for email in ("nobody\x00@example.com", user.email + "\x00"):
        assert rpc_error(client.log_in, email).code() == grpc.StatusCode.UNAUTHENTICATED
    assert client.log_in(user.email, client_ip="192.0.2.1\x00").access_token
    error = rpc_error(client.sign_up, first_name="Ada\x00")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_log_in_burst_is_shed_not_queued_ahead_of_token_and_health_checks(
    start, monkeypatch, database_url: str
) -> None:
    """At most workers - 1 calls are inside argon2 (hashing, or waiting for one of the
    argon2_max_concurrent slots): one more log-in gets UNAVAILABLE with RetryInfo at once (no password
    was tried, so it is no failure), and token checks and health still find a thread."""
    _, client = start(workers=3, argon2_max_concurrent=1, argon2_wait_s=10)
    user, bystander = client.sign_up(), client.sign_up()
    token = client.log_in(user.email).access_token
    entered, release = hold_argon2_verifications(monkeypatch)

    with ThreadPoolExecutor(max_workers=2) as pool:
        hashing = pool.submit(lambda: rpc_error(client.log_in, user.email, "wrong password 1"))
        assert entered.wait(5)
        waiting = pool.submit(client.log_in, user.email)       # the second thread, waiting for the slot
        time.sleep(0.3)
        started = time.monotonic()
        shed = rpc_error(client.log_in, bystander.email)       # no third thread for argon2
        assert shed.code() == grpc.StatusCode.UNAVAILABLE and "busy" in shed.details()
        status = rpc_status.from_call(shed)
        assert status is not None and status.details[0].Is(error_details_pb2.RetryInfo.DESCRIPTOR)
        assert client.authenticate(token).id == user.id
        health = health_pb2_grpc.HealthStub(client.channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert time.monotonic() - started < 3, "shed at once, not after the wait"
        # No password was tried: the shed log-in left no failure to count against the account.
        failures = read_tables(database_url)["login_failures"]
        assert not [row for row in failures if row["email"] == bystander.email]
        release.set()
        assert hashing.result(10).code() == grpc.StatusCode.UNAUTHENTICATED
        assert waiting.result(10).access_token                 # the waiter got the slot in the end


def test_a_log_in_in_flight_when_its_connection_ages_out_still_finishes(start, monkeypatch) -> None:
    """Connections are closed after max_connection_age_s (so clients find new pods); a call in flight
    then gets max_connection_age_grace_s to finish, even on a server whose shutdown grace is 0."""
    _, client = start(max_connection_age_s=0.5, max_connection_age_grace_s=5)
    user = client.sign_up()
    entered, release = hold_argon2_verifications(monkeypatch)
    with ThreadPoolExecutor(max_workers=1) as pool:
        logging_in = pool.submit(client.log_in, user.email)
        assert entered.wait(5)
        time.sleep(1.5)   # the connection's age (0.5 s, +-10 %) passes while the password is checked
        release.set()
        assert logging_in.result(10).access_token
