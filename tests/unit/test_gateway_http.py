"""The gateway's HTTP behaviour that needs no backend: error shapes, auth guards, limits, pages.

The app runs in-process through Starlette's TestClient (no sockets); the backends' addresses are
never called by these requests (they fail before any gRPC call is made).
"""

from __future__ import annotations

import asyncio
import base64
import errno
import hashlib
import io
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy.exc import OperationalError

from gateway import blob_protocol, records
from gateway.accounts import declared_body_bytes
from gateway.app import create_app, internal_app
from gateway.settings import GatewaySettings
from gateway.storage import StoreUnavailable
from protos.drtech.v1 import auth_pb2, diagnosis_pb2
from services.auth.session_metadata import SESSION_ENDS_IN_MS
from tests.support import FinishedCall

PAGES = ["/", "/signup", "/login", "/models"]


@pytest.fixture
def settings(tmp_path: Path) -> GatewaySettings:
    return GatewaySettings(DRTECH_HOME=tmp_path, max_upload_bytes=4096)


@pytest.fixture
def client(settings: GatewaySettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        yield client


def test_settings_default_to_development_paths_and_ports(tmp_path: Path) -> None:
    settings = GatewaySettings(DRTECH_HOME=tmp_path)
    assert settings.database_url == f"sqlite:///{tmp_path.as_posix()}/gateway.db"
    assert settings.http_port == 8000 and settings.host == "127.0.0.1"
    assert settings.auth_addr == "127.0.0.1:50051"
    assert settings.model_addrs == {   # every model service of the registry, at its default port
        "bone": "127.0.0.1:50052",
        "skin": "127.0.0.1:50053",
        "pneumonia": "127.0.0.1:50054",
        "router": "127.0.0.1:50055",
    }
    assert settings.cookie_secure is False
    production = GatewaySettings(DRTECH_HOME=tmp_path, DRTECH_ENV="production",
                                 database_url="postgresql+psycopg://drtech@db/drtech",
                                 blob_store="s3", s3_bucket="drtech-uploads")
    assert production.cookie_secure is True


def test_an_upload_limit_the_grpc_message_limit_cannot_carry_is_refused_at_start(tmp_path: Path) -> None:
    """Else uploads over the message limit would be accepted, stored, and never reach a model."""
    assert GatewaySettings(DRTECH_HOME=tmp_path, max_upload_bytes=20 * 1024 * 1024 - 64 * 1024)
    with pytest.raises(ValueError, match="DRTECH_MAX_MESSAGE_BYTES"):
        GatewaySettings(DRTECH_HOME=tmp_path, max_upload_bytes=32 * 1024 * 1024)
    raised = GatewaySettings(DRTECH_HOME=tmp_path, max_upload_bytes=32 * 1024 * 1024,
                             DRTECH_MAX_MESSAGE_BYTES=33 * 1024 * 1024)
    assert raised.max_upload_bytes == 32 * 1024 * 1024


def test_trusted_proxies_are_addresses_or_networks_and_never_everyone_in_production(tmp_path: Path) -> None:
    """X-Forwarded-For is believed only from these (log-in throttling keys on the client IP)."""
    settings = GatewaySettings(DRTECH_HOME=tmp_path, forwarded_allow_ips=" 10.244.0.0/16, 127.0.0.1,::1 ")
    assert settings.forwarded_allow_ips == "10.244.0.0/16,127.0.0.1,::1"
    # "*" lets any caller choose its own client IP: fine on a laptop, refused in production.
    assert GatewaySettings(DRTECH_HOME=tmp_path, forwarded_allow_ips="*").forwarded_allow_ips == "*"
    with pytest.raises(ValueError, match="FORWARDED_ALLOW_IPS is '\\*'"):
        GatewaySettings(DRTECH_HOME=tmp_path, DRTECH_ENV="production", forwarded_allow_ips="*")
    # uvicorn would silently treat a mistyped network as a name that never matches.
    for wrong in ("10.244.0.0/33", "10.244.1.0/16", "ingress-nginx", ""):
        with pytest.raises(ValueError, match="forwarded_allow_ips"):
            GatewaySettings(DRTECH_HOME=tmp_path, forwarded_allow_ips=wrong)


def test_startup_creates_the_database_schema_with_alembic(
    client: TestClient, settings: GatewaySettings
) -> None:
    import sqlalchemy

    engine = sqlalchemy.create_engine(settings.database_url)
    tables = set(sqlalchemy.inspect(engine).get_table_names())
    engine.dispose()
    assert {"diagnoses", "gateway_alembic_version"} <= tables


def test_healthz_is_200_without_any_backend(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_signup_schema_errors_are_422_with_one_message_per_field(client: TestClient) -> None:
    reply = client.post("/api/v1/auth/signup", json={"email": "a@example.org", "first_name": 5})
    assert reply.status_code == 422
    body = reply.json()
    assert body["errors"] == {
        "password": "This field is required.",
        "first_name": "Must be text.",
        "surname": "This field is required.",
    }
    assert body["detail"].startswith("Invalid fields: ") and "password" in body["detail"]


def test_signup_rule_errors_use_the_same_shape_and_the_auth_services_messages(client: TestClient) -> None:
    reply = client.post(
        "/api/v1/auth/signup",
        json={
            "email": "not-an-email",
            "password": "short",
            "first_name": "Ada",
            "surname": " ",
            "zip": "1234",
            "birth_date": "2999-01-01",
            "gender": "robot",
        },
    )
    assert reply.status_code == 422
    errors = reply.json()["errors"]
    assert set(errors) == {"email", "password", "surname", "zip", "birth_date", "gender"}
    assert errors["email"] == "Enter a valid email address, like name@example.com."
    assert errors["password"] == "Password must be at least 12 characters."
    assert errors["birth_date"] == "Birth date cannot be in the future."


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b""])
def test_a_body_that_is_not_a_json_object_is_422_not_500(client: TestClient, body: bytes) -> None:
    reply = client.post("/api/v1/auth/login", content=body, headers={"Content-Type": "application/json"})
    assert reply.status_code == 422
    assert reply.json()["detail"]
    # Bad JSON is the body's fault, not that of a "field" named after a character offset.
    assert set(reply.json().get("errors", {"body": ""})) == {"body"}


def test_login_without_fields_is_422(client: TestClient) -> None:
    reply = client.post("/api/v1/auth/login", json={})
    assert reply.status_code == 422
    assert set(reply.json()["errors"]) == {"email", "password"}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/me"),
        ("GET", "/api/v1/diagnoses"),
        ("GET", "/api/v1/diagnoses/123"),
        ("DELETE", "/api/v1/diagnoses/123"),
        ("GET", "/api/v1/diagnoses/123/image"),
        ("GET", "/api/v1/diagnoses/123/heatmap"),
        ("POST", "/api/v1/auth/logout"),
        ("POST", "/api/v1/auth/logout-all"),
        ("POST", "/api/v1/auth/password"),
    ],
)
def test_calls_without_a_token_are_401_with_a_detail(client: TestClient, method: str, path: str) -> None:
    reply = client.request(method, path)
    assert reply.status_code == 401
    assert "Bearer" in reply.json()["detail"]
    assert reply.headers["www-authenticate"] == "Bearer"


def test_text_with_an_unpaired_surrogate_is_422_for_its_field_not_a_500(client: TestClient) -> None:
    """JSON can escape half a UTF-16 pair ("\\ud800"), which protobuf and UTF-8 cannot carry."""
    for path, body, field in [
        ("/api/v1/auth/login", '{"email": "a@example.org", "password": "\\ud800xxxxxxxx"}', "password"),
        ("/api/v1/auth/signup", ('{"email": "a@example.org", "password": "correct horse 42", '
                                '"first_name": "A\\ud800", "surname": "B"}'), "first_name"),
        ("/api/v1/auth/signup/check", '{"city": "\\udfff"}', "city"),
    ]:
        reply = client.post(path, content=body, headers={"Content-Type": "application/json"})
        assert reply.status_code == 422, (path, reply.text)
        assert reply.json()["errors"] == {field: "Must be valid text (it holds an unpaired surrogate)."}


LIVE_TOKEN = "live-token"


class OneLiveSession:
    """The auth service as the gateway calls it, knowing one live session; every other token is
    expired or revoked."""

    def __init__(self) -> None:
        self.logged_out: list[str] = []

    def Authenticate(self, request: auth_pb2.AuthenticateRequest, timeout: float) -> FinishedCall:
        if request.access_token != LIVE_TOKEN or request.access_token in self.logged_out:
            refused = grpc.aio.AioRpcError(grpc.StatusCode.UNAUTHENTICATED, grpc.aio.Metadata(),
                                           grpc.aio.Metadata(), "invalid or expired session")
            return FinishedCall(error=refused)
        user = auth_pb2.User(id="user-1", email="ada@example.org", first_name="Ada", surname="Lovelace")
        return FinishedCall(user, grpc.aio.Metadata((SESSION_ENDS_IN_MS, "600000")))

    async def LogOut(self, request: auth_pb2.LogOutRequest, timeout: float) -> auth_pb2.LogOutResponse:
        await self.Authenticate(auth_pb2.AuthenticateRequest(access_token=request.access_token), timeout)
        self.logged_out.append(request.access_token)
        return auth_pb2.LogOutResponse(user_id="user-1")


@pytest.fixture
def sessions(client: TestClient) -> OneLiveSession:
    auth = OneLiveSession()
    client.app.state.gateway.backends.auth = auth
    return auth


def test_a_live_cookie_session_needs_the_csrf_header_to_change_anything(
    client: TestClient, sessions: OneLiveSession
) -> None:
    client.cookies.set("drtech_session", LIVE_TOKEN)
    assert client.get("/api/v1/me").status_code == 200
    for method, path in [("POST", "/api/v1/auth/logout"), ("DELETE", "/api/v1/diagnoses/1"),
                         ("POST", "/api/v1/diagnoses"), ("POST", "/api/v1/auth/logout-all"),
                         ("POST", "/api/v1/auth/password")]:
        reply = client.request(method, path)
        assert reply.status_code == 403, (method, path)
        assert "X-Requested-With" in reply.json()["detail"]
    assert sessions.logged_out == []
    assert client.post("/api/v1/auth/logout", headers={"X-Requested-With": "fetch"}).status_code == 204
    assert sessions.logged_out == [LIVE_TOKEN]


def test_a_revoked_cookie_session_is_401_with_or_without_the_csrf_header(
    client: TestClient, sessions: OneLiveSession
) -> None:
    """API.md: a missing, expired or revoked token gets 401; the CSRF guard only protects live sessions."""
    client.cookies.set("drtech_session", "revoked-token")
    for headers in [{}, {"X-Requested-With": "fetch"}]:
        for method, path in [("GET", "/api/v1/me"), ("DELETE", "/api/v1/diagnoses/1"),
                             ("POST", "/api/v1/diagnoses")]:
            reply = client.request(method, path, headers=headers)
            assert reply.status_code == 401, (method, path, headers, reply.text)
            assert reply.headers["WWW-Authenticate"] == "Bearer"
        # Logging out of a dead session is idempotent, and clears the cookie.
        reply = client.post("/api/v1/auth/logout", headers=headers)
        assert reply.status_code == 204
        assert "drtech_session=" in reply.headers["set-cookie"]
        client.cookies.set("drtech_session", "revoked-token")


def test_the_account_page_has_the_change_password_form_and_log_out_everywhere(
    client: TestClient, sessions: OneLiveSession
) -> None:
    client.cookies.set("drtech_session", LIVE_TOKEN)
    html = client.get("/account").text
    for field in ["current_password", "new_password"]:
        assert f'<label for="{field}"' in html and f'id="{field}-error"' in html
    assert 'autocomplete="new-password"' in html and 'minlength="12"' in html
    assert 'id="logout-all-button"' in html and 'href="/account" aria-current="page"' in html


def test_the_sign_up_page_states_the_12_character_rule(client: TestClient) -> None:
    html = client.get("/signup").text
    assert "12 to 128 characters of any kind" in html and 'minlength="12"' in html
    assert "one letter and one digit" not in html


class NothingAnswers:
    """A backend that is down: every call the gateway makes fails with UNAVAILABLE, as a real
    channel to a closed port does (tests/integration/test_gateway_backends_down.py)."""

    def __getattr__(self, method: str):  # type: ignore[no-untyped-def]
        async def unavailable(request: object, timeout: float) -> None:
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                       "failed to connect to all addresses")
        return unavailable


class ChestModelThatExplains:
    """A chest X-ray model service as the gateway calls it: NORMAL, with a heatmap when asked."""

    async def Diagnose(self, request: diagnosis_pb2.DiagnoseRequest, timeout: float) -> diagnosis_pb2.DiagnoseResponse:
        reply = diagnosis_pb2.DiagnoseResponse(
            label="NORMAL", label_display="Normal", confidence=0.9,
            model=diagnosis_pb2.ModelRef(name="pneumonia", version="test"),
            probabilities=[diagnosis_pb2.ClassProbability(label="NORMAL", probability=0.9),
                           diagnosis_pb2.ClassProbability(label="PNEUMONIA", probability=0.1)])
        if request.explain:
            reply.heatmap.png = png_bytes(Image.new("RGB", (8, 8), (200, 0, 0)))
            reply.heatmap.method = "grad-cam"
        return reply


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def chest_model(client: TestClient, sessions: OneLiveSession) -> None:
    client.app.state.gateway.backends.models["pneumonia"] = ChestModelThatExplains()


def _stored(settings: GatewaySettings) -> list[str]:
    return sorted(path.name for path in settings.uploads_dir.rglob("*") if path.is_file())


def test_an_upload_whose_heatmap_cannot_be_stored_leaves_no_image_behind(
    client: TestClient, settings: GatewaySettings, chest_model: None
) -> None:
    """A failed heatmap write (disk full) must not leave a medical image that no record names, and the
    client is told to come back (503), not that the server broke (500)."""
    def disk_full(data: bytes) -> str:
        raise StoreUnavailable("No space left on device")   # what LocalBlobStore.put raises then

    client.app.state.gateway.heatmaps.put = disk_full
    upload = png_bytes(Image.new("RGB", (32, 32), (10, 20, 30)))
    reply = client.post("/api/v1/diagnoses", params={"explain": "true"}, files={"file": ("x.png", upload)},
                        data={"exam_type": "chest_xray"}, headers={"Authorization": f"Bearer {LIVE_TOKEN}"})
    assert reply.status_code == 503, reply.text
    assert reply.headers["Retry-After"] == "30"
    assert "No space left on device" in reply.json()["detail"]
    assert _stored(settings) == []
    assert client.get("/api/v1/diagnoses", headers={"Authorization": f"Bearer {LIVE_TOKEN}"}).json()["total"] == 0


def test_an_upload_whose_record_is_committed_is_answered_as_kept_even_if_the_store_then_fails(
    client: TestClient, chest_model: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """After the commit the writer checks that no concurrent delete took its blob; when the store
    cannot answer that check, the record is still kept: a 503 ("nothing was kept") would be untrue,
    and the client's retry would make a second diagnosis."""
    uploads = client.app.state.gateway.uploads

    def store_gone(digest: str) -> bool:
        raise StoreUnavailable("the object store did not answer: EndpointConnectionError")

    monkeypatch.setattr(uploads, "exists", store_gone)   # only the check after the commit asks
    headers = {"Authorization": f"Bearer {LIVE_TOKEN}"}
    reply = client.post("/api/v1/diagnoses", files={"file": ("x.png", png_bytes(Image.new("RGB", (32, 32))))},
                        data={"exam_type": "chest_xray"}, headers=headers)
    assert reply.status_code == 201, reply.text
    assert client.get("/api/v1/diagnoses", headers=headers).json()["total"] == 1
    assert any("is kept, but whether its blobs" in record.getMessage() for record in caplog.records)
    monkeypatch.undo()
    assert client.get(reply.json()["image_url"], headers=headers).status_code == 200


def test_an_upload_whose_record_cannot_be_written_leaves_no_image_once_the_database_is_back(
    client: TestClient, settings: GatewaySettings, chest_model: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The records database gone between the model's answer and the record's commit: 503, and the
    stored blobs, which nobody could then ask about, are deleted once the database answers again."""
    down = OperationalError("INSERT INTO diagnoses", {}, ConnectionRefusedError("database unreachable"))

    def unreachable(*args: object, **kwargs: object) -> bool:
        raise down

    with monkeypatch.context() as outage:
        for name in ("add_all", "image_in_use", "heatmap_in_use"):
            outage.setattr(records, name, unreachable)
        upload = png_bytes(Image.new("RGB", (32, 32), (10, 20, 30)))
        reply = client.post("/api/v1/diagnoses", params={"explain": "true"}, files={"file": ("x.png", upload)},
                            data={"exam_type": "chest_xray"}, headers={"Authorization": f"Bearer {LIVE_TOKEN}"})
        assert reply.status_code == 503, reply.text
        assert reply.headers["Retry-After"] == "5"
        assert len(_stored(settings)) == 1   # not deleted yet: no one could say no record names it
        assert blob_protocol.forget_pending(client.app.state.gateway) == 1   # still unreachable: pending

    assert blob_protocol.forget_pending(client.app.state.gateway) == 0
    assert _stored(settings) == []
    assert sorted(p.name for p in settings.heatmaps_dir.rglob("*") if p.is_file()) == []


def test_a_database_pool_with_no_free_connection_is_503_not_500(
    client: TestClient, sessions: OneLiveSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every pooled connection in use past db_pool_timeout_s (what SQLAlchemy's QueuePool raises then):
    the client is told to come back, as for a database that is down."""
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    def pool_exhausted(*args: object, **kwargs: object) -> object:
        raise PoolTimeout("QueuePool limit of size 1 overflow 0 reached, connection timed out, timeout 0.50")

    monkeypatch.setattr(records, "list_owned", pool_exhausted)
    reply = client.get("/api/v1/diagnoses", headers={"Authorization": f"Bearer {LIVE_TOKEN}"})
    assert reply.status_code == 503, reply.text
    assert reply.headers["Retry-After"] == "5"
    assert "busy" in reply.json()["detail"]


def test_an_image_refused_for_want_of_its_audit_row_closes_the_file_it_opened(
    client: TestClient, chest_model: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stored image is opened before its access is recorded (a missing one is 410, not a recorded
    success); when the record cannot be written the answer is 503, and the file (on S3, a pooled
    connection) must not stay open until the garbage collector finds it."""
    from gateway import audit

    headers = {"Authorization": f"Bearer {LIVE_TOKEN}"}
    made = client.post("/api/v1/diagnoses", files={"file": ("x.png", png_bytes(Image.new("RGB", (32, 32))))},
                       data={"exam_type": "chest_xray"}, headers=headers).json()
    uploads = client.app.state.gateway.uploads
    opened = []

    def tracked(digest: str):
        blob = type(uploads).open(uploads, digest)
        opened.append(blob.close.__self__)   # the file object the blob streams from
        return blob

    monkeypatch.setattr(uploads, "open", tracked)
    assert client.get(made["image_url"], headers=headers).status_code == 200 and opened[-1].closed

    def database_down(*args: object, **kwargs: object) -> None:
        raise OperationalError("INSERT INTO audit_events", {}, ConnectionRefusedError("database unreachable"))

    monkeypatch.setattr(audit, "_store", database_down)
    refused = client.get(made["image_url"], headers=headers)
    assert refused.status_code == 503, refused.text
    assert len(opened) == 2 and opened[-1].closed


def test_a_deleted_diagnosis_leaves_no_image_even_when_its_delete_fails_part_way(
    client: TestClient, settings: GatewaySettings, chest_model: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record goes at once (204); its image, moved aside, cannot be removed this time (the disk
    answers EIO): the background retry removes the copy, so no deleted image stays stored."""
    headers = {"Authorization": f"Bearer {LIVE_TOKEN}"}
    made = client.post("/api/v1/diagnoses", files={"file": ("x.png", png_bytes(Image.new("RGB", (32, 32))))},
                       data={"exam_type": "chest_xray"}, headers=headers).json()
    real_unlink = Path.unlink

    def unlink(path: Path, missing_ok: bool = False) -> None:
        if path.name.startswith(".deleting-"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_unlink(path, missing_ok=missing_ok)

    with monkeypatch.context() as failing:
        failing.setattr(Path, "unlink", unlink)
        assert client.delete(f"/api/v1/diagnoses/{made['id']}", headers=headers).status_code == 204
    assert [name for name in _stored(settings) if name.startswith(".deleting-")], "the copy aside, for now"

    assert blob_protocol.forget_pending(client.app.state.gateway) == 0
    assert _stored(settings) == []


def test_a_stored_image_ignores_range_and_comes_whole(
    client: TestClient, settings: GatewaySettings, chest_model: None
) -> None:
    """Starlette would answer a bad Range in plain text, outside the API's JSON errors; a server may
    ignore Range (RFC 9110), and these images are fetched whole."""
    auth = {"Authorization": f"Bearer {LIVE_TOKEN}"}
    upload = png_bytes(Image.new("RGB", (32, 32), (10, 20, 30)))
    created = client.post("/api/v1/diagnoses", files={"file": ("x.png", upload)}, data={"exam_type": "chest_xray"},
                          headers=auth)
    assert created.status_code == 201, created.text
    for wanted in ["bytes=5-2", "items=0-1", "bytes=", "bytes=99999-", "bytes=0-9"]:
        reply = client.get(f"/api/v1/diagnoses/{created.json()['id']}/image", headers={**auth, "Range": wanted})
        assert reply.status_code == 200, (wanted, reply.status_code, reply.text)
        assert reply.content == upload and reply.headers["accept-ranges"] == "none"
    plots = client.get("/api/v1/models/pneumonia/plots").json()["plots"]
    if plots:
        reply = client.get(plots[0], headers={"Range": "bytes=5-2"})
        assert reply.status_code == 200 and reply.headers["content-type"] == "image/png"


def _post_counting_reads(client: TestClient, path: str, headers: dict[str, str],
                         upload: bytes) -> tuple[int, dict[str, str], bytes, int]:
    """POST a multipart upload to the running app at the ASGI level: (status, headers, body, how many
    times the app read from the request body)."""
    boundary = "b0undary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="exam_type"\r\n\r\nchest_xray\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n'
            ).encode() + upload + f"\r\n--{boundary}--\r\n".encode()
    reads = 0
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
        "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5000), "app": client.app,
        "headers": [(b"host", b"127.0.0.1"), (b"content-length", str(len(body)).encode()),
                    (b"content-type", f"multipart/form-data; boundary={boundary}".encode()),
                    *[(name.lower().encode(), value.encode()) for name, value in headers.items()]],
    }
    client.portal.call(client.app, scope, receive, send)
    start = next(message for message in sent if message["type"] == "http.response.start")
    reply_headers = {name.decode(): value.decode() for name, value in start["headers"]}
    reply = b"".join(message.get("body", b"") for message in sent if message["type"] == "http.response.body")
    return start["status"], reply_headers, reply, reads


def _refused_then_accepted(client: TestClient, fill: tuple[int, int]) -> None:
    """With the upload queue holding `fill` (uploads, bytes) of others, the next upload is 503 before
    its body is read; once they are gone, the same upload is accepted, and the queue is empty after."""
    queue = client.app.state.gateway.upload_queue
    others, others_bytes = fill
    queue.uploads += others
    queue.reserved_bytes += others_bytes
    auth = {"Authorization": f"Bearer {LIVE_TOKEN}"}
    upload = png_bytes(Image.new("RGB", (32, 32), (10, 20, 30)))
    try:
        status, headers, body, reads = _post_counting_reads(client, "/api/v1/diagnoses", auth, upload)
        assert status == 503 and headers["retry-after"] == "5"
        assert "upload queue is full" in json.loads(body)["detail"]
        assert reads == 0                                      # refused before a byte of the body
    finally:
        queue.uploads -= others
        queue.reserved_bytes -= others_bytes
    accepted = client.post("/api/v1/diagnoses", files={"file": ("x.png", upload)},
                           data={"exam_type": "chest_xray"}, headers=auth)
    assert accepted.status_code == 201, accepted.text
    assert (queue.uploads, queue.reserved_bytes) == (0, 0)


def test_past_the_upload_queue_count_an_upload_is_503_before_its_body_is_read(
    client: TestClient, chest_model: None
) -> None:
    """Each waiting body is held (spooled to /tmp, or in memory below 1 MiB): unbounded, a burst fills
    the pod's disk or memory and gets it evicted. The default takes 32 concurrent clients and more."""
    queue = client.app.state.gateway.upload_queue
    assert queue.max_uploads == 64                             # DRTECH_GATEWAY_PENDING_UPLOADS
    _refused_then_accepted(client, (64, 0))


def test_past_the_upload_queue_bytes_an_upload_is_503_before_its_body_is_read(
    client: TestClient, chest_model: None
) -> None:
    """The queue is sized in bytes to the pod's /tmp: a few uploads of the largest size fill it before
    its count does. An upload is counted at its declared Content-Length."""
    queue = client.app.state.gateway.upload_queue
    assert queue.max_bytes == 384 * 1024 * 1024                # DRTECH_GATEWAY_UPLOAD_QUEUE_BYTES
    _refused_then_accepted(client, (3, queue.max_bytes - 100))  # room left: less than the upload


def test_a_chunked_upload_is_queued_at_the_largest_accepted_size() -> None:
    """Without Content-Length the body may be as large as the limit lets it (BodySizeLimit stops it
    there): the queue reserves that much, so chunked bodies cannot overfill /tmp."""
    limit = 20 * 1024 * 1024
    assert declared_body_bytes({"headers": [(b"content-length", b"1234")]}, limit) == 1234
    assert declared_body_bytes({"headers": [(b"transfer-encoding", b"chunked")]}, limit) == limit
    assert declared_body_bytes({"headers": [(b"content-length", b"x")]}, limit) == limit
    assert declared_body_bytes({"headers": [(b"content-length", b"999999999999")]}, limit) == limit


def test_an_upload_queue_smaller_than_one_upload_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="upload_queue_bytes"):
        GatewaySettings(DRTECH_HOME=tmp_path, upload_queue_bytes=10 * 1024 * 1024)


def test_the_size_limits_refusals_carry_the_security_headers(client: TestClient) -> None:
    """The size limit answers before the app: its 413 (and 400) must not go out without them."""
    reply = client.post("/api/v1/auth/signup/check", content=b"x" * 10_000_000,
                        headers={"Content-Type": "application/json"})
    assert reply.status_code == 413
    assert reply.headers["cache-control"] == "no-store" and reply.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in reply.headers["content-security-policy"]


def test_an_upload_over_the_limit_is_413_before_it_is_read(client: TestClient) -> None:
    reply = client.post(
        "/api/v1/diagnoses",
        files={"file": ("x.jpg", b"\xff\xd8\xff" + b"0" * 200_000, "image/jpeg")},
        data={"exam_type": "chest_xray"},
        headers={"Authorization": "Bearer x"},
    )
    assert reply.status_code == 413
    assert "limit" in reply.json()["detail"]


def test_a_chunked_body_over_the_limit_is_413_without_reading_the_rest(settings: GatewaySettings) -> None:
    """No Content-Length to refuse by: the bytes are counted and reading stops at the limit, before
    the body is parsed (driven at the ASGI level, since the test client would buffer the whole body
    first). A log-in, since an upload's caller is authenticated before its body is read (below)."""
    head = b'{"email": "a@b.co", "password": "'
    chunks_read = 0
    replies: list[dict] = []

    async def receive() -> dict:
        nonlocal chunks_read
        chunks_read += 1   # 1000 chunks of 16 KiB (16 MB) offered; the limit is 4 KiB + form overhead
        return {"type": "http.request", "body": head if chunks_read == 1 else b"0" * 16384,
                "more_body": chunks_read < 1000}

    async def send(message: dict) -> None:
        replies.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/api/v1/auth/login", "raw_path": b"/api/v1/auth/login",
        "root_path": "", "query_string": b"", "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5000),
        "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                    (b"transfer-encoding", b"chunked")],
    }
    asyncio.run(create_app(settings)(scope, receive, send))

    assert replies[0]["type"] == "http.response.start" and replies[0]["status"] == 413
    assert b"limit" in b"".join(m.get("body", b"") for m in replies[1:])
    assert chunks_read < 10


def test_a_chunked_json_body_over_the_limit_is_413(client: TestClient) -> None:
    def body() -> Iterator[bytes]:
        yield b'{"email": "'
        for _ in range(100):
            yield b"a" * 16384
        yield b'"}'

    reply = client.post("/api/v1/auth/login", content=body(), headers={"Content-Type": "application/json"})
    assert reply.status_code == 413


def test_unknown_paths_and_methods_get_json_errors(client: TestClient) -> None:
    missing = client.get("/api/v1/nothing-here")
    assert missing.status_code == 404 and missing.json() == {"detail": "Not found: /api/v1/nothing-here"}
    wrong = client.put("/api/v1/auth/login")
    assert wrong.status_code == 405 and "PUT" in wrong.json()["detail"]


@pytest.fixture
def internal(client: TestClient) -> TestClient:
    """The internal port's app, sharing the context the public app's start-up built (its own event
    loop here: fine for /metrics, not for the gRPC health checks, which tests/integration make)."""
    return TestClient(internal_app(client.app), base_url="http://127.0.0.1")


def test_metrics_and_the_gateways_own_readiness_are_never_on_the_public_port(
    client: TestClient, internal: TestClient
) -> None:
    for path in ("/metrics", "/readyz/gateway"):
        assert client.get(path).status_code == 404, path
    assert internal.get("/metrics").status_code == 200
    assert internal.get("/healthz").json() == {"status": "ok"}
    # The internal port serves nothing else: no API, no pages.
    assert internal.get("/api/v1/models").status_code == 404 and internal.get("/").status_code == 404


def test_metrics_count_requests_by_route_template_and_status(client: TestClient, internal: TestClient) -> None:
    client.get("/healthz")
    client.get("/api/v1/diagnoses/abc")
    text = internal.get("/metrics").text
    assert 'drtech_http_requests_total{method="GET",route="/healthz",status="200"} 1.0' in text
    assert 'route="/api/v1/diagnoses/{diagnosis_id}",status="401"' in text
    assert "drtech_http_request_duration_seconds_bucket" in text
    assert "drtech_diagnoses_total" in text


def test_made_up_methods_share_one_metrics_series(client: TestClient, internal: TestClient) -> None:
    for index in range(3):
        client.request(f"FOO{index}", "/healthz")
    text = internal.get("/metrics").text
    assert "FOO" not in text
    assert 'drtech_http_requests_total{method="OTHER",route="/healthz",status="405"} 3.0' in text


@pytest.mark.parametrize("path", PAGES)
def test_every_page_says_not_for_clinical_use_and_loads_nothing_from_elsewhere(
    client: TestClient, path: str
) -> None:
    reply = client.get(path)
    assert reply.status_code == 200
    assert "text/html" in reply.headers["content-type"]
    assert "Not for clinical use" in reply.text
    assert not re.search(r"""(src|href)=["'](https?:)?//""", reply.text), "external resource on the page"
    assert "default-src 'self'" in reply.headers["content-security-policy"]
    # Without JavaScript the forms cannot work: the page says so instead of failing silently.
    assert "<noscript>" in reply.text and "need JavaScript" in reply.text


def test_model_addresses_are_one_mapping_and_a_per_name_variable_replaces_one_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRTECH_MODEL_ADDRS", '{"lungs": "lungs:50056", "router": "router:50055"}')
    monkeypatch.setenv("DRTECH_ROUTER_ADDR", "elsewhere:1")
    assert GatewaySettings(DRTECH_HOME=tmp_path).model_addrs == {"lungs": "lungs:50056", "router": "elsewhere:1"}
    given = GatewaySettings(DRTECH_HOME=tmp_path, DRTECH_LUNGS_ADDR="here:2")   # a keyword before the environment
    assert given.model_addrs == {"lungs": "here:2", "router": "elsewhere:1"}
    monkeypatch.delenv("DRTECH_MODEL_ADDRS")
    monkeypatch.setenv("DRTECH_BONE_ADDR", "bone.drtech.svc:50052")   # as deploy/k8s sets it
    assert GatewaySettings(DRTECH_HOME=tmp_path).model_addrs["bone"] == "bone.drtech.svc:50052"


def test_pages_and_api_answers_are_never_stored_by_a_browser_but_static_files_may_be(
    client: TestClient,
) -> None:
    """Back after log-out on a shared computer must not show the last user's pages or findings."""
    backends = client.app.state.gateway.backends
    backends.models = dict.fromkeys(backends.models, NothingAnswers())   # /api/v1/models: 503, no-store too
    for path in [*PAGES, "/history", "/api/v1/models", "/api/v1/me", "/healthz"]:
        assert client.get(path).headers["cache-control"] == "no-store", path
    assert "cache-control" not in client.get("/static/app.js").headers


def test_the_signup_page_has_a_labelled_input_for_every_field(client: TestClient) -> None:
    html = client.get("/signup").text
    for field in [
        "email",
        "password",
        "first_name",
        "surname",
        "address1",
        "address2",
        "city",
        "state",
        "zip",
        "gender",
        "birth_date",
    ]:
        assert f'<label for="{field}"' in html
        assert f'id="{field}-error"' in html


@pytest.mark.parametrize("path", ["/app", "/history", "/results/abc", "/account"])
def test_pages_that_need_an_account_send_visitors_to_log_in(client: TestClient, path: str) -> None:
    reply = client.get(path, follow_redirects=False)
    assert reply.status_code == 303
    assert reply.headers["location"] == f"/login?next={path}"


@pytest.mark.parametrize("target", [
    "//evil.example/x", "https://evil.example", "/\\evil.example", "/\t/evil.example", "/\n/evil.example",
    "/ /evil.example", "evil.example",
])
def test_login_page_refuses_an_open_redirect(client: TestClient, target: str) -> None:
    """Browsers read a backslash as a slash and drop tabs and newlines: each of these would leave the site."""
    assert 'data-next="/app"' in client.get("/login", params={"next": target}).text


def test_login_page_keeps_a_same_site_next_page(client: TestClient) -> None:
    page = client.get("/login", params={"next": "/results/abc?x=1"}).text
    assert 'data-next="/results/abc?x=1"' in page.replace("&amp;", "&")


def test_static_assets_are_served_and_self_contained(client: TestClient) -> None:
    for asset in ["/static/app.js", "/static/app.css"]:
        reply = client.get(asset)
        assert reply.status_code == 200
        assert "http://" not in reply.text and "https://" not in reply.text


def test_the_openapi_schema_answers_and_documents_the_api_but_not_the_pages(client: TestClient) -> None:
    reply = client.get("/openapi.json")
    assert reply.status_code == 200, reply.text
    paths = reply.json()["paths"]
    for path, method, status in [("/api/v1/auth/signup", "post", "201"), ("/api/v1/diagnoses", "get", "200"),
                                 ("/api/v1/diagnoses/{diagnosis_id}/image", "get", "200"),
                                 ("/api/v1/models/{task}/plots/{name}", "get", "200")]:
        assert status in paths[path][method]["responses"], (path, method)
    assert not {"/", "/app", "/docs", "/favicon.ico"} & set(paths)


def test_the_interactive_docs_are_served_from_here_with_only_their_own_script_allowed(
    client: TestClient,
) -> None:
    reply = client.get("/docs")
    assert reply.status_code == 200 and "text/html" in reply.headers["content-type"]
    assert not re.search(r"""(src|href)=["'](https?:)?//""", reply.text), "external resource on /docs"
    for asset in re.findall(r"""(?:src|href)=["']([^"']+)["']""", reply.text):
        assert client.get(asset).status_code == 200, asset
    # The one inline script (Swagger UI's start) is admitted by its hash; nothing inline otherwise.
    policy = reply.headers["content-security-policy"]
    inline = re.findall(r"<script>(.*?)</script>", reply.text, flags=re.DOTALL)
    assert len(inline) == 1 and "/openapi.json" in inline[0]
    digest = base64.b64encode(hashlib.sha256(inline[0].encode()).digest()).decode()
    assert f"script-src 'self' 'sha256-{digest}';" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert "'sha256-" not in client.get("/").headers["content-security-policy"]


def test_the_favicon_is_a_real_icon_that_every_page_links(client: TestClient) -> None:
    reply = client.get("/favicon.ico")
    assert reply.status_code == 200 and reply.headers["content-type"] == "image/vnd.microsoft.icon"
    icon = Image.open(io.BytesIO(reply.content))
    assert icon.format == "ICO" and {(16, 16), (32, 32)} <= icon.info["sizes"]
    assert "cache-control" not in reply.headers   # like static files, a browser may keep it
    for path in PAGES:
        assert '<link rel="icon" href="/favicon.ico"' in client.get(path).text, path


def _nav_current(html: str) -> dict[str, str]:
    """The nav links marked current: {link text: aria-current}."""
    nav = html[html.index('<nav class="nav"'):html.index("</nav>")]
    return dict((text, value) for value, text in re.findall(r'aria-current="(\w+)"[^>]*>([^<]+)</a>', nav))


def test_the_nav_marks_the_page_or_for_a_stored_result_its_section(
    client: TestClient, sessions: OneLiveSession
) -> None:
    client.cookies.set("drtech_session", LIVE_TOKEN)
    assert _nav_current(client.get("/app").text) == {"New diagnosis": "page"}
    assert _nav_current(client.get("/history").text) == {"History": "page"}
    assert _nav_current(client.get("/results/abc").text) == {"History": "true"}
    client.cookies.clear()
    assert _nav_current(client.get("/signup").text) == {"Sign up": "page"}


def test_image_renders_run_at_most_the_configured_number_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoding the largest accepted DICOM takes ~550 MB: a 768 MiB gateway renders one at a time."""
    import threading
    import time
    from types import SimpleNamespace

    import anyio

    from gateway import rendering

    active, most, limit = 0, 0, 1
    lock = threading.Lock()

    def slow_render(data: bytes, max_side: int | None = None, limits: object = None) -> bytes:
        nonlocal active, most
        with lock:
            active += 1
            most = max(most, active)
        # With a limit of 1, give a second render time to start alongside (none can with a limiter);
        # with more, wait until the limit is reached.
        target, waited_until = (2, time.monotonic() + 0.3) if limit == 1 else (limit, time.monotonic() + 5)
        while most < target and time.monotonic() < waited_until:
            time.sleep(0.002)
        with lock:
            active -= 1
        return data

    monkeypatch.setattr(rendering, "render_png", slow_render)

    async def render_many() -> list[bytes]:
        ctx = SimpleNamespace(renders=anyio.CapacityLimiter(limit), settings=GatewaySettings())
        results: list[bytes] = []

        async def one(index: int) -> None:
            results.append(await rendering.rendered_png(ctx, bytes([index]), 512))

        async with anyio.create_task_group() as group:
            for index in range(6):
                group.start_soon(one, index)
        return results

    assert sorted(anyio.run(render_many)) == [bytes([i]) for i in range(6)]
    assert most == 1
    most, limit = 0, 3
    anyio.run(render_many)
    assert most == 3


def test_the_app_renders_with_the_configured_number_of_renders_at_a_time(tmp_path: Path) -> None:
    with TestClient(create_app(GatewaySettings(DRTECH_HOME=tmp_path, concurrent_renders=2))) as client:
        assert client.app.state.gateway.renders.total_tokens == 2
    assert GatewaySettings(DRTECH_HOME=tmp_path).concurrent_renders == 1


def test_plots_are_only_plain_png_files_directly_in_a_known_models_folder(tmp_path: Path) -> None:
    from gateway.model_files import plot_names

    folder = tmp_path / "pneumonia" / "model"
    (folder / "sub").mkdir(parents=True)
    for name in ("roc.png", "notes.txt", ".hidden.png", "model.onnx", "sub/inner.png", "bad name.png"):
        (folder / name).write_bytes(b"x")
    (folder / "folder.png").mkdir()
    (tmp_path / "pneumonia" / "outside.png").write_bytes(b"x")
    (tmp_path / "gateway" / "model").mkdir(parents=True)
    (tmp_path / "gateway" / "model" / "x.png").write_bytes(b"x")

    models = ("bone", "pneumonia")                         # settings.model_addrs
    assert plot_names(tmp_path, "pneumonia", models) == ["roc.png"]
    assert plot_names(tmp_path, "gateway", models) == []           # not a model
    assert plot_names(tmp_path, "../pneumonia", models) == []
    assert plot_names(tmp_path / "nowhere", "pneumonia", models) == []


def test_an_image_accepted_under_a_raised_upload_limit_can_be_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    """The render decodes under the gateway's own limit, not the 20 MiB default."""
    from types import SimpleNamespace

    import anyio

    from gateway import rendering

    big = io.BytesIO()
    # Random pixels do not compress: a PNG over 20 MiB
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (2800, 2800, 3), dtype=np.uint8)).save(
        big, format="PNG", compress_level=0)
    data = big.getvalue()
    assert len(data) > 20 * 1024 * 1024
    ctx = SimpleNamespace(renders=anyio.CapacityLimiter(1),
                          settings=GatewaySettings(max_upload_bytes=32 * 1024 * 1024,
                                                   DRTECH_MAX_MESSAGE_BYTES=33 * 1024 * 1024))

    png = anyio.run(rendering.rendered_png, ctx, data, 64)

    with Image.open(io.BytesIO(png)) as shown:
        assert shown.size == (64, 64)


@pytest.mark.parametrize("path", ["/api/v1/diagnoses", "/api/v1/previews"])
@pytest.mark.parametrize(("headers", "status"), [
    ([], 401),
    ([(b"cookie", b"drtech_session=revoked-token")], 401),
    ([(b"cookie", f"drtech_session={LIVE_TOKEN}".encode())], 403),
], ids=["no-session", "revoked-cookie", "live-cookie-without-csrf-header"])
def test_an_upload_without_a_usable_session_is_refused_before_its_body_is_read(
    client: TestClient, sessions: OneLiveSession, path: str, headers: list[tuple[bytes, bytes]], status: int
) -> None:
    chunks_read = 0

    async def receive() -> dict:
        nonlocal chunks_read
        chunks_read += 1
        return {"type": "http.request", "body": b"--x\r\n" + b"a" * 1000, "more_body": chunks_read < 3}

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": [(b"content-type", b"multipart/form-data; boundary=x"), *headers],
             "http_version": "1.1", "scheme": "http", "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 5),
             "root_path": ""}
    client.portal.call(client.app, scope, receive, send)

    assert sent[0]["status"] == status
    assert chunks_read == 0


def test_no_route_or_dependency_is_handed_to_the_thread_pool_by_fastapi(settings: GatewaySettings) -> None:
    """FastAPI runs a plain-function endpoint or dependency in its thread pool, a hand-off per request
    that costs the gateway CPU (benchmarks/README.md); blocking work goes there explicitly instead."""
    import inspect

    from fastapi.routing import APIRoute

    def plain_functions(dependant) -> list[str]:
        call = dependant.call
        found = [] if inspect.iscoroutinefunction(call) else [getattr(call, "__name__", repr(call))]
        return found + [name for sub in dependant.dependencies for name in plain_functions(sub)]

    def api_routes(routes) -> list[APIRoute]:   # included routers' routes too
        return [found for route in routes for found in (
            [route] if isinstance(route, APIRoute)
            else api_routes(route.original_router.routes) if hasattr(route, "original_router") else [])]

    routes = api_routes(create_app(settings).routes)
    handed_off = {route.path: plain_functions(route.dependant) for route in routes}
    assert "/api/v1/diagnoses" in handed_off
    assert not {path: names for path, names in handed_off.items() if names}
