"""What the web UI relies on, over real HTTP against the real stack (tests/web_stack.py):

sign-up checks that are the server's own rules, DICOM previews, auto-routing by the router model
(including refusing images that are none of the three), training plots on the model cards, and
patient-identifying DICOM tags that never appear in a response or a log line.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.support import jpeg_bytes, real_samples, sample_image_bytes
from tests.unit.test_imaging import make_dicom
from tests.web_stack import Stack, running_stack

PASSWORD = "correct horse 42"
PATIENT_NAME = "Zyxwvut^Qwertyline"
PATIENT_ID = "PID-SECRET-4242"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the model folders' layout with one training plot, as training writes them."""
    root = tmp_path_factory.mktemp("services")
    folder = root / "pneumonia" / "model"
    folder.mkdir(parents=True)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 120, 200)).save(buffer, format="PNG")
    (folder / "roc_curve.png").write_bytes(buffer.getvalue())
    (folder / "notes.txt").write_text("not a plot")
    return root


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("home"), tmp_path_factory.mktemp("models"), models_dir) as running:
        yield running


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=60) as client:
        yield client


def bearer(client: httpx.Client) -> dict[str, str]:
    email = f"web-{uuid.uuid4().hex[:10]}@example.org"
    body = {"email": email, "password": PASSWORD, "first_name": "Ada", "surname": "Lovelace"}
    assert client.post("/api/v1/auth/signup", json=body).status_code == 201
    token = client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD}).json()["access_token"]
    client.cookies.clear()
    return {"Authorization": f"Bearer {token}"}


def upload(client: httpx.Client, headers: dict[str, str], data: bytes, exam_type: str, **params: str) -> httpx.Response:
    return client.post("/api/v1/diagnoses", params=params, files={"file": ("upload", data, "application/octet-stream")},
                       data={"exam_type": exam_type}, headers=headers)


BAD_SIGN_UPS = [
    {},
    {"email": "not-an-email", "password": "short", "first_name": "", "surname": "X"},
    {"email": "a@example.org", "password": "aaaaaaaaaa", "first_name": "A", "surname": "B", "zip": "123",
     "gender": "robot", "birth_date": "2999-01-01"},
    {"email": "a@example.org", "password": "onlyletters", "first_name": "A" * 101, "surname": "B",
     "birth_date": "1800-01-01", "city": "C" * 101},
]


@pytest.mark.parametrize("body", BAD_SIGN_UPS)
def test_the_sign_up_check_gives_exactly_the_messages_sign_up_answers(client: httpx.Client, body: dict) -> None:
    checked = client.post("/api/v1/auth/signup/check", json=body)
    assert checked.status_code == 200
    full = {"email": "", "password": "", "first_name": "", "surname": "", **body}
    refused = client.post("/api/v1/auth/signup", json=full)
    assert refused.status_code == 422
    assert checked.json()["errors"] == refused.json()["errors"] != {}


def test_a_valid_draft_has_no_messages_and_creates_no_account(client: httpx.Client) -> None:
    email = f"draft-{uuid.uuid4().hex[:8]}@example.org"
    body = {"email": email, "password": PASSWORD, "first_name": "Ada", "surname": "Lovelace", "zip": "12345-6789"}
    assert client.post("/api/v1/auth/signup/check", json=body).json() == {"errors": {}}
    assert client.post("/api/v1/auth/signup", json=body).status_code == 201  # the email was still free


def knee_dicom() -> bytes:
    knee = np.asarray(Image.open(io.BytesIO(sample_image_bytes("bone_xray"))).convert("L"), dtype=np.uint16)
    return make_dicom(knee * 16, extra={"Modality": "DX", "BodyPartExamined": "KNEE",
                                        "PatientName": PATIENT_NAME, "PatientID": PATIENT_ID})


def test_a_dicom_preview_is_a_png_and_nothing_is_stored(client: httpx.Client, stack: Stack) -> None:
    headers = bearer(client)
    before = sorted(p.name for p in (stack.home / "uploads").rglob("*")) if (stack.home / "uploads").exists() else []
    reply = client.post("/api/v1/previews", files={"file": ("knee.dcm", knee_dicom(), "application/dicom")},
                        headers=headers)
    assert reply.status_code == 200 and reply.headers["content-type"] == "image/png"
    preview = Image.open(io.BytesIO(reply.content))
    assert max(preview.size) <= 512
    after = sorted(p.name for p in (stack.home / "uploads").rglob("*")) if (stack.home / "uploads").exists() else []
    assert after == before
    bad = client.post("/api/v1/previews", files={"file": ("x.dcm", b"nope" * 100, "application/dicom")}, headers=headers)
    assert bad.status_code in {415, 422} and "Traceback" not in bad.text
    # Headers that pass but pixels that do not decode: a PNG cut in half, a DICOM short of pixel data.
    png = io.BytesIO()
    Image.open(io.BytesIO(sample_image_bytes("bone_xray"))).save(png, format="PNG")
    short_dicom = knee_dicom()[:-1000]
    for name, data, kind in [("half.png", png.getvalue()[: len(png.getvalue()) // 2], "image/png"),
                             ("short.dcm", short_dicom, "application/dicom")]:
        broken = client.post("/api/v1/previews", files={"file": (name, data, kind)}, headers=headers)
        assert broken.status_code == 422, (name, broken.text)
        assert broken.json()["detail"].startswith("The image cannot be shown: ")
    assert client.post("/api/v1/previews", files={"file": ("knee.dcm", knee_dicom(), "application/dicom")}).status_code == 401


def test_patient_identifying_dicom_tags_never_reach_a_response_or_a_log(client: httpx.Client, stack: Stack) -> None:
    headers = bearer(client)
    original = knee_dicom()
    reply = upload(client, headers, original, "auto", explain="true")
    assert reply.status_code == 201, reply.text
    d = reply.json()
    assert d["exam_type"] == "bone_xray" and d["heatmap_url"]
    texts = [reply.text,
             client.get("/api/v1/diagnoses", headers=headers).text,
             client.get(f"/api/v1/diagnoses/{d['id']}", headers=headers).text]
    image = client.get(d["image_url"], headers=headers)
    assert image.headers["content-type"] == "image/png"   # rendered pixels, not the DICOM with its header
    texts.append(client.post("/api/v1/previews", files={"file": ("k.dcm", original, "application/dicom")},
                             headers=headers).text)
    for secret in (PATIENT_NAME, PATIENT_ID, "Zyxwvut", "Qwertyline"):
        for text in texts:
            assert secret not in text
        assert secret.encode() not in image.content
        assert secret not in stack.logs.text(), "a patient-identifying tag was logged"
    # ...while the stored upload keeps the original bytes, header included.
    stored = list((stack.home / "uploads").rglob("*"))
    assert any(p.is_file() and p.read_bytes() == original for p in stored)


def test_auto_routes_a_plain_image_with_the_router_model(client: httpx.Client) -> None:
    if not real_samples():
        pytest.skip("needs genuine images from ../shared/data (DRTECH_DATA_DIR), which are absent: the "
                    "router rightly refuses generated stand-ins")
    headers = bearer(client)
    for exam_type in ("chest_xray", "skin_lesion", "bone_xray"):
        reply = upload(client, headers, sample_image_bytes(exam_type), "auto")
        assert reply.status_code == 201, reply.text
        assert reply.json()["exam_type"] == exam_type and reply.json()["requested_exam_type"] == "auto"


@pytest.mark.parametrize("kind", ["noise", "text", "ct_slice"])
def test_auto_refuses_an_image_that_is_none_of_the_three(client: httpx.Client, kind: str) -> None:
    headers = bearer(client)
    if kind == "noise":
        data = jpeg_bytes(Image.fromarray(np.random.default_rng(1).integers(0, 256, (224, 224, 3), dtype=np.uint8)))
    elif kind == "text":
        from PIL import ImageDraw

        page = Image.new("RGB", (400, 300), "white")
        draw = ImageDraw.Draw(page)
        for row in range(14):
            draw.text((10, 10 + 20 * row), "invoice total amount due on receipt " * 2, fill="black")
        data = jpeg_bytes(page)
    else:
        from pydicom.data import get_testdata_file

        data = Path(get_testdata_file("CT_small.dcm")).read_bytes()   # Modality CT, no body part
    reply = upload(client, headers, data, "auto")
    assert reply.status_code == 422, reply.text
    assert "does not look like a chest X-ray" in reply.json()["detail"]
    assert reply.json()["errors"]["file"]
    assert client.get("/api/v1/diagnoses", headers=headers).json()["total"] == 0


def test_model_cards_include_the_router_and_the_training_plots(client: httpx.Client) -> None:
    cards = {card["task"]: card for card in client.get("/api/v1/models").json()}
    assert set(cards) == {"bone", "skin", "pneumonia", "router"}
    router = cards["router"]
    assert router["exam_type"] == "auto"
    assert router["metrics"]["accuracy"]["value"] >= 0.9
    assert router["metrics"]["ood_rejection_rate"]["value"] >= 0.9
    assert cards["pneumonia"]["plots"] == ["/api/v1/models/pneumonia/plots/roc_curve.png"]
    assert cards["skin"]["plots"] == []
    plot = client.get("/api/v1/models/pneumonia/plots/roc_curve.png")
    assert plot.status_code == 200 and plot.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(plot.content)).size == (64, 48)
    assert client.get("/api/v1/models/pneumonia/plots").json() == {"plots": cards["pneumonia"]["plots"]}


@pytest.mark.parametrize(
    "path",
    # (Paths that climb out with %2F never reach the plot code: the router answers 404 first. What the
    # plot code itself lets through is tested in tests/unit/test_gateway_http.py.)
    ["/api/v1/models/pneumonia/plots/notes.txt", "/api/v1/models/pneumonia/plots/missing.png",
     "/api/v1/models/gateway/plots/x.png"],
)
def test_only_plots_of_known_models_are_served(client: httpx.Client, path: str) -> None:
    assert client.get(path).status_code == 404
