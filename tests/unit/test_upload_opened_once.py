"""Each upload is opened once where it is read: the gateway inspects it once (type, size, DICOM
routing tags) and decodes nothing; each model service inspects it once and decodes it from that
inspection. The gateway checks uploads against the model services' own limits."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from gateway import admission
from gateway.app import create_app
from gateway.settings import GatewaySettings
from protos.drtech.v1 import diagnosis_pb2
from services.core.imaging import decode, dicom, inspect_image, jpeg, png, raster
from services.core.service import DiagnosisServicer
from services.core.settings import ServingSettings
from tests.unit.test_gateway_http import LIVE_TOKEN, OneLiveSession
from tests.unit.test_gateway_image_refusals import RefusingModel
from tests.unit.test_imaging import encode, gradient_rgb, make_dicom, ramp
from tests.unit.test_serving_gate import _servicer


class Readers:
    """Counts the runs of the format readers, by where they ran: the gateway, or a model service."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.counts: dict[str, Counter[str]] = defaultdict(Counter)
        self.where = "gateway"
        for module, name, kind in [
            (jpeg, "check_structure", "JPEG structure walk"),
            (png, "check_chunks", "PNG chunk walk"),
            (raster.Image, "open", "Pillow header read"),
            (raster, "decode_raster", "pixel decode"),
            (dicom, "parse", "DICOM parse"),
            (dicom, "decode_dicom", "pixel decode"),
        ]:
            monkeypatch.setattr(module, name, self._counted(getattr(module, name), kind))

    def _counted(self, read: Callable[..., Any], kind: str) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            self.counts[self.where][kind] += 1
            return read(*args, **kwargs)
        return counted

    @contextmanager
    def inside(self, where: str) -> Iterator[None]:
        self.where = where
        try:
            yield
        finally:
            self.where = "gateway"


class InProcessService:
    """A model service as the gateway calls it: the real DiagnosisServicer, run in this process (its
    readers' runs counted under `name`); `answer` stands in for the router's own reply."""

    def __init__(self, servicer: DiagnosisServicer, readers: Readers, name: str,
                 answer: diagnosis_pb2.DiagnoseResponse | None = None) -> None:
        self.servicer, self.readers, self.name, self.answer = servicer, readers, name, answer

    async def Diagnose(self, request: diagnosis_pb2.DiagnoseRequest, timeout: float) -> diagnosis_pb2.DiagnoseResponse:
        with self.readers.inside(self.name):
            reply = self.servicer.Diagnose(request, None)
        return self.answer or reply


def _routed_to_chest() -> diagnosis_pb2.DiagnoseResponse:
    reply = diagnosis_pb2.DiagnoseResponse(label="chest_xray", confidence=0.9)
    reply.extra.update({"ood_ratio": [0.5]})
    return reply


@pytest.fixture
def servicer(tmp_path: Path) -> Iterator[DiagnosisServicer]:
    served = _servicer(tmp_path / "model", bias=None)   # a tiny ungated model on the pneumonia spec
    yield served
    served.close()


def _upload(client: TestClient, data: bytes, exam_type: str) -> Any:
    return client.post("/api/v1/diagnoses", files={"file": ("upload", data)}, data={"exam_type": exam_type},
                       headers={"Authorization": f"Bearer {LIVE_TOKEN}"})


def test_a_jpeg_with_a_chosen_exam_type_is_walked_once_by_the_gateway_and_decoded_once_by_its_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, servicer: DiagnosisServicer
) -> None:
    readers = Readers(monkeypatch)
    with TestClient(create_app(GatewaySettings(DRTECH_HOME=tmp_path / "home")), base_url="http://127.0.0.1") as client:
        backends = client.app.state.gateway.backends
        backends.auth = OneLiveSession()
        backends.models["pneumonia"] = InProcessService(servicer, readers, "chest service")
        reply = _upload(client, encode(gradient_rgb(256, 256), "JPEG"), "chest_xray")
    assert reply.status_code == 201 and reply.json()["status"] == "completed", reply.text
    assert readers.counts == {
        "gateway": {"JPEG structure walk": 1, "Pillow header read": 1},
        "chest service": {"JPEG structure walk": 1, "Pillow header read": 1, "pixel decode": 1},
    }


def test_an_auto_dicom_is_parsed_once_by_the_gateway_and_once_by_each_service_that_decodes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, servicer: DiagnosisServicer
) -> None:
    """Its header does not say the exam (Modality OT), so the router model looks at it first."""
    readers = Readers(monkeypatch)
    with TestClient(create_app(GatewaySettings(DRTECH_HOME=tmp_path / "home")), base_url="http://127.0.0.1") as client:
        backends = client.app.state.gateway.backends
        backends.auth = OneLiveSession()
        backends.models["router"] = InProcessService(servicer, readers, "router", answer=_routed_to_chest())
        backends.models["pneumonia"] = InProcessService(servicer, readers, "chest service")
        reply = _upload(client, make_dicom(ramp(), extra={"Modality": "OT"}), "auto")
    assert reply.status_code == 201 and reply.json()["exam_type"] == "chest_xray", reply.text
    assert readers.counts == {
        "gateway": {"DICOM parse": 1},
        "router": {"DICOM parse": 1, "pixel decode": 1},
        "chest service": {"DICOM parse": 1, "pixel decode": 1},
    }


def test_a_jpeg_header_is_walked_on_the_event_loop_and_png_and_dicom_headers_in_a_worker_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, servicer: DiagnosisServicer
) -> None:
    """A JPEG's walk is bounded by the segment limits and cheaper than a thread hand-off; a PNG's
    compressed text and a DICOM's elements may take tens of ms, which must not stall the loop."""
    walked: list[tuple[str, bool]] = []
    real_check_image = admission.check_image

    def check_image(data: bytes, limits: Any) -> Any:
        inspection = real_check_image(data, limits)
        walked.append((inspection.media_type, _on_event_loop()))
        return inspection

    monkeypatch.setattr(admission, "check_image", check_image)
    with TestClient(create_app(GatewaySettings(DRTECH_HOME=tmp_path / "home")), base_url="http://127.0.0.1") as client:
        backends = client.app.state.gateway.backends
        backends.auth = OneLiveSession()
        backends.models["pneumonia"] = InProcessService(servicer, Readers(monkeypatch), "chest service")
        for data in (encode(gradient_rgb(256, 256), "JPEG"), encode(gradient_rgb(256, 256), "PNG"),
                     make_dicom(ramp())):
            reply = _upload(client, data, "chest_xray")
            assert reply.status_code == 201, reply.text
    assert walked == [("image/jpeg", True), ("image/png", False), ("application/dicom", False)]


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def test_an_inspection_is_decoded_once() -> None:
    """decode continues from the file the inspection opened, which a second decode cannot reuse."""
    inspection = inspect_image(encode(gradient_rgb(), "PNG"))
    assert decode(inspection).image.size == (64, 48)
    with pytest.raises(RuntimeError, match="inspect the upload again"):
        decode(inspection)


def test_the_gateway_checks_uploads_against_the_model_services_own_limits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One setting, read by both: a model service set to refuse sides under 64 px has the gateway
    refuse them too, before any model is called."""
    monkeypatch.setenv("DRTECH_SERVING_MIN_IMAGE_SIDE", "64")
    monkeypatch.setenv("DRTECH_MAX_IMAGE_PIXELS", "1000000")
    settings = GatewaySettings(DRTECH_HOME=tmp_path)
    served = ServingSettings().image_limits()
    assert (settings.image_limits().min_side, settings.image_limits().max_pixels) == (64, 1_000_000)
    assert (served.min_side, served.max_pixels) == (64, 1_000_000)
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        backends = client.app.state.gateway.backends
        backends.auth = OneLiveSession()
        backends.models["pneumonia"] = RefusingModel("", "the model must not be called")
        small = _upload(client, encode(gradient_rgb(48, 48), "PNG"), "chest_xray")
        large = _upload(client, encode(Image.new("L", (1200, 1000)), "PNG"), "chest_xray")
    assert small.status_code == 422, small.text
    assert small.json()["detail"] == ("The image cannot be used: the image is 48x48 pixels; "
                                      "each side must be at least 64 pixels.")
    assert large.status_code == 422 and "the largest accepted is 1000000 pixels" in large.json()["detail"]
