"""The API.md flow against the real gateway, the real auth service and the real model services.

Everything runs in this process on free ports (tests/web_stack.py): the auth service (SQLite under a
temporary DRTECH_HOME), the three model services (the shipped model when
services/<task>/model/model.onnx exists, otherwise a tiny model with the same file contract from
tests/serving_models.py, so the gateway is still exercised end to end while training has not
produced the real one), the router, and the gateway itself under uvicorn. Requests go over real
HTTP with httpx.
"""

from __future__ import annotations

import contextlib
import io
import math
import shutil
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import httpx
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import create_engine, text

from gateway.settings import GatewaySettings
from gateway.testing import start_gateway
from services.auth.server import start_server as start_auth
from services.auth.settings import AuthSettings
from services.core.server import start_server as start_model
from services.pneumonia.spec import SPEC as PNEUMONIA
from services.router.spec import SPEC as ROUTER
from services.skin.spec import SPEC as SKIN
from tests.support import (
    free_port,
    jpeg_bytes,
    postgres_skip_reason,
    real_samples,
    sample_image_bytes,
    synthetic_image,
)
from tests.unit.test_imaging import make_dicom, ramp
from tests.web_stack import SPECS, Stack, model_spec, running_stack, serving_settings

LABELS = {exam_type: set(spec.label_codes) for exam_type, spec in SPECS.items()}
PASSWORD = "correct horse 42"
THROTTLE_AFTER = 3


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The whole platform (tests/web_stack.py), its log-in throttle low enough to test."""
    with running_stack(tmp_path_factory.mktemp("drtech-home"), tmp_path_factory.mktemp("models"),
                       auth_settings={"throttle_max_failures_per_email": THROTTLE_AFTER}) as running:
        yield running


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.gateway.url, timeout=60) as client:
        yield client


def sign_up(client: httpx.Client, **fields: str) -> dict:
    body = {
        "email": f"user-{uuid.uuid4().hex[:10]}@example.org",
        "password": PASSWORD,
        "first_name": "Ada",
        "surname": "Lovelace",
    }
    body.update(fields)
    reply = client.post("/api/v1/auth/signup", json=body)
    assert reply.status_code == 201, reply.text
    return body


def bearer(client: httpx.Client, stack: Stack | None = None) -> dict[str, str]:
    """A new user's Authorization header (the log-in cookie is dropped: API calls use the token)."""
    account = sign_up(client)
    reply = client.post("/api/v1/auth/login", json={"email": account["email"], "password": PASSWORD})
    assert reply.status_code == 200, reply.text
    client.cookies.clear()
    return {"Authorization": f"Bearer {reply.json()['access_token']}"}


def upload(
    client: httpx.Client,
    headers: dict[str, str],
    data: bytes,
    exam_type: str,
    explain: bool = False,
    name: str = "upload.jpg",
    content_type: str = "image/jpeg",
) -> httpx.Response:
    return client.post(
        "/api/v1/diagnoses",
        params={"explain": "true"} if explain else None,
        files={"file": (name, data, content_type)},
        data={"exam_type": exam_type},
        headers=headers,
    )


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def stored_files(home: Path, folder: str = "uploads") -> list[Path]:
    return [p for p in (home / folder).rglob("*") if p.is_file()]


# --- accounts -----------------------------------------------------------------------------------


def test_sign_up_returns_201_with_the_account_and_refuses_a_taken_email(client: httpx.Client) -> None:
    email = f"Mixed.Case-{uuid.uuid4().hex[:6]}@Example.org"
    reply = client.post(
        "/api/v1/auth/signup",
        json={
            "email": email,
            "password": PASSWORD,
            "first_name": "Grace",
            "surname": "Hopper",
            "city": "Arlington",
            "zip": "22201",
            "gender": "female",
            "birth_date": "1906-12-09",
        },
    )
    assert reply.status_code == 201, reply.text
    body = reply.json()
    assert set(body) == {"id", "email", "first_name", "surname"}
    assert body["email"] == email.lower() and body["first_name"] == "Grace"

    again = client.post(
        "/api/v1/auth/signup",
        json={"email": email.upper(), "password": PASSWORD, "first_name": "G", "surname": "H"},
    )
    assert again.status_code == 409
    assert "already exists" in again.json()["detail"]


def test_sign_up_with_invalid_fields_is_422_with_a_message_per_field(client: httpx.Client) -> None:
    reply = client.post(
        "/api/v1/auth/signup",
        json={"email": "nobody", "password": "aaaaaaaa", "first_name": "", "surname": "Doe", "zip": "ABCDE"},
    )
    assert reply.status_code == 422
    errors = reply.json()["errors"]
    assert set(errors) == {"email", "password", "first_name", "zip"}
    assert all(isinstance(message, str) and message for message in errors.values())


def test_log_in_gives_a_bearer_token_and_an_httponly_lax_cookie(client: httpx.Client) -> None:
    account = sign_up(client)
    reply = client.post("/api/v1/auth/login", json={"email": account["email"], "password": PASSWORD})
    assert reply.status_code == 200
    body = reply.json()
    assert body["token_type"] == "bearer" and body["access_token"]
    assert body["expires_at"].endswith("Z")
    cookie = reply.headers["set-cookie"]
    assert cookie.startswith("drtech_session=")
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # development: plain http://127.0.0.1 must work

    me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200
    assert me.json()["email"] == account["email"] and me.json()["first_name"] == "Ada"
    assert client.get("/api/v1/me").status_code == 200  # the cookie alone also works


def test_bad_credentials_get_the_same_401_whether_or_not_the_email_exists(client: httpx.Client) -> None:
    account = sign_up(client)
    wrong_password = client.post(
        "/api/v1/auth/login", json={"email": account["email"], "password": "nope12345"}
    )
    unknown_email = client.post(
        "/api/v1/auth/login", json={"email": "ghost@example.org", "password": PASSWORD}
    )
    assert wrong_password.status_code == unknown_email.status_code == 401
    assert wrong_password.json() == unknown_email.json() == {"detail": "Incorrect email or password."}


def test_a_megabyte_of_email_or_password_is_a_wrong_log_in_not_a_throttle(client: httpx.Client) -> None:
    account = sign_up(client)
    huge_password = client.post("/api/v1/auth/login", json={"email": account["email"], "password": "x" * 1_200_000})
    huge_email = client.post("/api/v1/auth/login", json={"email": "a" * 1_200_000 + "@b.co", "password": PASSWORD})
    assert huge_password.status_code == huge_email.status_code == 401
    assert huge_password.json() == huge_email.json() == {"detail": "Incorrect email or password."}


def test_repeated_failed_log_ins_are_throttled_with_429(client: httpx.Client) -> None:
    account = sign_up(client)
    codes = [
        client.post(
            "/api/v1/auth/login", json={"email": account["email"], "password": "wrong-pass-1"}
        ).status_code
        for _ in range(THROTTLE_AFTER + 1)
    ]
    assert codes[:THROTTLE_AFTER] == [401] * THROTTLE_AFTER
    assert codes[-1] == 429
    throttled = client.post("/api/v1/auth/login", json={"email": account["email"], "password": PASSWORD})
    assert throttled.status_code == 429 and throttled.json()["detail"]
    # The auth service's own wait: until the oldest counted failure leaves the 15-minute window.
    assert 14 * 60 < int(throttled.headers["Retry-After"]) <= 15 * 60


def test_log_out_revokes_the_token_at_once_and_clears_the_cookie(client: httpx.Client) -> None:
    account = sign_up(client)
    token = client.post("/api/v1/auth/login", json={"email": account["email"], "password": PASSWORD}).json()[
        "access_token"
    ]
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/me", headers=headers).status_code == 200
    reply = client.post("/api/v1/auth/logout", headers=headers)
    assert reply.status_code == 204
    assert 'drtech_session=""' in reply.headers["set-cookie"] or "Max-Age=0" in reply.headers["set-cookie"]
    after = client.get("/api/v1/me", headers=headers)
    assert after.status_code == 401 and after.json()["detail"]
    client.cookies.clear()
    assert client.get("/api/v1/me", headers={"Authorization": "Bearer made-up-token"}).status_code == 401


def log_in(client: httpx.Client, email: str, password: str = PASSWORD) -> dict[str, str]:
    """A new session's Authorization header (the cookie the log-in also set is dropped)."""
    reply = client.post("/api/v1/auth/login", json={"email": email, "password": password})
    assert reply.status_code == 200, reply.text
    client.cookies.clear()
    return {"Authorization": f"Bearer {reply.json()['access_token']}"}


def test_sign_up_refuses_a_short_or_common_password_in_errors_password(client: httpx.Client) -> None:
    for password, reason in [("elevenchars", "Password must be at least 12 characters."),
                             ("Password1234!", "This password is too common")]:
        reply = client.post("/api/v1/auth/signup", json={
            "email": f"user-{uuid.uuid4().hex[:10]}@example.org", "password": password,
            "first_name": "Ada", "surname": "Lovelace"})
        assert reply.status_code == 422
        assert set(reply.json()["errors"]) == {"password"}
        assert reply.json()["errors"]["password"].startswith(reason)
    check = client.post("/api/v1/auth/signup/check", json={"password": "qwerty123456"})
    assert check.json()["errors"]["password"].startswith("This password is too common")


def test_changing_the_password_ends_the_other_sessions_and_keeps_this_one(client: httpx.Client) -> None:
    account = sign_up(client)
    this, other = log_in(client, account["email"]), log_in(client, account["email"])
    new_password = "seven horses and a cart"
    reply = client.post("/api/v1/auth/password", headers=this,
                        json={"current_password": PASSWORD, "new_password": new_password})
    assert reply.status_code == 204, reply.text
    assert client.get("/api/v1/me", headers=this).status_code == 200
    assert client.get("/api/v1/me", headers=other).status_code == 401
    old = client.post("/api/v1/auth/login", json={"email": account["email"], "password": PASSWORD})
    assert old.status_code == 401
    assert log_in(client, account["email"], new_password)


def test_a_weak_new_password_is_422_in_errors_new_password(client: httpx.Client) -> None:
    account = sign_up(client)
    headers = log_in(client, account["email"])
    for new_password, reason in [("too short", "Password must be at least 12 characters."),
                                 ("iloveyou2024", "This password is too common"),
                                 (account["email"] + "!", "Password must not contain your email address"),
                                 ("x" * 1_200_000, "Password must be at most 128 characters.")]:
        reply = client.post("/api/v1/auth/password", headers=headers,
                            json={"current_password": PASSWORD, "new_password": new_password})
        assert reply.status_code == 422
        assert set(reply.json()["errors"]) == {"new_password"}
        assert reply.json()["errors"]["new_password"].startswith(reason)
    missing = client.post("/api/v1/auth/password", headers=headers, json={})
    assert set(missing.json()["errors"]) == {"current_password", "new_password"}


def test_a_wrong_current_password_is_401_in_errors_current_password_and_throttled(
    client: httpx.Client,
) -> None:
    account = sign_up(client)
    headers = log_in(client, account["email"])
    body = {"current_password": "not my password", "new_password": "seven horses and a cart"}
    for _ in range(THROTTLE_AFTER):
        reply = client.post("/api/v1/auth/password", headers=headers, json=body)
        assert reply.status_code == 401
        assert reply.json()["errors"] == {"current_password": "The current password is incorrect."}
    throttled = client.post("/api/v1/auth/password", headers=headers, json=body)
    assert throttled.status_code == 429 and int(throttled.headers["Retry-After"]) > 0
    assert client.get("/api/v1/me", headers=headers).status_code == 200   # the session itself lives on


def test_log_out_all_ends_every_session_and_clears_the_cookie(client: httpx.Client) -> None:
    account = sign_up(client)
    bearer_session = log_in(client, account["email"])
    client.post("/api/v1/auth/login", json={"email": account["email"], "password": PASSWORD})
    assert client.get("/api/v1/me").status_code == 200   # a cookie session too
    refused = client.post("/api/v1/auth/logout-all")
    assert refused.status_code == 403   # cookie sessions need the CSRF header
    reply = client.post("/api/v1/auth/logout-all", headers={"X-Requested-With": "fetch"})
    assert reply.status_code == 204
    assert "drtech_session=" in reply.headers["set-cookie"]
    assert client.get("/api/v1/me", headers=bearer_session).status_code == 401
    assert client.post("/api/v1/auth/logout-all", headers=bearer_session).status_code == 401
    client.cookies.clear()
    assert log_in(client, account["email"])


def test_password_change_by_cookie_needs_the_csrf_header(client: httpx.Client) -> None:
    account = sign_up(client)
    client.post("/api/v1/auth/login", json={"email": account["email"], "password": PASSWORD})
    body = {"current_password": PASSWORD, "new_password": "seven horses and a cart"}
    assert client.post("/api/v1/auth/password", json=body).status_code == 403
    assert client.post("/api/v1/auth/password", json=body,
                       headers={"X-Requested-With": "fetch"}).status_code == 204
    client.cookies.clear()


def test_cookie_sessions_need_the_csrf_header_to_change_anything(client: httpx.Client, stack: Stack) -> None:
    account = sign_up(client)
    client.post("/api/v1/auth/login", json={"email": account["email"], "password": PASSWORD})
    image = sample_image_bytes("chest_xray")
    refused = upload(client, {}, image, "chest_xray")
    assert refused.status_code == 403
    accepted = upload(client, {"X-Requested-With": "fetch"}, image, "chest_xray")
    assert accepted.status_code == 201, accepted.text
    for page in ["/app", "/history", f"/results/{accepted.json()['id']}"]:
        reply = client.get(page)
        assert reply.status_code == 200 and "Not for clinical use" in reply.text
    assert client.post("/api/v1/auth/logout", headers={"X-Requested-With": "fetch"}).status_code == 204
    assert client.get("/app", follow_redirects=False).status_code == 303


# --- diagnoses ------------------------------------------------------------------------------------


@pytest.mark.parametrize("exam_type", sorted(SPECS))
def test_each_exam_type_is_diagnosed_by_its_own_model(
    client: httpx.Client, stack: Stack, exam_type: str
) -> None:
    headers = bearer(client)
    reply = upload(client, headers, sample_image_bytes(exam_type), exam_type)
    assert reply.status_code == 201, reply.text
    d = reply.json()
    assert d["status"] == "completed" and d["exam_type"] == exam_type
    assert set(d["probabilities"]) == LABELS[exam_type]
    assert math.isclose(sum(d["probabilities"].values()), 1.0, abs_tol=1e-3)
    assert d["label"] == max(d["probabilities"], key=d["probabilities"].get)
    assert d["confidence"] == pytest.approx(d["probabilities"][d["label"]])
    assert d["label_display"] == SPECS[exam_type].display_name(d["label"])
    card = stack.models[exam_type].servicer.loaded.card
    assert d["model"] == {"name": card["name"], "version": card["version"]}
    assert d["created_at"].endswith("Z")
    uuid.UUID(d["id"])
    if exam_type == "bone_xray":
        assert d["extra"]["kl_grade"] in range(5)
    assert d["heatmap_url"] is None
    assert client.get(f"/api/v1/diagnoses/{d['id']}/heatmap", headers=headers).status_code == 404
    assert client.get(f"/api/v1/diagnoses/{d['id']}", headers=headers).json() == d


def test_explain_true_gives_a_heatmap_png(client: httpx.Client) -> None:
    headers = bearer(client)
    reply = upload(client, headers, sample_image_bytes("skin_lesion"), "skin_lesion", explain=True)
    assert reply.status_code == 201, reply.text
    d = reply.json()
    assert d["heatmap_url"] == f"/api/v1/diagnoses/{d['id']}/heatmap"
    heatmap = client.get(d["heatmap_url"], headers=headers)
    assert heatmap.status_code == 200 and heatmap.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(heatmap.content)).format == "PNG"


def test_the_stored_upload_is_the_original_bytes_named_by_their_sha256(
    client: httpx.Client, stack: Stack
) -> None:
    headers = bearer(client)
    original = png_bytes(synthetic_image("chest_xray", (300, 280), seed=7))
    d = upload(
        client, headers, original, "chest_xray", name="../../evil name.png", content_type="image/png"
    ).json()
    image = client.get(d["image_url"], headers=headers)
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content == original
    import hashlib

    digest = hashlib.sha256(original).hexdigest()
    assert (stack.home / "uploads" / digest[:2] / digest[2:4] / digest).read_bytes() == original
    assert not list(stack.home.rglob("*evil*"))


def test_the_declared_type_is_ignored_the_bytes_decide(client: httpx.Client) -> None:
    headers = bearer(client)
    jpeg = sample_image_bytes("chest_xray")
    reply = upload(client, headers, jpeg, "chest_xray", name="scan.png", content_type="application/pdf")
    assert reply.status_code == 201, reply.text
    assert reply.json()["media_type"] == "image/jpeg"


def test_auto_routes_a_dicom_by_its_header_and_the_image_comes_back_as_png(client: httpx.Client) -> None:
    headers = bearer(client)
    dicom = make_dicom(ramp(256, 256), extra={"Modality": "DX", "BodyPartExamined": "KNEE"})
    reply = upload(client, headers, dicom, "auto", name="knee.dcm", content_type="application/dicom")
    assert reply.status_code == 201, reply.text
    d = reply.json()
    assert d["exam_type"] == "bone_xray" and d["requested_exam_type"] == "auto"
    assert d["media_type"] == "application/dicom"
    image = client.get(d["image_url"], headers=headers)
    assert image.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(image.content)).size == (256, 256)

    chest = make_dicom(ramp(128, 128), extra={"Modality": "CR", "BodyPartExamined": "CHEST"})
    assert upload(client, headers, chest, "auto").json()["exam_type"] == "chest_xray"

    hand = make_dicom(ramp(128, 128), extra={"Modality": "DX", "BodyPartExamined": "HAND"})
    refused = upload(client, headers, hand, "auto", name="hand.dcm", content_type="application/dicom")
    assert refused.status_code == 422 and "knee radiographs only" in refused.json()["detail"]
    assert client.get("/api/v1/diagnoses", headers=headers).json()["total"] == 2     # nothing kept
    chosen = upload(client, headers, hand, "bone_xray", name="hand.dcm", content_type="application/dicom")
    assert chosen.status_code == 201 and chosen.json()["exam_type"] == "bone_xray"


def test_max_side_sends_a_png_scaled_down_to_fit_for_thumbnails(client: httpx.Client) -> None:
    headers = bearer(client)
    photo = Image.new("RGB", (640, 480), (200, 120, 90))
    d = upload(client, headers, jpeg_bytes(photo), "skin_lesion").json()
    whole = client.get(d["image_url"], headers=headers)
    assert whole.headers["content-type"] == "image/jpeg"   # without max_side: the upload as stored

    thumb = client.get(d["image_url"], params={"max_side": 96}, headers=headers)
    assert thumb.status_code == 200, thumb.text
    assert thumb.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(thumb.content)).size == (96, 72)

    dicom = make_dicom(ramp(256, 128), extra={"Modality": "DX", "BodyPartExamined": "KNEE"})
    knee = upload(client, headers, dicom, "auto", name="knee.dcm", content_type="application/dicom").json()
    small = client.get(knee["image_url"], params={"max_side": 64}, headers=headers)
    assert max(Image.open(io.BytesIO(small.content)).size) == 64

    for bad in ("8", "5000", "big"):
        refused = client.get(d["image_url"], params={"max_side": bad}, headers=headers)
        assert refused.status_code == 422, bad
        assert "max_side" in refused.text


def test_images_are_revalidated_by_etag_so_a_browser_cache_never_outlives_the_account(
    client: httpx.Client,
) -> None:
    headers = bearer(client)
    d = upload(client, headers, sample_image_bytes("skin_lesion"), "skin_lesion", explain=True).json()
    for url in (d["image_url"], f"{d['image_url']}?max_side=96", d["heatmap_url"]):
        first = client.get(url, headers=headers)
        assert first.status_code == 200, url
        assert first.headers["cache-control"] == "private, no-cache"
        etag = first.headers["etag"]
        again = client.get(url, headers={**headers, "If-None-Match": etag})
        assert again.status_code == 304 and again.content == b"", url
        # Revalidation goes through the owner check: another account gets 404, not the cached image.
        assert client.get(url, headers={**bearer(client), "If-None-Match": etag}).status_code == 404
    # The thumbnail is a different picture from the upload, so it has its own tag.
    assert client.get(d["image_url"], headers=headers).headers["etag"] != client.get(
        f"{d['image_url']}?max_side=96", headers=headers).headers["etag"]


def test_an_id_that_is_not_a_diagnosis_id_is_404_even_with_a_nul_in_it(client: httpx.Client) -> None:
    """PostgreSQL refuses text with a NUL outright; the gateway must not pass such an id on (500)."""
    headers = bearer(client)
    for bad in ("%00", "abc%00def", "not-a-uuid", "00000000-0000-0000-0000-00000000000%00"):
        reply = client.get(f"/api/v1/diagnoses/{bad}", headers=headers)
        assert reply.status_code == 404, (bad, reply.text)
        assert client.get(f"/api/v1/diagnoses/{bad}/image", headers=headers).status_code == 404


def test_a_diagnosis_whose_record_cannot_be_saved_is_503_and_keeps_no_orphaned_files(
    client: httpx.Client, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database outage after the model answered: no blob may stay on disk without a record that
    names it (nobody could ever delete that medical image), and the client is told to try again."""
    from sqlalchemy.exc import OperationalError

    from gateway import records

    headers = bearer(client)
    uploads, heatmaps = set(stored_files(stack.home)), set(stored_files(stack.home, "heatmaps"))

    def database_down(session: object, new: object, also: object) -> None:
        raise OperationalError("INSERT INTO diagnoses ...", {}, Exception("database is locked"))

    monkeypatch.setattr(records, "add_all", database_down)
    noise = Image.fromarray(np.random.default_rng(7).integers(0, 256, (96, 128, 3), dtype=np.uint8))
    reply = upload(client, headers, jpeg_bytes(noise), "skin_lesion", explain=True)
    assert reply.status_code == 503, reply.text
    assert reply.headers["retry-after"] == "5" and "try again" in reply.json()["detail"]
    assert set(stored_files(stack.home)) == uploads and set(stored_files(stack.home, "heatmaps")) == heatmaps


@pytest.mark.parametrize("limit", [{"concurrent_uploads": 1}, {"upload_memory_bytes": 1024}],
                         ids=["by-count", "by-bytes"])
def test_uploads_beyond_the_memory_limits_wait_their_turn_outside_memory(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: dict[str, int]
) -> None:
    """concurrent_uploads and upload_memory_bytes (three times each upload's size) bound the uploads
    the gateway holds in memory: the next one is not read (nor sent to a model) until room frees,
    and then completes normally. One larger than the byte budget goes alone."""
    import threading

    from gateway import diagnoses

    entered, release = threading.Event(), threading.Event()
    real_run_model = diagnoses.run_model
    calls: list[str] = []

    async def held_run_model(ctx, record, data):
        calls.append(record.id)
        if len(calls) == 1:
            entered.set()
            await anyio.to_thread.run_sync(release.wait, 10)
        return await real_run_model(ctx, record, data)

    monkeypatch.setattr(diagnoses, "run_model", held_run_model)
    gateway = start_gateway(stack.settings(tmp_path, **limit, upload_wait_s=1.5))
    try:
        with httpx.Client(base_url=gateway.url, timeout=60) as client:
            headers = bearer(client)
            image = sample_image_bytes("skin_lesion")
            with ThreadPoolExecutor(max_workers=2) as pool:
                first = pool.submit(upload, client, headers, image, "skin_lesion")
                assert entered.wait(10)
                second = pool.submit(upload, client, headers, image, "skin_lesion")
                time.sleep(0.5)
                assert len(calls) == 1, "the second upload went on while the only slot was taken"
                # A preview needs no upload slot: it only waits for the render slot.
                preview = client.post("/api/v1/previews", files={"file": ("a.jpg", image, "image/jpeg")},
                                      headers=headers)
                assert preview.status_code == 200, preview.text
                release.set()
                assert first.result(30).status_code == 201
                assert second.result(30).status_code == 201
            assert len(calls) == 2

            @contextlib.contextmanager
            def the_only_slot_held() -> Iterator[None]:
                release.clear()
                entered.clear()
                calls.clear()
                with ThreadPoolExecutor(max_workers=1) as pool:
                    held = pool.submit(upload, client, headers, image, "skin_lesion")
                    assert entered.wait(10)
                    yield
                    release.set()
                    assert held.result(30).status_code == 201

            # Waiting is bounded: past upload_wait_s the answer is 503 with Retry-After.
            with the_only_slot_held():
                started = time.monotonic()
                refused = upload(client, headers, image, "skin_lesion")
                assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
                assert "busy with other uploads" in refused.json()["detail"]
                assert 1.4 < time.monotonic() - started < 10

            # A client that gave up while waiting is not served when a slot frees: no model call.
            with the_only_slot_held():
                impatient = httpx.Client(base_url=gateway.url, timeout=0.3)
                with impatient, pytest.raises(httpx.TimeoutException):
                    upload(impatient, headers, image, "skin_lesion")
            time.sleep(1.0)
            assert len(calls) == 1, "the abandoned upload still went to a model"
    finally:
        release.set()
        gateway.stop()


def test_sign_ups_from_one_address_past_the_limit_are_429_with_retry_after(tmp_path: Path) -> None:
    """The gateway hands the caller's address to the auth service, and its sign-up limit comes back
    as 429 with the auth service's own wait."""
    auth = start_auth(AuthSettings(home=tmp_path, port=0, grace_s=0, argon2_time_cost=1,
                                   argon2_memory_kib=1024, argon2_parallelism=1, throttle_max_sign_ups_per_ip=1))
    gateway = start_gateway(GatewaySettings(DRTECH_HOME=tmp_path, DRTECH_AUTH_ADDR=f"127.0.0.1:{auth.port}"))
    try:
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            assert sign_up(client)
            refused = client.post("/api/v1/auth/signup", json={
                "email": f"{uuid.uuid4().hex[:8]}@example.com", "password": PASSWORD,
                "first_name": "Ada", "surname": "Lovelace"})
            assert refused.status_code == 429
            assert "Too many accounts were created from your network" in refused.json()["detail"]
            assert 3000 < int(refused.headers["retry-after"]) <= 3600
    finally:
        gateway.stop()
        auth.stop(0)


def test_auto_without_a_routable_header_asks_the_router_model(client: httpx.Client) -> None:
    headers = bearer(client)
    reply = upload(client, headers, sample_image_bytes("skin_lesion"), "auto")
    assert reply.status_code == 201, reply.text
    assert reply.json()["exam_type"] == "skin_lesion"
    # A CT head slice is none of the three kinds: the router refuses it.
    head = make_dicom(ramp(64, 64), extra={"Modality": "CT", "BodyPartExamined": "HEAD"})
    refused = upload(client, headers, head, "auto")
    assert refused.status_code == 422
    assert "does not look like" in refused.json()["detail"]


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        (b"%PDF-1.7 definitely not an image", 415, "not a JPEG, PNG or DICOM"),
        (b"GIF89a" + b"\x00" * 64, 415, "GIF"),
        (jpeg_bytes(synthetic_image("chest_xray"))[:300], 422, "header cannot be read"),
        (jpeg_bytes(synthetic_image("chest_xray"))[:3000], 422, "truncated or corrupt"),
        (jpeg_bytes(synthetic_image("chest_xray", (16, 16))), 422, "at least 32 pixels"),
    ],
    ids=["pdf", "gif", "jpeg-cut-in-its-header", "jpeg-cut-in-its-pixels", "too-small"],
)
def test_a_bad_file_gets_a_clear_4xx_and_nothing_is_stored(
    client: httpx.Client, stack: Stack, data: bytes, status: int, words: str
) -> None:
    headers = bearer(client)
    before = set(stored_files(stack.home))
    reply = upload(client, headers, data, "chest_xray")
    assert reply.status_code == status, reply.text
    assert words in reply.json()["detail"]
    assert set(stored_files(stack.home)) == before
    assert client.get("/api/v1/diagnoses", headers=headers).json()["total"] == 0


def test_bad_form_fields_are_422_per_field(client: httpx.Client) -> None:
    headers = bearer(client)
    wrong_type = upload(client, headers, sample_image_bytes("chest_xray"), "brain_mri")
    assert wrong_type.status_code == 422 and "exam_type" in wrong_type.json()["errors"]
    no_file = client.post("/api/v1/diagnoses", data={"exam_type": "chest_xray"}, headers=headers)
    assert no_file.status_code == 422 and no_file.json()["errors"] == {"file": "This field is required."}
    # A form field named file, but text rather than a file part: said in words, not Python's
    not_a_file = client.post("/api/v1/diagnoses", data={"exam_type": "chest_xray", "file": "scan.jpg"},
                             files={"other": ("x", b"x")}, headers=headers)
    assert not_a_file.status_code == 422
    assert not_a_file.json()["errors"] == {"file": "Must be an uploaded file (a multipart part with a file name)."}
    empty = upload(client, headers, b"", "chest_xray")
    assert empty.status_code == 422 and "file" in empty.json()["errors"]


def test_history_is_newest_first_filterable_paged_and_private(client: httpx.Client) -> None:
    owner = bearer(client)
    ids = [
        upload(client, owner, sample_image_bytes(t), t).json()["id"]
        for t in ("chest_xray", "skin_lesion", "chest_xray")
    ]
    page = client.get("/api/v1/diagnoses", headers=owner).json()
    assert page["total"] == 3
    assert [item["id"] for item in page["items"]] == list(reversed(ids))
    chest = client.get("/api/v1/diagnoses", params={"exam_type": "chest_xray"}, headers=owner).json()
    assert chest["total"] == 2 and [item["id"] for item in chest["items"]] == [ids[2], ids[0]]
    second = client.get("/api/v1/diagnoses", params={"limit": 1, "offset": 1}, headers=owner).json()
    assert [item["id"] for item in second["items"]] == [ids[1]] and second["total"] == 3
    bad = client.get("/api/v1/diagnoses", params={"limit": 0, "offset": -1}, headers=owner)
    assert bad.status_code == 422 and set(bad.json()["errors"]) == {"limit", "offset"}
    # Exam types are the services' to say (gateway/model_catalog.py), checked once the query parses.
    unknown = client.get("/api/v1/diagnoses", params={"exam_type": "x"}, headers=owner)
    assert unknown.status_code == 422 and set(unknown.json()["errors"]) == {"exam_type"}
    assert "chest_xray" in unknown.json()["errors"]["exam_type"]
    blank = client.get("/api/v1/diagnoses?limit=&offset=&exam_type=", headers=owner).json()
    assert blank == page   # API.md's template with empty values: every one takes its default
    huge = client.get("/api/v1/diagnoses", params={"offset": 10**23}, headers=owner)
    assert huge.status_code == 422 and set(huge.json()["errors"]) == {"offset"}

    stranger = bearer(client)
    assert client.get("/api/v1/diagnoses", headers=stranger).json() == {
        "items": [],
        "total": 0,
        "limit": 20,
        "offset": 0,
    }
    for method, path in [("GET", ""), ("GET", "/image"), ("GET", "/heatmap"), ("DELETE", "")]:
        reply = client.request(method, f"/api/v1/diagnoses/{ids[0]}{path}", headers=stranger)
        assert reply.status_code == 404, (method, path)
        assert reply.json()["detail"]
    assert client.get(f"/api/v1/diagnoses/{ids[0]}", headers=owner).status_code == 200


def test_delete_removes_the_record_and_the_image_once_nothing_uses_it(
    client: httpx.Client, stack: Stack
) -> None:
    headers = bearer(client)
    image = png_bytes(synthetic_image("skin_lesion", (120, 100), seed=int(uuid.uuid4().int % 1000)))
    first = upload(client, headers, image, "skin_lesion", explain=True).json()
    second = upload(client, headers, image, "skin_lesion").json()
    import hashlib

    digest = hashlib.sha256(image).hexdigest()
    path = stack.home / "uploads" / digest[:2] / digest[2:4] / digest
    assert path.exists()

    assert client.delete(f"/api/v1/diagnoses/{first['id']}", headers=headers).status_code == 204
    assert client.get(f"/api/v1/diagnoses/{first['id']}", headers=headers).status_code == 404
    assert path.exists(), "the second record still uses the same upload"
    assert client.get(second["image_url"], headers=headers).content == image

    assert client.delete(f"/api/v1/diagnoses/{second['id']}", headers=headers).status_code == 204
    assert not path.exists()
    assert client.get("/api/v1/diagnoses", headers=headers).json()["total"] == 0
    assert client.delete(f"/api/v1/diagnoses/{second['id']}", headers=headers).status_code == 404


# --- models, health, metrics --------------------------------------------------------------------


def test_models_lists_every_model_card_without_logging_in(client: httpx.Client, stack: Stack) -> None:
    reply = client.get("/api/v1/models")
    assert reply.status_code == 200
    cards = {card["exam_type"]: card for card in reply.json()}
    specs = {**SPECS, "auto": ROUTER}   # the router's card comes last
    assert set(cards) == set(specs) and reply.json()[-1]["exam_type"] == "auto"
    for exam_type, card in cards.items():
        loaded = stack.models[exam_type].servicer.loaded.card
        assert card["name"] == loaded["name"] and card["version"] == loaded["version"]
        assert card["task"] == specs[exam_type].task
        assert [label["code"] for label in card["labels"]] == specs[exam_type].label_codes
        assert card["intended_use"] and card["limitations"] and "metrics" in card


GATEWAY_CHECKS_OK = {"auth": "SERVING", "database": "ok", "uploads": "ok", "heatmaps": "ok"}


def test_health_readiness_and_metrics(client: httpx.Client, stack: Stack) -> None:
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ready", "services": dict.fromkeys(
        ("auth", "bone", "skin", "pneumonia", "router"), "SERVING")}
    # The operational endpoints are on the internal port only (probes and Prometheus).
    assert client.get("/metrics").status_code == 404 and client.get("/readyz/gateway").status_code == 404
    with httpx.Client(base_url=stack.gateway.internal_url, timeout=60) as internal:
        assert internal.get("/readyz").json() == ready.json()
        serving = internal.get("/readyz/gateway")
        assert serving.status_code == 200, serving.text
        assert serving.json() == {"status": "ready", "checks": GATEWAY_CHECKS_OK, "services": ready.json()["services"]}
        headers = bearer(client)
        upload(client, headers, sample_image_bytes("bone_xray"), "bone_xray")
        metrics = internal.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'drtech_diagnoses_total{exam_type="bone_xray",status="completed"}' in metrics.text
    assert 'route="/api/v1/diagnoses",status="201"' in metrics.text
    assert 'route="/metrics"' not in metrics.text, "scrapes are not counted as the public API's requests"
    # The CPU of the diagnosis path's worker-thread stages, for `make bench` (benchmarks/cpu_cost.py).
    for stage in ("check_upload", "store", "record"):
        assert f'drtech_stage_cpu_seconds_total{{stage="{stage}"}}' in metrics.text, stage


def test_readyz_names_a_stopped_service_and_an_unavailable_model_gives_a_failed_record_to_retry(
    stack: Stack, tmp_path: Path
) -> None:
    spec = model_spec(PNEUMONIA, tmp_path / "models")
    pneumonia = start_model(spec, serving_settings(), port=0, load=False)  # listening, NOT_SERVING
    gateway = start_gateway(stack.settings(tmp_path / "home", DRTECH_PNEUMONIA_ADDR=pneumonia.target))
    try:
        with httpx.Client(base_url=gateway.url, timeout=60) as client:
            loading = client.get("/readyz")
            assert loading.status_code == 503
            assert "pneumonia (NOT_SERVING)" in loading.json()["detail"]
            # The gateway itself can serve: it stays in the k8s Service, and says which model is down.
            serving = httpx.get(f"{gateway.internal_url}/readyz/gateway", timeout=60)
            assert serving.status_code == 200, serving.text
            assert serving.json()["checks"] == GATEWAY_CHECKS_OK
            assert serving.json()["services"]["pneumonia"] == "NOT_SERVING"

            headers = bearer(client)
            image = sample_image_bytes("chest_xray")
            reply = upload(client, headers, image, "chest_xray")
            assert reply.status_code == 201, reply.text
            failed = reply.json()
            assert failed["status"] == "failed" and "unavailable" in failed["detail"]
            assert failed["label"] is None and failed["probabilities"] == {}
            assert client.get(failed["image_url"], headers=headers).content == image  # the upload is kept
            # A failed record's upload was never decoded: one whose pixels cannot be shown is a 422.
            short_dicom = make_dicom(ramp())[:-100]
            broken = upload(client, headers, short_dicom, "chest_xray", name="x.dcm",
                            content_type="application/dicom")
            assert broken.status_code == 201 and broken.json()["status"] == "failed", broken.text
            shown = client.get(broken.json()["image_url"], headers=headers)
            assert shown.status_code == 422
            assert shown.json()["detail"].startswith("The image cannot be shown: ")

            pneumonia.load_model()
            assert client.get("/readyz").status_code == 200
            retried = client.post(f"/api/v1/diagnoses/{failed['id']}/retry", headers=headers)
            assert retried.status_code == 200, retried.text
            assert retried.json()["status"] == "completed" and retried.json()["id"] == failed["id"]
            again = client.post(f"/api/v1/diagnoses/{failed['id']}/retry", headers=headers)
            assert again.status_code == 409

            pneumonia.stop(grace=0)
            stopped = client.get("/readyz")
            assert stopped.status_code == 503
            assert stopped.json()["detail"] == "not ready: pneumonia (unreachable)"
            # Where it was unreachable is for the internal port only.
            detailed = httpx.get(f"{gateway.internal_url}/readyz", timeout=60).json()["detail"]
            assert detailed == f"not ready: pneumonia (unreachable at {pneumonia.target} (UNAVAILABLE))"
            assert client.get("/healthz").status_code == 200
    finally:
        gateway.stop()
        pneumonia.stop(grace=0)


def test_gateway_readiness_needs_auth_and_its_own_storage_not_every_model_service(
    stack: Stack, tmp_path: Path
) -> None:
    nothing_there = f"127.0.0.1:{free_port()}"
    home = tmp_path / "home"
    gateway = start_gateway(stack.settings(home, DRTECH_BONE_ADDR=nothing_there))
    try:
        with httpx.Client(base_url=gateway.url, timeout=60) as client:
            serving = httpx.get(f"{gateway.internal_url}/readyz/gateway", timeout=60)
            assert serving.status_code == 200, serving.text
            assert serving.json()["checks"] == GATEWAY_CHECKS_OK
            assert serving.json()["services"]["bone"].startswith(f"unreachable at {nothing_there}")
            assert serving.json()["services"]["skin"] == "SERVING"
            assert client.get("/readyz").status_code == 503   # the whole platform is not all there

            # So a bone upload still gets the API's own answer, and the other models still serve.
            headers = bearer(client)
            failed = upload(client, headers, sample_image_bytes("bone_xray"), "bone_xray")
            assert failed.status_code == 201 and failed.json()["status"] == "failed", failed.text
            assert "unavailable" in failed.json()["detail"]
            done = upload(client, headers, sample_image_bytes("skin_lesion"), "skin_lesion")
            assert done.status_code == 201 and done.json()["status"] == "completed", done.text

            # Its upload store unusable (here: a file where the folder should be): not ready.
            shutil.rmtree(home / "uploads")
            (home / "uploads").write_text("not a folder")
            broken = httpx.get(f"{gateway.internal_url}/readyz/gateway", timeout=60)
            assert broken.status_code == 503
            assert broken.json()["detail"].startswith("not ready: uploads (")
            assert broken.json()["checks"]["database"] == "ok"
    finally:
        gateway.stop()

    without_auth = start_gateway(stack.settings(tmp_path / "home2", DRTECH_AUTH_ADDR=nothing_there))
    try:
        with httpx.Client(base_url=without_auth.internal_url, timeout=60) as client:
            down = client.get("/readyz/gateway")
            assert down.status_code == 503
            assert down.json()["detail"] == f"not ready: auth (unreachable at {nothing_there} (UNAVAILABLE))"
    finally:
        without_auth.stop()


def test_an_image_the_model_rejects_is_422_with_its_message_and_not_kept(
    stack: Stack, tmp_path: Path
) -> None:
    # This model service demands bigger images than the gateway's own check does.
    skin = start_model(
        model_spec(SKIN, tmp_path / "models"),
        serving_settings().model_copy(update={"min_image_side": 64}),
        port=0,
    )
    home = tmp_path / "home"
    gateway = start_gateway(stack.settings(home, DRTECH_SKIN_ADDR=skin.target))
    try:
        with httpx.Client(base_url=gateway.url, timeout=60) as client:
            headers = bearer(client)
            small = png_bytes(synthetic_image("skin_lesion", (48, 48)))
            reply = upload(client, headers, small, "skin_lesion")
            assert reply.status_code == 422, reply.text
            assert reply.json()["detail"].startswith("The skin model cannot use this image: ")
            assert "64" in reply.json()["detail"]
            assert client.get("/api/v1/diagnoses", headers=headers).json()["total"] == 0
            assert stored_files(home) == []
            metrics = httpx.get(f"{gateway.internal_url}/metrics", timeout=60).text
            assert 'drtech_diagnoses_total{exam_type="skin_lesion",status="rejected"} 1.0' in metrics
    finally:
        gateway.stop()
        skin.stop(grace=0)


@pytest.mark.postgres
def test_the_gateway_keeps_its_records_in_postgresql(stack: Stack, tmp_path: Path) -> None:
    from services.auth.testing import fresh_postgres_schema

    reason = postgres_skip_reason()
    if reason:
        pytest.skip(reason)
    with fresh_postgres_schema() as url:
        gateway = start_gateway(stack.settings(tmp_path, database_url=url))
        try:
            with httpx.Client(base_url=gateway.url, timeout=60) as client:
                headers = bearer(client)
                made = upload(client, headers, sample_image_bytes("chest_xray"), "chest_xray", explain=True)
                assert made.status_code == 201, made.text
                listed = client.get("/api/v1/diagnoses", headers=headers).json()
                assert [item["id"] for item in listed["items"]] == [made.json()["id"]]
                assert listed["items"][0] == made.json()
                # The row is in PostgreSQL (not in a SQLite file the gateway fell back to).
                engine = create_engine(url)
                try:
                    with engine.connect() as connection:
                        rows = connection.execute(text("SELECT id, status FROM diagnoses")).all()
                finally:
                    engine.dispose()
                assert [(row.id, row.status) for row in rows] == [(made.json()["id"], "completed")]
                assert not list(tmp_path.rglob("*.db"))
                assert (
                    client.delete(made.json()["image_url"][: -len("/image")], headers=headers).status_code
                    == 204
                )
        finally:
            gateway.stop()


# --- the models' gates --------------------------------------------------------------------------


def test_a_document_sent_as_a_chest_x_ray_is_422_naming_what_the_model_reads_and_keeps_nothing(
    stack: Stack, tmp_path: Path
) -> None:
    """The shipped pneumonia model's gate (training/gate.py) refuses a rendered page of text; a
    genuine chest X-ray still gets its diagnosis."""
    if not PNEUMONIA.model_path.exists():
        pytest.skip(f"shipped pneumonia model not exported yet: {PNEUMONIA.model_path} is missing")
    if not real_samples():
        pytest.skip("needs a genuine chest X-ray from ../shared/data (DRTECH_DATA_DIR), which is absent")
    from training.outside_images import make

    pneumonia = start_model(PNEUMONIA, serving_settings(refuse_unreadable=True), port=0)
    home = tmp_path / "home"
    gateway = start_gateway(stack.settings(home, DRTECH_PNEUMONIA_ADDR=pneumonia.target))
    try:
        with httpx.Client(base_url=gateway.url, timeout=60) as client:
            headers = bearer(client)
            page = png_bytes(make("document", "measure", 0))
            refused = upload(client, headers, page, "chest_xray", name="page.png", content_type="image/png")
            assert refused.status_code == 422, refused.text
            assert "chest X-rays" in refused.json()["detail"] and "pneumonia model" in refused.json()["detail"]
            assert client.get("/api/v1/diagnoses", headers=headers).json()["total"] == 0
            assert stored_files(home) == []

            genuine = upload(client, headers, sample_image_bytes("chest_xray"), "chest_xray")
            assert genuine.status_code == 201, genuine.text
            assert genuine.json()["label"] in LABELS["chest_xray"]
            assert client.get("/api/v1/diagnoses", headers=headers).json()["total"] == 1
    finally:
        gateway.stop()
        pneumonia.stop(grace=0)
