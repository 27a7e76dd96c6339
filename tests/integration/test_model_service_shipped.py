"""The three shipped models (services/<task>/model/) served by the real core, in-process on free ports.

Each test skips, saying which file is missing, until training has exported that model.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from google.protobuf.json_format import MessageToDict
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from protos.drtech.v1 import diagnosis_pb2, diagnosis_pb2_grpc
from services.bone.spec import SPEC as BONE
from services.core.server import RunningServer, start_server
from services.core.settings import ServingSettings
from services.pneumonia.spec import SPEC as PNEUMONIA
from services.skin.spec import SPEC as SKIN
from tests.support import real_samples, sample_image_bytes

SPECS = {"bone": BONE, "skin": SKIN, "pneumonia": PNEUMONIA}
TIMEOUT = 30.0


@pytest.fixture(scope="module", params=sorted(SPECS))
def shipped(request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    spec = SPECS[request.param]
    for path in (spec.model_path, spec.card_path):
        if not path.is_file():
            pytest.skip(f"shipped {spec.task} model not exported yet: {path} is missing (run training)")
    # Without ../shared/data the samples are generated stand-ins, which the models' gates refuse.
    settings = ServingSettings(intra_op_threads=1, worker_threads=2, warmup_runs=1, refuse_unreadable=real_samples())
    running = start_server(spec, settings, port=0)
    yield running
    running.stop(grace=0)


@pytest.fixture
def stub(shipped: RunningServer) -> Iterator[diagnosis_pb2_grpc.DiagnosisServiceStub]:
    with grpc.insecure_channel(shipped.target) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        yield diagnosis_pb2_grpc.DiagnosisServiceStub(channel)


def test_shipped_model_diagnoses_a_sample_image_with_a_heatmap(shipped: RunningServer, stub) -> None:
    spec = shipped.spec
    image = sample_image_bytes(spec.exam_type)
    reply = stub.Diagnose(diagnosis_pb2.DiagnoseRequest(image=image, explain=True), timeout=TIMEOUT)
    card = spec.load_card()
    assert (reply.model.name, reply.model.version) == (card["name"], card["version"])
    probabilities = np.array([p.probability for p in reply.probabilities])
    assert [p.label for p in reply.probabilities] == spec.label_codes
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-4)
    assert reply.label == spec.label_codes[int(np.argmax(probabilities))]
    width, height = Image.open(io.BytesIO(image)).size
    overlay = Image.open(io.BytesIO(reply.heatmap.png))
    assert overlay.mode == "RGBA" and overlay.size == (width, height)
    if spec.task == "bone":
        extra = MessageToDict(reply.extra)
        assert extra["kl_grade"] in range(5)
        assert sum(extra["kl_probabilities"]) == pytest.approx(1.0, abs=1e-4)


def test_shipped_model_info_carries_the_card(shipped: RunningServer, stub) -> None:
    info = stub.GetModelInfo(diagnosis_pb2.GetModelInfoRequest(), timeout=TIMEOUT)
    card = shipped.spec.load_card()
    assert json.loads(info.card_json) == card
    assert [label.code for label in info.labels] == shipped.spec.label_codes
    assert MessageToDict(info.metrics), "the card has no held-out metrics"
    assert info.intended_use


def test_shipped_router_serves_its_kind_and_ood_ratio_through_the_same_core() -> None:
    """The router is a fourth task folder on the same core: its extra output comes back as a list."""
    from services.router.spec import SPEC as ROUTER

    if not ROUTER.model_path.is_file():
        pytest.skip(f"router model not exported yet: {ROUTER.model_path} is missing")
    if not real_samples():
        pytest.skip("needs a genuine chest X-ray from ../shared/data (DRTECH_DATA_DIR), which is absent: "
                    "the router rightly tells a generated stand-in from one")
    running = start_server(ROUTER, ServingSettings(intra_op_threads=1, warmup_runs=1), port=0)
    try:
        with grpc.insecure_channel(running.target) as channel:
            stub = diagnosis_pb2_grpc.DiagnosisServiceStub(channel)
            request = diagnosis_pb2.DiagnoseRequest(image=sample_image_bytes("chest_xray"))
            reply = stub.Diagnose(request, timeout=TIMEOUT)
    finally:
        running.stop(grace=0)
    assert reply.label == "chest_xray"          # the sample chest X-ray is recognised as one
    ratios = MessageToDict(reply.extra)["ood_ratio"]
    assert len(ratios) == 1 and np.isfinite(ratios[0]) and ratios[0] >= 0
