"""The audit trail end to end: the whole platform (tests/web_stack.py), over HTTP.

Every authentication decision and every access to a record leaves one row (who, what, which record,
when, client address, user agent, outcome) and one JSON line on the `drtech.audit` logger; a user
reads their own through GET /api/v1/me/activity. Never a password, a token or an image.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import OperationalError

from gateway import audit
from gateway.database import create_database_engine, migrate, session_factory
from gateway.records import utc_now
from gateway.settings import GatewaySettings
from gateway.testing import start_gateway
from services.auth.server import start_server as start_auth
from tests.support import free_port, sample_image_bytes
from tests.web_stack import Stack, running_stack, stack_auth_settings

PASSWORD = "correct horse 42"
NEW_PASSWORD = "battery staple 1729"
WRONG_PASSWORD = "wrong guess 000"
THROTTLE_AFTER = 3
AGENT = "audit-test/1.0 (pytest)"


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def events(self) -> list[dict]:
        return [json.loads(record.getMessage()) for record in self.records]


@pytest.fixture(scope="module")
def lines() -> Iterator[Lines]:
    handler = Lines()
    logger = logging.getLogger("drtech.audit")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    dead = f"127.0.0.1:{free_port()}"   # nothing listens: chest uploads come back failed, to retry
    with running_stack(tmp_path_factory.mktemp("drtech-home"), tmp_path_factory.mktemp("models"),
                       auth_settings={"throttle_max_failures_per_email": THROTTLE_AFTER},
                       DRTECH_PNEUMONIA_ADDR=dead, diagnose_timeout_s=5.0) as running:
        yield running


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.gateway.url, timeout=60, headers={"User-Agent": AGENT}) as client:
        yield client


def sign_up(client: httpx.Client) -> tuple[str, str]:
    """A new account: (email, user id)."""
    email = f"user-{uuid.uuid4().hex[:10]}@example.org"
    reply = client.post("/api/v1/auth/signup", json={"email": email, "password": PASSWORD,
                                                      "first_name": "Ada", "surname": "Lovelace"})
    assert reply.status_code == 201, reply.text
    return email, reply.json()["id"]


def log_in(client: httpx.Client, email: str, password: str = PASSWORD) -> dict[str, str]:
    reply = client.post("/api/v1/auth/login", json={"email": email, "password": password})
    assert reply.status_code == 200, reply.text
    client.cookies.clear()
    return {"Authorization": f"Bearer {reply.json()['access_token']}"}


def activity(client: httpx.Client, headers: dict[str, str], **params: object) -> dict:
    reply = client.get("/api/v1/me/activity", headers=headers, params=params)
    assert reply.status_code == 200, reply.text
    return reply.json()


def table(url: str) -> list[dict]:
    """Every row of the audit table, oldest first, as the database holds it."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(text("SELECT * FROM audit_events ORDER BY id"))]
    finally:
        engine.dispose()


def gateway_db(stack: Stack) -> str:
    return f"sqlite:///{stack.home / 'gateway.db'}"


def upload(client: httpx.Client, headers: dict[str, str], exam_type: str, explain: bool = False) -> dict:
    reply = client.post("/api/v1/diagnoses", params={"explain": "true"} if explain else None,
                        files={"file": ("x.jpg", sample_image_bytes("skin_lesion"), "image/jpeg")},
                        data={"exam_type": exam_type}, headers=headers)
    assert reply.status_code == 201, reply.text
    return reply.json()


# --- authentication decisions ---------------------------------------------------------------------


def test_every_authentication_decision_is_the_accounts_event_newest_first(
    client: httpx.Client, stack: Stack, lines: Lines
) -> None:
    email, user_id = sign_up(client)
    assert client.post("/api/v1/auth/login", json={"email": email, "password": WRONG_PASSWORD}).status_code == 401
    first = log_in(client, email)
    log_in(client, email)    # another session, which the password change ends
    wrong = client.post("/api/v1/auth/password", headers=first,
                        json={"current_password": WRONG_PASSWORD, "new_password": NEW_PASSWORD})
    assert wrong.status_code == 401
    changed = client.post("/api/v1/auth/password", headers=first,
                          json={"current_password": PASSWORD, "new_password": NEW_PASSWORD})
    assert changed.status_code == 204
    assert client.post("/api/v1/auth/logout", headers=first).status_code == 204
    assert client.post("/api/v1/auth/logout-all", headers=log_in(client, email, NEW_PASSWORD)).status_code == 204
    headers = log_in(client, email, NEW_PASSWORD)

    page = activity(client, headers)
    assert [(item["event"], item["outcome"]) for item in page["items"]] == [
        ("log_in", "success"),
        ("log_out_all", "success"),
        ("log_in", "success"),
        ("log_out", "success"),
        ("password_change", "success"),
        ("password_change", "failure"),
        ("log_in", "success"),
        ("log_in", "success"),
        ("log_in", "failure"),
        ("sign_up", "success"),
    ]
    assert page["total"] == 10 and page["limit"] == 20 and page["offset"] == 0
    for item in page["items"]:
        assert set(item) == {"event", "at", "ip", "user_agent", "outcome"}   # no record: no diagnosis_id
        assert item["ip"] == "127.0.0.1" and item["user_agent"] == AGENT
        assert item["at"].endswith("Z")
    assert [item["at"] for item in page["items"]] == sorted((item["at"] for item in page["items"]), reverse=True)

    # The same events went to the log, one JSON line each, with the account they concern.
    logged = [line for line in lines.events() if line["user_id"] == user_id]
    assert [(line["event"], line["outcome"]) for line in logged] == [
        (item["event"], item["outcome"]) for item in reversed(page["items"])]
    assert all(line["stored"] is True and line["ip"] == "127.0.0.1" for line in logged)


def test_no_password_token_or_cookie_reaches_the_table_or_the_log(
    client: httpx.Client, stack: Stack, lines: Lines
) -> None:
    email, _ = sign_up(client)
    client.post("/api/v1/auth/login", json={"email": email, "password": WRONG_PASSWORD})
    login = client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    token, cookie = login.json()["access_token"], login.cookies["drtech_session"]
    client.cookies.clear()
    headers = {"Authorization": f"Bearer {token}"}
    client.post("/api/v1/auth/password", headers=headers,
                json={"current_password": PASSWORD, "new_password": NEW_PASSWORD})
    upload(client, headers, "skin_lesion")
    client.post("/api/v1/auth/logout", headers=headers)

    stored = json.dumps(table(gateway_db(stack)), default=str)
    logged = "\n".join(record.getMessage() for record in lines.records)
    for secret in (PASSWORD, NEW_PASSWORD, WRONG_PASSWORD, token, cookie, "Bearer"):
        assert secret not in stored and secret not in logged


def test_failed_log_ins_on_an_unknown_email_belong_to_no_account(client: httpx.Client, stack: Stack) -> None:
    email = f"nobody-{uuid.uuid4().hex[:10]}@example.org"
    assert client.post("/api/v1/auth/login", json={"email": email, "password": WRONG_PASSWORD}).status_code == 401
    last = table(gateway_db(stack))[-1]
    assert (last["event"], last["outcome"], last["user_id"]) == ("log_in", "failure", None)
    assert email not in json.dumps(table(gateway_db(stack)), default=str)   # the email is not kept either


def test_throttled_log_ins_are_recorded_against_the_account(client: httpx.Client, stack: Stack) -> None:
    email, user_id = sign_up(client)
    codes = [client.post("/api/v1/auth/login", json={"email": email, "password": WRONG_PASSWORD}).status_code
             for _ in range(THROTTLE_AFTER + 1)]
    assert codes == [401] * THROTTLE_AFTER + [429]
    mine = [(row["event"], row["outcome"]) for row in table(gateway_db(stack)) if row["user_id"] == user_id]
    assert mine == [("sign_up", "success")] + [("log_in", "failure")] * THROTTLE_AFTER + [("log_in", "throttled")]


def test_throttled_sign_ups_are_recorded_and_old_events_are_purged_at_start(tmp_path: Path) -> None:
    """Sign-up throttling concerns no account yet (operators only). The retention purge runs when the
    gateway starts (and every audit_purge_interval_s after)."""
    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    engine = create_database_engine(url)
    migrate(engine)
    with session_factory(engine)() as session:
        for days in (400, 10):
            session.add(audit.Entry(event="log_in", outcome="success", user_id="old", ip="192.0.2.1",
                                    user_agent="", at=utc_now() - timedelta(days=days)).row())
        session.commit()
    engine.dispose()
    auth = start_auth(stack_auth_settings(tmp_path, {"throttle_max_sign_ups_per_ip": 1}))
    gateway = start_gateway(GatewaySettings(DRTECH_HOME=tmp_path, DRTECH_AUTH_ADDR=f"127.0.0.1:{auth.port}",
                                            audit_retention_days=365))
    try:
        with httpx.Client(base_url=gateway.url, timeout=30, headers={"User-Agent": AGENT}) as client:
            sign_up(client)
            refused = client.post("/api/v1/auth/signup", json={
                "email": f"{uuid.uuid4().hex[:8]}@example.com", "password": PASSWORD,
                "first_name": "Ada", "surname": "Lovelace"})
            assert refused.status_code == 429
        deadline = time.monotonic() + 30   # the purge runs beside start-up, not before it
        while len(old_events(url)) > 1 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        gateway.stop()
        auth.stop(0)
    rows = table(url)
    assert [(row["event"], row["outcome"], row["user_id"] is None) for row in rows[-2:]] == [
        ("sign_up", "success", False), ("sign_up", "throttled", True)]
    # The 400-day-old event went, the 10-day-old one stays.
    assert [row["at"] for row in old_events(url)] == [row["at"] for row in rows if row["user_id"] == "old"][-1:]
    assert len(old_events(url)) == 1


def old_events(url: str) -> list[dict]:
    return [row for row in table(url) if row["user_id"] == "old"]


# --- access to records ----------------------------------------------------------------------------


def test_every_access_to_a_record_is_recorded_with_the_record(client: httpx.Client, stack: Stack,
                                                              lines: Lines) -> None:
    email, user_id = sign_up(client)
    headers = log_in(client, email)
    made = upload(client, headers, "skin_lesion", explain=True)
    assert client.get(f"/api/v1/diagnoses/{made['id']}", headers=headers).status_code == 200
    image = client.get(made["image_url"], headers=headers)
    assert image.status_code == 200
    assert client.get(made["heatmap_url"], headers=headers).status_code == 200
    failed = upload(client, headers, "chest_xray")     # the pneumonia service is down
    assert failed["status"] == "failed"
    assert client.post(f"/api/v1/diagnoses/{failed['id']}/retry", headers=headers).status_code == 200
    assert client.delete(f"/api/v1/diagnoses/{failed['id']}", headers=headers).status_code == 204
    assert client.get(f"/api/v1/diagnoses/{failed['id']}", headers=headers).status_code == 404

    items = activity(client, headers, limit=8)["items"]
    assert [(item["event"], item["outcome"], item.get("diagnosis_id")) for item in items] == [
        ("diagnosis_view", "not_found", failed["id"]),
        ("diagnosis_delete", "success", failed["id"]),
        ("diagnosis_retry", "success", failed["id"]),
        ("diagnosis_create", "success", failed["id"]),
        ("diagnosis_heatmap", "success", made["id"]),
        ("diagnosis_image", "success", made["id"]),
        ("diagnosis_view", "success", made["id"]),
        ("diagnosis_create", "success", made["id"]),
    ]
    # No pixels anywhere: the image's bytes are in no row and no log line.
    assert image.content[:64].hex() not in json.dumps(table(gateway_db(stack)), default=str)
    assert all(set(line) == {"event", "outcome", "user_id", "diagnosis_id", "ip", "user_agent", "at", "stored"}
               for line in lines.events())


def test_someone_elses_record_is_the_callers_not_found_and_not_the_owners_event(client: httpx.Client) -> None:
    owner = log_in(client, sign_up(client)[0])
    other = log_in(client, sign_up(client)[0])
    made = upload(client, owner, "skin_lesion")
    assert client.get(f"/api/v1/diagnoses/{made['id']}", headers=other).status_code == 404
    assert client.get(made["image_url"], headers=other).status_code == 404
    theirs = activity(client, other)["items"]
    assert [(item["event"], item["outcome"]) for item in theirs[:2]] == [
        ("diagnosis_image", "not_found"), ("diagnosis_view", "not_found")]
    assert all(item.get("diagnosis_id") != made["id"] or item["outcome"] == "not_found" for item in theirs)
    mine = activity(client, owner)["items"]
    assert [item["event"] for item in mine] == ["diagnosis_create", "log_in", "sign_up"]


def test_activity_is_paged_like_the_history_with_the_same_errors(client: httpx.Client) -> None:
    email, _ = sign_up(client)
    for _ in range(3):
        headers = log_in(client, email)
    everything = activity(client, headers)["items"]
    assert len(everything) == 4
    page = activity(client, headers, limit=2, offset=1)
    assert page["items"] == everything[1:3] and (page["total"], page["limit"], page["offset"]) == (4, 2, 1)
    assert activity(client, headers, limit="", offset="")["limit"] == 20   # empty means "not given"
    assert activity(client, headers, offset=10)["items"] == []
    for params, field in [({"limit": 0}, "limit"), ({"limit": 101}, "limit"), ({"offset": -1}, "offset"),
                          ({"limit": "many"}, "limit"), ({"offset": 10**10}, "offset")]:
        for path in ("/api/v1/me/activity", "/api/v1/diagnoses"):
            reply = client.get(path, headers=headers, params=params)
            assert reply.status_code == 422 and field in reply.json()["errors"], (path, params, reply.text)
    assert client.get("/api/v1/me/activity").status_code == 401


def test_activity_works_with_the_web_uis_cookie(client: httpx.Client) -> None:
    email, _ = sign_up(client)
    assert client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD}).status_code == 200
    reply = client.get("/api/v1/me/activity")
    assert reply.status_code == 200 and reply.json()["items"][0]["event"] == "log_in"
    client.cookies.clear()


# --- when the audit trail cannot be written -------------------------------------------------------


def _database_down(*args: object, **kwargs: object) -> None:
    raise OperationalError("INSERT INTO audit_events ...", {}, Exception("database is locked"))


def _audit_insert_fails(connection: object, cursor: object, statement: str, *args: object) -> None:
    if statement.startswith("INSERT INTO audit_events"):
        _database_down()


def test_an_access_that_cannot_be_recorded_is_not_served(
    client: httpx.Client, stack: Stack, lines: Lines, monkeypatch: pytest.MonkeyPatch
) -> None:
    headers = log_in(client, sign_up(client)[0])
    made = upload(client, headers, "skin_lesion", explain=True)
    monkeypatch.setattr(audit, "_store", _database_down)
    for path in (f"/api/v1/diagnoses/{made['id']}", made["image_url"], made["heatmap_url"]):
        reply = client.get(path, headers=headers)
        assert reply.status_code == 503 and reply.headers["content-type"] == "application/json", path
        assert "audit trail" in reply.json()["detail"] and made["label"] not in reply.text
    # ...and the event still left as a log line at ERROR, marked as not stored.
    unstored = [r for r in lines.records if r.levelno == logging.ERROR]
    assert [json.loads(r.getMessage())["event"] for r in unstored[-3:]] == [
        "diagnosis_view", "diagnosis_image", "diagnosis_heatmap"]
    assert all(json.loads(r.getMessage())["stored"] is False for r in unstored[-3:])


def test_a_change_and_its_audit_event_are_one_transaction(
    client: httpx.Client, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    headers = log_in(client, sign_up(client)[0])
    made = upload(client, headers, "skin_lesion")
    before = {p for p in (stack.home / "uploads").rglob("*") if p.is_file()}
    rows = len(table(gateway_db(stack)))
    # The event's INSERT fails, after the record's own DELETE or INSERT ran in the same transaction.
    event.listen(Engine, "before_cursor_execute", _audit_insert_fails)
    try:
        deleted = client.delete(f"/api/v1/diagnoses/{made['id']}", headers=headers)
        created = client.post("/api/v1/diagnoses", files={"file": ("x.jpg", sample_image_bytes("skin_lesion"))},
                              data={"exam_type": "skin_lesion"}, headers=headers)
    finally:
        event.remove(Engine, "before_cursor_execute", _audit_insert_fails)
    assert deleted.status_code == 503 and created.status_code == 503, (deleted.text, created.text)
    # Neither the delete nor the upload happened: the record is still there, no new file was kept.
    assert client.get(f"/api/v1/diagnoses/{made['id']}", headers=headers).status_code == 200
    assert {p for p in (stack.home / "uploads").rglob("*") if p.is_file()} == before
    assert len(table(gateway_db(stack))) == rows + 1   # just the view above


def test_a_log_in_that_cannot_be_recorded_is_undone_but_refusals_keep_their_answer(
    client: httpx.Client, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    email, user_id = sign_up(client)
    monkeypatch.setattr(audit, "_store", _database_down)
    reply = client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert reply.status_code == 503 and "access_token" not in reply.text and "set-cookie" not in reply.headers
    wrong = client.post("/api/v1/auth/login", json={"email": email, "password": WRONG_PASSWORD})
    assert wrong.status_code == 401
    monkeypatch.undo()
    # The session the auth service made for the 503 was ended at once.
    engine = create_engine(f"sqlite:///{stack.home / 'auth.db'}")
    try:
        with engine.connect() as connection:
            live = connection.execute(
                text("SELECT count(*) FROM sessions WHERE revoked_at IS NULL AND user_id = :id"),
                {"id": uuid.UUID(user_id).hex}).scalar()
            sessions = connection.execute(text("SELECT count(*) FROM sessions WHERE user_id = :id"),
                                          {"id": uuid.UUID(user_id).hex}).scalar()
    finally:
        engine.dispose()
    assert (sessions, live) == (1, 0)


# --- PostgreSQL -----------------------------------------------------------------------------------


def test_the_trail_is_kept_in_postgresql(stack: Stack, tmp_path: Path) -> None:
    from services.auth.testing import fresh_postgres_schema, postgres_unavailable_reason

    reason = postgres_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with fresh_postgres_schema() as url:
        gateway = start_gateway(stack.settings(tmp_path, database_url=url))
        try:
            with httpx.Client(base_url=gateway.url, timeout=60, headers={"User-Agent": AGENT}) as client:
                email, user_id = sign_up(client)
                headers = log_in(client, email)
                made = upload(client, headers, "skin_lesion")
                assert client.get(made["image_url"], headers=headers).status_code == 200
                assert client.delete(f"/api/v1/diagnoses/{made['id']}", headers=headers).status_code == 204
                items = activity(client, headers)["items"]
        finally:
            gateway.stop()
        assert [item["event"] for item in items] == [
            "diagnosis_delete", "diagnosis_image", "diagnosis_create", "log_in", "sign_up"]
        rows = table(url)
        assert [row["event"] for row in rows] == [item["event"] for item in reversed(items)]
        assert not list(tmp_path.rglob("*.db"))
