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
