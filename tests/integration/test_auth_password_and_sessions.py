"""AuthService password policy and session lifetime over real gRPC (issue 21, OWASP ASVS 5.0 L2):
changing the password, the idle timeout and keep-alive, logging out everywhere, and accounts made
under the older password rules.

Every test runs on SQLite and on PostgreSQL (DRTECH_TEST_POSTGRES_URL; skipped with the reason when
unset or unreachable), with the in-process server of test_auth_service.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import grpc
from sqlalchemy import create_engine, update
from sqlalchemy.orm import Session

from protos.drtech.v1 import auth_pb2
from services.auth.credentials import Passwords
from services.auth.models import AuthSession, User
from tests.integration.test_auth_service import (  # noqa: F401 - `start` and `client` are fixtures
    DEADLINE_S,
    PASSWORD,
    Client,
    client,
    field_violations,
    read_tables,
    rpc_error,
    start,
)
from tests.support import hold_argon2_verifications

NEW_PASSWORD = "a much longer passphrase"


def change_password(client: Client, token: str, current: str = PASSWORD, new: str = NEW_PASSWORD,
                    client_ip: str = "192.0.2.1") -> auth_pb2.ChangePasswordResponse:
    request = auth_pb2.ChangePasswordRequest(
        access_token=token, current_password=current, new_password=new, client_ip=client_ip
    )
    return client.stub.ChangePassword(request, timeout=DEADLINE_S)


def log_out_all(client: Client, token: str) -> auth_pb2.LogOutAllResponse:
    return client.stub.LogOutAll(auth_pb2.LogOutAllRequest(access_token=token), timeout=DEADLINE_S)


def last_used(database_url: str) -> list[datetime]:
    """Each session's last use, in UTC (SQLite hands back the stored time without its zone)."""
    stamps = [row["last_used_at"] for row in read_tables(database_url)["sessions"]]
    return [stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC) for stamp in stamps]


def set_last_used(database_url: str, when: datetime) -> None:
    engine = create_engine(database_url)
    try:
        with Session(engine) as db, db.begin():
            db.execute(update(AuthSession).values(last_used_at=when))
    finally:
        engine.dispose()


# ---- sign-up rules --------------------------------------------------------------------------

def test_sign_up_refuses_a_short_or_common_password_naming_the_reason(client: Client) -> None:
    short = rpc_error(client.sign_up, password="elevenchars")
    assert short.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(short) == {"password": "Password must be at least 12 characters."}
    common = rpc_error(client.sign_up, password="qwertyuiop123")
    assert field_violations(common)["password"].startswith("This password is too common")
    assert client.sign_up(password="twelve chars").id   # exactly 12, no digit needed


# ---- changing the password ------------------------------------------------------------------

def test_changing_the_password_ends_every_other_session_and_keeps_this_one(client: Client) -> None:
    user = client.sign_up()
    this, other, third = (client.log_in(user.email).access_token for _ in range(3))
    someone_else = client.log_in(client.sign_up().email).access_token

    assert change_password(client, this).sessions_ended == 2

    assert client.authenticate(this) == user
    for ended in (other, third):
        assert rpc_error(client.authenticate, ended).code() == grpc.StatusCode.UNAUTHENTICATED
    assert client.authenticate(someone_else).id != user.id   # other accounts are untouched
    assert rpc_error(client.log_in, user.email, PASSWORD).code() == grpc.StatusCode.UNAUTHENTICATED
    assert client.log_in(user.email, NEW_PASSWORD).user == user


def _log_in_held_across_a_password_change(client: Client, token: str, email: str,
                                          monkeypatch) -> grpc.RpcError | str:
    """A log-in with the current password whose argon2 check is still running when the password is
    changed (as an attacker who knows the old one, logging in again and again, would get); its session
    token, or the error it ended with."""
    entered, release = hold_argon2_verifications(monkeypatch, first_only=True)
    with ThreadPoolExecutor(max_workers=1) as pool:
        in_flight = pool.submit(client.log_in, email, PASSWORD, "198.51.100.9")
        assert entered.wait(10)
        change_password(client, token)
        release.set()
        try:
            return in_flight.result().access_token
        except grpc.RpcError as error:
            return error


def test_a_log_in_in_flight_with_the_old_password_opens_no_session_after_a_change(
    client: Client, database_url: str, monkeypatch
) -> None:
    """'Every other session ends' holds for one being opened at that moment: else a log-in started
    before the change would give a session that the change never ended."""
    user = client.sign_up()
    owner = client.log_in(user.email).access_token

    outcome = _log_in_held_across_a_password_change(client, owner, user.email, monkeypatch)

    assert isinstance(outcome, grpc.RpcError) and outcome.code() == grpc.StatusCode.UNAUTHENTICATED
    [session] = read_tables(database_url)["sessions"]     # the owner's, still live: no other was opened
    assert session["revoked_at"] is None
    assert client.log_in(user.email, NEW_PASSWORD).user == user


def test_a_rehash_in_flight_at_a_password_change_does_not_bring_the_old_password_back(
    start, monkeypatch
) -> None:
    """A log-in upgrades an old-parameter hash by writing the password it checked: written after the
    change, it would have undone the change."""
    _, old = start(argon2_time_cost=1)
    user = old.sign_up()
    owner = old.log_in(user.email).access_token
    _, client = start(argon2_time_cost=2)      # the stored hash now wants a rehash at the next log-in

    _log_in_held_across_a_password_change(client, owner, user.email, monkeypatch)

    assert rpc_error(client.log_in, user.email, PASSWORD).code() == grpc.StatusCode.UNAUTHENTICATED
    assert client.log_in(user.email, NEW_PASSWORD).user == user


def test_a_wrong_current_password_is_unauthenticated_and_names_the_field(client: Client) -> None:
    user = client.sign_up()
    token, other = client.log_in(user.email).access_token, client.log_in(user.email).access_token
    error = rpc_error(change_password, client, token, current="not my password")
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert field_violations(error) == {"current_password": "The current password is incorrect."}
    # Nothing changed: the old password still works and no session ended.
    assert client.log_in(user.email, PASSWORD).user == user
    assert client.authenticate(other) == user


def test_the_new_password_follows_the_sign_up_rules(client: Client) -> None:
    user = client.sign_up(email="grace.hopper@example.com")
    token = client.log_in(user.email).access_token
    for new, message in [
        ("short pass", "Password must be at least 12 characters."),
        ("password1234", "This password is too common"),
        ("grace.hopper@example.com!", "Password must not contain your email address"),
        ("x" * 129, "Password must be at most 128 characters."),
    ]:
        error = rpc_error(change_password, client, token, new=new)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations(error)["new_password"].startswith(message)
    assert client.log_in(user.email, PASSWORD).user == user   # still the old password


def test_wrong_current_passwords_are_throttled_with_the_accounts_log_ins(start) -> None:
    """A stolen session cannot guess the password faster than log-in can: both count as failures."""
    _, client = start(throttle_max_failures_per_email=3)
    user = client.sign_up()
    token = client.log_in(user.email).access_token
    rpc_error(client.log_in, user.email, "wrong password 1")
    for _ in range(2):
        assert rpc_error(change_password, client, token, current="wrong password 2").code() == (
            grpc.StatusCode.UNAUTHENTICATED)
    throttled = rpc_error(change_password, client, token)   # even the right one, now
    assert throttled.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert rpc_error(client.log_in, user.email).code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_changing_the_password_needs_a_live_session(client: Client) -> None:
    user = client.sign_up()
    token = client.log_in(user.email).access_token
    client.log_out(token)
    for dead in (token, "", "never-issued"):
        assert rpc_error(change_password, client, dead).code() == grpc.StatusCode.UNAUTHENTICATED
    assert client.log_in(user.email, PASSWORD).user == user


# ---- accounts from before the 12-character rule ----------------------------------------------

def test_an_account_with_an_older_shorter_password_still_logs_in(start, database_url: str) -> None:
    _, client = start()
    user = client.sign_up()
    old_password = "abc12345"   # 8 characters: valid under the old rule
    engine = create_engine(database_url)
    try:
        with Session(engine) as db, db.begin():
            db.execute(update(User).values(password_hash=Passwords(time_cost=1, memory_kib=1024,
                                                                    parallelism=1).hash(old_password)))
    finally:
        engine.dispose()
    session = client.log_in(user.email, old_password)
    assert client.authenticate(session.access_token) == user
    # ...and may move to a password of today's rules.
    change_password(client, session.access_token, current=old_password)
    assert client.log_in(user.email, NEW_PASSWORD).user == user


# ---- idle timeout and keep-alive -----------------------------------------------------------

def test_a_session_unused_for_the_idle_timeout_has_ended(start) -> None:
    _, client = start(session_idle_minutes=1 / 60)   # one second
    user = client.sign_up()
    token = client.log_in(user.email).access_token
    assert client.authenticate(token) == user
    time.sleep(1.5)
    error = rpc_error(client.authenticate, token)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "Session ended after 1 second without use; log in again."


def test_using_a_session_keeps_it_alive_past_the_idle_timeout(start) -> None:
    _, client = start(session_idle_minutes=2 / 60)   # two seconds
    user = client.sign_up()
    token = client.log_in(user.email).access_token
    started = time.monotonic()
    while time.monotonic() - started < 3:   # longer than the idle timeout, used every 0.4 s
        assert client.authenticate(token) == user
        time.sleep(0.4)
    assert client.authenticate(token) == user


def test_the_last_use_is_written_once_a_minute_not_on_every_call(start, database_url: str) -> None:
    _, client = start()   # the default 30-minute idle timeout: written at most once a minute
    user = client.sign_up()
    token = client.log_in(user.email).access_token
    [logged_in_at] = last_used(database_url)
    for _ in range(3):
        client.authenticate(token)
    assert last_used(database_url) == [logged_in_at]   # within the minute: no write

    two_minutes_ago = datetime.now(UTC) - timedelta(minutes=2)
    set_last_used(database_url, two_minutes_ago)
    client.authenticate(token)
    [touched] = last_used(database_url)
    assert touched > two_minutes_ago + timedelta(minutes=1)


def test_an_idle_session_ends_however_young(start, database_url: str) -> None:
    """The idle timeout is counted from the last use, written before the change: a session last used
    31 minutes ago has ended although its 12-hour lifetime has not."""
    _, client = start()
    user = client.sign_up()
    token = client.log_in(user.email).access_token
    set_last_used(database_url, datetime.now(UTC) - timedelta(minutes=31))
    assert rpc_error(client.authenticate, token).details() == (
        "Session ended after 30 minutes without use; log in again.")
    assert rpc_error(log_out_all, client, token).code() == grpc.StatusCode.UNAUTHENTICATED


def test_log_in_forgets_idle_sessions(start, database_url: str) -> None:
    _, client = start()
    user = client.sign_up()
    client.log_in(user.email)
    set_last_used(database_url, datetime.now(UTC) - timedelta(minutes=31))
    live = client.log_in(user.email).access_token
    assert len(read_tables(database_url)["sessions"]) == 1
    assert client.authenticate(live) == user


# ---- log out everywhere ---------------------------------------------------------------------

def test_log_out_all_ends_every_session_of_the_user_only(client: Client) -> None:
    user, other_user = client.sign_up(), client.sign_up()
    tokens = [client.log_in(user.email).access_token for _ in range(3)]
    others = client.log_in(other_user.email).access_token

    assert log_out_all(client, tokens[0]).sessions_ended == 3

    for token in tokens:
        assert rpc_error(client.authenticate, token).code() == grpc.StatusCode.UNAUTHENTICATED
    assert client.authenticate(others) == other_user
    assert rpc_error(log_out_all, client, tokens[0]).code() == grpc.StatusCode.UNAUTHENTICATED
    assert client.authenticate(client.log_in(user.email).access_token) == user   # log-in still works


def test_unknown_tokens_end_nothing(client: Client) -> None:
    user = client.sign_up()
    token = client.log_in(user.email).access_token
    for bad in ("", uuid.uuid4().hex):
        assert rpc_error(log_out_all, client, bad).code() == grpc.StatusCode.UNAUTHENTICATED
    assert client.authenticate(token) == user
