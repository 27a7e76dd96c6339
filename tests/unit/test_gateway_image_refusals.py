"""A model service's refusal of an image is 415 or 422 by the reason it sends in its trailing
metadata (services/core/interceptors.py), never by the wording of its message."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.settings import GatewaySettings
from protos.drtech.v1 import diagnosis_pb2
from services.core.errors import ERROR_REASON_KEY
from tests.unit.test_gateway_http import LIVE_TOKEN, OneLiveSession
from tests.unit.test_imaging import encode, gradient_rgb


class RefusingModel:
    """A model service that refuses every image with INVALID_ARGUMENT, `reason` in its trailing
    metadata, and `message`."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason, self.message = reason, message

    async def Diagnose(self, request: diagnosis_pb2.DiagnoseRequest, timeout: float) -> None:
        raise grpc.aio.AioRpcError(grpc.StatusCode.INVALID_ARGUMENT, grpc.aio.Metadata(),
                                   grpc.aio.Metadata((ERROR_REASON_KEY, self.reason)), self.message)


@pytest.mark.parametrize(("reason", "message", "status"), [
    ("unsupported_media_type", "this service takes no such files", 415),
    ("invalid_image", "unsupported media type, says the message, yet the image is only too small", 422),
    ("wrong_image_kind", "this does not look like a chest X-ray", 422),
    ("", "a refusal without a reason", 422),
])
def test_a_refusal_is_415_or_422_by_its_reason_not_its_wording(
    tmp_path: Path, reason: str, message: str, status: int
) -> None:
    with TestClient(create_app(GatewaySettings(DRTECH_HOME=tmp_path)), base_url="http://127.0.0.1") as client:
        backends = client.app.state.gateway.backends
        backends.auth = OneLiveSession()
        backends.models["pneumonia"] = RefusingModel(reason, message)
        reply = client.post("/api/v1/diagnoses", files={"file": ("upload", encode(gradient_rgb(), "PNG"))},
                            data={"exam_type": "chest_xray"}, headers={"Authorization": f"Bearer {LIVE_TOKEN}"})
    assert reply.status_code == status, reply.text
    assert reply.json()["detail"] == f"The pneumonia model cannot use this image: {message}"


@pytest.mark.parametrize(("reason", "status"), [("unsupported_media_type", 415), ("invalid_image", 422)])
def test_the_routers_refusal_of_an_auto_upload_is_mapped_the_same_way(
    tmp_path: Path, reason: str, status: int
) -> None:
    with TestClient(create_app(GatewaySettings(DRTECH_HOME=tmp_path)), base_url="http://127.0.0.1") as client:
        backends = client.app.state.gateway.backends
        backends.auth = OneLiveSession()
        backends.models["router"] = RefusingModel(reason, "the router cannot read it")
        reply = client.post("/api/v1/diagnoses", files={"file": ("upload", encode(gradient_rgb(), "PNG"))},
                            data={"exam_type": "auto"}, headers={"Authorization": f"Bearer {LIVE_TOKEN}"})
    assert reply.status_code == status, reply.text
    assert reply.json() == {"detail": "The image cannot be used: the router cannot read it",
                            "errors": {"file": "the router cannot read it"}}


NOT_A_CHEST_XRAY = "this does not look like a chest X-ray"


class DownModel:
    async def Diagnose(self, request: diagnosis_pb2.DiagnoseRequest, timeout: float) -> None:
        raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                   "connection refused")


def test_an_auto_upload_the_chosen_model_refuses_is_one_of_no_known_kind(tmp_path: Path) -> None:
    """The header routed it (a DICOM saying CR / CHEST) and the chest model's own check refused it:
    to someone who chose auto, 'choose the exam type that matches' is no answer."""
    from gateway.auto_routing import NOT_A_KNOWN_KIND
    from tests.unit.test_imaging import make_dicom, ramp

    headers = {"Authorization": f"Bearer {LIVE_TOKEN}"}
    with TestClient(create_app(GatewaySettings(DRTECH_HOME=tmp_path)), base_url="http://127.0.0.1") as client:
        backends = client.app.state.gateway.backends
        backends.auth = OneLiveSession()
        backends.models["pneumonia"] = RefusingModel("wrong_image_kind", NOT_A_CHEST_XRAY)
        reply = client.post("/api/v1/diagnoses", files={"file": ("x.dcm", make_dicom(ramp(256, 256)))},
                            data={"exam_type": "auto"}, headers=headers)
        assert reply.status_code == 422, reply.text
        assert reply.json() == {"detail": NOT_A_KNOWN_KIND, "errors": {"file": NOT_A_KNOWN_KIND}}
        assert client.get("/api/v1/diagnoses", headers=headers).json()["total"] == 0


def test_a_retry_the_model_refuses_stops_the_record_offering_a_retry(tmp_path: Path) -> None:
    """Kept while the service was down ('retry with POST .../retry'); back, the model refuses the image:
    no retry can change that, so the record says so instead, and stays for its owner to delete."""
    headers = {"Authorization": f"Bearer {LIVE_TOKEN}"}
    with TestClient(create_app(GatewaySettings(DRTECH_HOME=tmp_path)), base_url="http://127.0.0.1") as client:
        backends = client.app.state.gateway.backends
        backends.auth = OneLiveSession()
        backends.models["pneumonia"] = DownModel()
        made = client.post("/api/v1/diagnoses", files={"file": ("x.png", encode(gradient_rgb(), "PNG"))},
                           data={"exam_type": "chest_xray"}, headers=headers).json()
        assert made["status"] == "failed" and "retry" in made["detail"]

        backends.models["pneumonia"] = RefusingModel("wrong_image_kind", NOT_A_CHEST_XRAY)
        retried = client.post(f"/api/v1/diagnoses/{made['id']}/retry", headers=headers)
        assert retried.status_code == 422, retried.text
        record = client.get(f"/api/v1/diagnoses/{made['id']}", headers=headers).json()
        assert record["status"] == "failed"
        assert record["detail"] == (f"The pneumonia model cannot use this image: {NOT_A_CHEST_XRAY}. "
                                    "Retrying cannot change that; delete this diagnosis.")


def test_the_heatmap_of_a_failed_explained_diagnosis_says_to_retry_it(tmp_path: Path) -> None:
    headers = {"Authorization": f"Bearer {LIVE_TOKEN}"}
    with TestClient(create_app(GatewaySettings(DRTECH_HOME=tmp_path)), base_url="http://127.0.0.1") as client:
        backends = client.app.state.gateway.backends
        backends.auth = OneLiveSession()
        backends.models["pneumonia"] = DownModel()
        made = client.post("/api/v1/diagnoses", params={"explain": "true"},
                           files={"file": ("x.png", encode(gradient_rgb(), "PNG"))},
                           data={"exam_type": "chest_xray"}, headers=headers).json()
        reply = client.get(f"/api/v1/diagnoses/{made['id']}/heatmap", headers=headers)
    assert reply.status_code == 404
    assert f"retry it (POST /api/v1/diagnoses/{made['id']}/retry)" in reply.json()["detail"]
