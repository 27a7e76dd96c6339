"""The model services, started in-process on free ports and called through the real generated stubs.

These run the real serving core with tiny ONNX models that honour the shipped model file
contract (tests/serving_models.py), so they do not depend on training having finished;
test_model_service_shipped.py runs the same checks against the shipped models.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf.json_format import MessageToDict
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image
from prometheus_client import REGISTRY

from protos.drtech.v1 import diagnosis_pb2, diagnosis_pb2_grpc
from services.bone.spec import SPEC as BONE
from services.core.interceptors import ERROR_REASON_KEY
from services.core.server import DIAGNOSIS_SERVICE, RunningServer, start_server
from services.core.settings import ServingSettings
from services.core.spec import TaskSpec
from services.pneumonia.spec import SPEC as PNEUMONIA
from services.skin.spec import SPEC as SKIN
from tests.serving_models import write_fixture_model
from tests.support import free_port, jpeg_bytes, synthetic_image
from tests.unit.test_imaging import make_dicom, ramp

SPECS = {"bone": BONE, "skin": SKIN, "pneumonia": PNEUMONIA}
EXAM_IMAGE = {"bone": "bone_xray", "skin": "skin_lesion", "pneumonia": "chest_xray"}
TIMEOUT = 10.0


def settings(**overrides) -> ServingSettings:
    # Small and explicit, so the tests share 2 cores politely and do not read the environment's values.
    values = dict(intra_op_threads=1, worker_threads=4, warmup_runs=1, grace_seconds=5.0, metrics_port=0)
    values.update(overrides)
    return ServingSettings(**values)


def image_bytes(task: str, size: tuple[int, int] = (256, 240), seed: int = 0) -> bytes:
    return jpeg_bytes(synthetic_image(EXAM_IMAGE[task], size, seed))


@pytest.fixture(scope="module")
def fixture_specs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TaskSpec]:
    root = tmp_path_factory.mktemp("models")
    return {task: write_fixture_model(spec, root / task) for task, spec in SPECS.items()}


@pytest.fixture(scope="module", params=sorted(SPECS))
def service(request: pytest.FixtureRequest, fixture_specs: dict[str, TaskSpec]) -> Iterator[RunningServer]:
    running = start_server(fixture_specs[request.param], settings(), port=0)
    yield running
    running.stop(grace=0)


@pytest.fixture
def channel(service: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(service.target) as channel:
        yield channel


@pytest.fixture
def stub(channel: grpc.Channel) -> diagnosis_pb2_grpc.DiagnosisServiceStub:
    return diagnosis_pb2_grpc.DiagnosisServiceStub(channel)


def health_status(channel: grpc.Channel, service_name: str = "") -> int:
    request = health_pb2.HealthCheckRequest(service=service_name)
    return health_pb2_grpc.HealthStub(channel).Check(request, timeout=TIMEOUT).status


def error_reason(error: grpc.RpcError) -> str:
    return dict(error.trailing_metadata() or ()).get(ERROR_REASON_KEY, "")


# --- start-up and health ----------------------------------------------------------------------

def test_health_is_not_serving_until_the_model_is_warm_then_serving(
    fixture_specs: dict[str, TaskSpec],
) -> None:
    running = start_server(fixture_specs["pneumonia"], settings(), port=0, load=False)
    try:
        with grpc.insecure_channel(running.target) as channel:
            for name in ("", DIAGNOSIS_SERVICE):
                assert health_status(channel, name) == health_pb2.HealthCheckResponse.NOT_SERVING
            stub = diagnosis_pb2_grpc.DiagnosisServiceStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.Diagnose(diagnosis_pb2.DiagnoseRequest(image=image_bytes("pneumonia")), timeout=TIMEOUT)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "still loading" in refused.value.details()

            running.load_model()

            for name in ("", DIAGNOSIS_SERVICE):
                assert health_status(channel, name) == health_pb2.HealthCheckResponse.SERVING
            request = diagnosis_pb2.DiagnoseRequest(image=image_bytes("pneumonia"))
            reply = stub.Diagnose(request, timeout=TIMEOUT)
            assert reply.label in PNEUMONIA.label_codes
    finally:
        running.stop(grace=0)


def test_a_missing_model_fails_start_up_with_a_clear_error(tmp_path: Path) -> None:
    from dataclasses import replace

    from services.core.runtime import ModelContractError

    with pytest.raises(ModelContractError, match="card.json does not exist"):
        start_server(replace(SKIN, model_dir=tmp_path), settings(), port=0)


def test_a_model_with_the_wrong_number_of_classes_is_refused(tmp_path: Path, fixture_specs) -> None:
    from dataclasses import replace

    from services.core.runtime import ModelContractError

    pneumonia_model = fixture_specs["pneumonia"].model_dir
    (tmp_path / "model.onnx").write_bytes((pneumonia_model / "model.onnx").read_bytes())
    card = json.loads((pneumonia_model / "card.json").read_text())
    card["labels"] = SKIN.label_codes
    (tmp_path / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelContractError, match="2 output classes but the skin spec has 7 labels"):
        start_server(replace(SKIN, model_dir=tmp_path), settings(), port=0)


# --- Diagnose -------------------------------------------------------------------------------------

def test_service_is_serving(service: RunningServer, channel: grpc.Channel) -> None:
    assert health_status(channel) == health_pb2.HealthCheckResponse.SERVING
    assert health_status(channel, DIAGNOSIS_SERVICE) == health_pb2.HealthCheckResponse.SERVING


def test_an_upload_is_decoded_only_when_its_pixels_fit_the_decoding_budget(service: RunningServer, stub) -> None:
    budget = service.servicer.decoding
    assert budget.capacity == ServingSettings().max_decoding_pixels == 64_000_000
    with budget.hold(budget.capacity):      # as if the largest image were being decoded
        call = stub.Diagnose.future(diagnosis_pb2.DiagnoseRequest(image=image_bytes(service.spec.task)),
                                    timeout=TIMEOUT)
        with pytest.raises(grpc.FutureTimeoutError):
            call.result(timeout=0.3)
    assert call.result(timeout=TIMEOUT).label in service.spec.label_codes
    assert budget.held == 0

    # A call whose deadline passes while it waits frees its worker thread instead of decoding for nobody.
    with budget.hold(budget.capacity):
        with pytest.raises(grpc.RpcError) as failed:
            stub.Diagnose(diagnosis_pb2.DiagnoseRequest(image=image_bytes(service.spec.task)), timeout=0.5)
        # Whichever side sees the deadline first: the client's DEADLINE_EXCEEDED or the service's answer.
        assert failed.value.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
        if failed.value.code() == grpc.StatusCode.UNAVAILABLE:
            assert "decoding other large images; retry shortly" in failed.value.details()
        waited_until = time.monotonic() + 5
        while budget.waiting and time.monotonic() < waited_until:
            time.sleep(0.01)
        assert budget.waiting == 0
    waited_until = time.monotonic() + 5             # a late handler times out at once, holding nothing
    while (budget.held or budget.waiting) and time.monotonic() < waited_until:
        time.sleep(0.01)
    assert budget.held == 0 and budget.waiting == 0


def test_diagnose_returns_a_label_and_probabilities_that_sum_to_one(service: RunningServer, stub) -> None:
    spec = service.spec
    reply = stub.Diagnose(
        diagnosis_pb2.DiagnoseRequest(image=image_bytes(spec.task), request_id="req-42"), timeout=TIMEOUT
    )
    assert reply.request_id == "req-42"
    assert [p.label for p in reply.probabilities] == spec.label_codes
    assert [p.display_name for p in reply.probabilities] == [label.display_name for label in spec.labels]
    probabilities = np.array([p.probability for p in reply.probabilities])
    assert np.all((probabilities >= 0) & (probabilities <= 1))
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    assert reply.label == spec.label_codes[int(np.argmax(probabilities))]
    assert reply.label_display == spec.display_name(reply.label)
    assert reply.confidence == pytest.approx(probabilities.max())
    assert (reply.model.name, reply.model.version) == (f"fixture-{spec.task}", "0.0.1")
    assert reply.inference_ms > 0
    assert not reply.HasField("heatmap")


def test_bone_reports_a_kellgren_lawrence_grade(fixture_specs: dict[str, TaskSpec]) -> None:
    running = start_server(fixture_specs["bone"], settings(), port=0)
    try:
        with grpc.insecure_channel(running.target) as channel:
            stub = diagnosis_pb2_grpc.DiagnosisServiceStub(channel)
            reply = stub.Diagnose(diagnosis_pb2.DiagnoseRequest(image=image_bytes("bone")), timeout=TIMEOUT)
    finally:
        running.stop(grace=0)
    extra = MessageToDict(reply.extra)
    assert len(extra["kl_probabilities"]) == 5
    assert sum(extra["kl_probabilities"]) == pytest.approx(1.0, abs=1e-5)
    assert extra["kl_grade"] == int(np.argmax(extra["kl_probabilities"]))


def test_explain_returns_a_png_overlay_at_the_uploaded_image_size(service: RunningServer, stub) -> None:
    reply = stub.Diagnose(
        diagnosis_pb2.DiagnoseRequest(image=image_bytes(service.spec.task, (320, 256)), explain=True),
        timeout=TIMEOUT,
    )
    assert reply.HasField("heatmap")
    overlay = Image.open(io.BytesIO(reply.heatmap.png))
    assert overlay.format == "PNG" and overlay.mode == "RGBA"
    assert overlay.size == (320, 256) == (reply.heatmap.width, reply.heatmap.height)
    assert reply.heatmap.method == "grad-cam"
    assert reply.heatmap.target_label == reply.label


def test_a_dicom_upload_is_diagnosed(service: RunningServer, stub) -> None:
    reply = stub.Diagnose(
        diagnosis_pb2.DiagnoseRequest(
            image=make_dicom(ramp(256, 256), photometric="MONOCHROME1"), explain=True
        ),
        timeout=TIMEOUT,
    )
    assert reply.label in service.spec.label_codes
    assert (reply.heatmap.width, reply.heatmap.height) == (256, 256)


# --- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("image", "media_type", "reason", "message"),
    [
        (b"", "", "invalid_image", "invalid image: the image is empty"),
        (b"%PDF-1.7 definitely not an x-ray" * 4, "", "unsupported_media_type",
         "not a JPEG, PNG or DICOM image"),
        (b"GIF89a" + bytes(100), "image/gif", "unsupported_media_type", "unsupported media type 'image/gif'"),
        (jpeg_bytes(synthetic_image("chest_xray", (16, 16))), "image/jpeg", "invalid_image",
         "at least 32 pixels"),
        (jpeg_bytes(synthetic_image("chest_xray", (300, 300)))[:2000], "", "invalid_image",
         "truncated or corrupt"),
    ],
    ids=["empty", "not-an-image", "gif", "too-small", "truncated"],
)
def test_bad_images_are_invalid_argument_with_a_clear_message(
    stub, image: bytes, media_type: str, reason: str, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        stub.Diagnose(diagnosis_pb2.DiagnoseRequest(image=image, media_type=media_type), timeout=TIMEOUT)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in refused.value.details()
    assert error_reason(refused.value) == reason


def test_image_over_the_byte_limit_is_refused(fixture_specs: dict[str, TaskSpec]) -> None:
    running = start_server(fixture_specs["skin"], settings(max_image_bytes=10_000), port=0)
    try:
        with grpc.insecure_channel(running.target) as channel:
            stub = diagnosis_pb2_grpc.DiagnosisServiceStub(channel)
            big = jpeg_bytes(synthetic_image("skin_lesion", (600, 600)), quality=95)
            with pytest.raises(grpc.RpcError) as refused:
                stub.Diagnose(diagnosis_pb2.DiagnoseRequest(image=big), timeout=TIMEOUT)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "the largest accepted is 10000 bytes" in refused.value.details()
            info = stub.GetModelInfo(diagnosis_pb2.GetModelInfoRequest(), timeout=TIMEOUT)
            assert info.input.max_bytes == 10_000
    finally:
        running.stop(grace=0)


# --- model info, reflection, metrics --------------------------------------------------------------

def test_model_info_describes_labels_input_and_card(service: RunningServer, stub) -> None:
    spec = service.spec
    info = stub.GetModelInfo(diagnosis_pb2.GetModelInfoRequest(), timeout=TIMEOUT)
    assert (info.model.name, info.model.version) == (f"fixture-{spec.task}", "0.0.1")
    assert (info.task, info.exam_type) == (spec.task, spec.exam_type)
    assert (info.exam_display_name, info.exam_summary) == (spec.exam_display_name, spec.exam_summary)
    assert info.exam_display_name, "every shipped spec names its exam type for the UI"
    assert [(label.code, label.display_name) for label in info.labels] == [
        (label.code, label.display_name) for label in spec.labels
    ]
    assert (info.input.width, info.input.height, info.input.color_mode) == (224, 224, "RGB")
    assert list(info.input.media_types) == ["image/jpeg", "image/png", "application/dicom"]
    assert info.input.min_side == 32
    assert MessageToDict(info.metrics) == {"test": {"auc": 0.5, "n": 10}}
    assert info.intended_use == "Serving tests only."
    assert list(info.limitations) == ["Not a real model: its output means nothing."]
    assert json.loads(info.card_json)["name"] == f"fixture-{spec.task}"


def test_reflection_lists_the_diagnosis_and_health_services(channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    requests = iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    replies = stub.ServerReflectionInfo(requests, timeout=TIMEOUT)
    names = {service.name for reply in replies for service in reply.list_services_response.service}
    assert {"drtech.v1.DiagnosisService", "grpc.health.v1.Health"} <= names


def test_metrics_are_served_over_http_when_a_port_is_set(fixture_specs: dict[str, TaskSpec]) -> None:
    metrics_port = free_port()
    running = start_server(fixture_specs["skin"], settings(metrics_port=metrics_port), port=0)
    try:
        with grpc.insecure_channel(running.target) as channel:
            stub = diagnosis_pb2_grpc.DiagnosisServiceStub(channel)
            stub.Diagnose(diagnosis_pb2.DiagnoseRequest(image=image_bytes("skin")), timeout=TIMEOUT)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=TIMEOUT) as reply:
            text = reply.read().decode()
    finally:
        running.stop(grace=0)
    assert 'drtech_serving_requests_total{code="OK",method="Diagnose",task="skin"}' in text
    assert "drtech_serving_request_seconds_bucket" in text
    # CPU per stage of a diagnosis, for `make bench` (benchmarks/cpu_cost.py).
    for stage in ("decode", "preprocess", "model", "respond"):
        assert f'drtech_stage_cpu_seconds_total{{stage="{stage}",task="skin"}}' in text, stage


# --- shutdown -------------------------------------------------------------------------------------

def test_stop_lets_a_call_in_flight_finish_and_refuses_new_ones(tmp_path: Path) -> None:
    # A model that takes about a second per call, under its own task name so its metrics are its own.
    spec = write_fixture_model(SKIN, tmp_path, slow_matmuls=400, task="skin-slow")
    running = start_server(spec, settings(), port=0)
    in_flight = {"task": "skin-slow"}
    with grpc.insecure_channel(running.target) as channel:
        stub = diagnosis_pb2_grpc.DiagnosisServiceStub(channel)
        call = stub.Diagnose.future(diagnosis_pb2.DiagnoseRequest(image=image_bytes("skin")), timeout=30)
        deadline = time.monotonic() + 10
        while REGISTRY.get_sample_value("drtech_serving_in_flight_requests", in_flight) != 1.0:
            assert time.monotonic() < deadline, "the call never started"
            time.sleep(0.005)

        stopper = threading.Thread(target=running.stop, kwargs={"grace": 20})
        stopper.start()
        reply = call.result()   # the call in flight completes normally
        stopper.join(timeout=30)

        assert reply.label in SKIN.label_codes
        assert not stopper.is_alive()
        not_serving = running.health.Check(health_pb2.HealthCheckRequest(service=DIAGNOSIS_SERVICE), None)
        assert not_serving.status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as refused:
            stub.Diagnose(diagnosis_pb2.DiagnoseRequest(image=image_bytes("skin")), timeout=TIMEOUT)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def _model_runs(task: str) -> float:
    """Batches the task's model has run in this process (the batch-size histogram's count)."""
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("drtech_serving_batch_size_count", {"task": task}) or 0.0


def test_concurrent_calls_with_batching_each_get_their_own_answer(fixture_specs: dict[str, TaskSpec]) -> None:
    # Flat colours the fixture model answers very differently, so a mix-up would show.
    images = [jpeg_bytes(Image.new("RGB", (64, 64), (30 * i, 255 - 30 * i, 60 + 20 * i))) for i in range(8)]
    request = diagnosis_pb2.DiagnoseRequest
    running = start_server(fixture_specs["skin"], settings(max_batch_size=4, worker_threads=8), port=0)
    try:
        with grpc.insecure_channel(running.target) as channel:
            stub = diagnosis_pb2_grpc.DiagnosisServiceStub(channel)
            one_by_one = [stub.Diagnose(request(image=image), timeout=TIMEOUT) for image in images]
            # Calls that arrive together share model runs. Whether they do depends on the scheduler,
            # so send rounds until one round took fewer runs than calls (any mix-up must show there).
            for _ in range(10):
                runs_before = _model_runs("skin")
                calls = [stub.Diagnose.future(request(image=image), timeout=TIMEOUT) for image in images]
                together = [call.result() for call in calls]
                runs = _model_runs("skin") - runs_before
                assert runs >= 1, "the batch-size metric did not count this round's model runs"
                if runs < len(images):
                    break
            else:
                pytest.fail("8 concurrent calls never shared a model run in 10 rounds")
    finally:
        running.stop(grace=0)
    assert len({round(reply.confidence, 4) for reply in one_by_one}) > 1
    for alone, batched in zip(one_by_one, together):
        assert batched.label == alone.label
        assert [p.probability for p in batched.probabilities] == pytest.approx(
            [p.probability for p in alone.probabilities], abs=1e-5
        )


def test_probes_on_the_health_port_are_answered_while_every_worker_thread_is_busy(
    fixture_specs: dict[str, TaskSpec], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Diagnose calls waiting for the pixel budget can hold all of the main port's threads; the
    health port keeps answering, so Kubernetes does not restart a pod for being busy."""
    from services.core.service import DiagnosisServicer

    release, busy = threading.Event(), threading.Event()

    def held(self, request, context):
        busy.set()
        release.wait(TIMEOUT)
        context.abort(grpc.StatusCode.UNAVAILABLE, "held by the test")

    monkeypatch.setattr(DiagnosisServicer, "Diagnose", held)
    health_port = free_port()
    running = start_server(fixture_specs["bone"], settings(worker_threads=1, health_port=health_port), port=0)
    caller = None
    try:
        with grpc.insecure_channel(running.target) as main, \
                grpc.insecure_channel(f"127.0.0.1:{health_port}") as probe_port:
            caller = threading.Thread(target=lambda: _call_ignoring_errors(main), daemon=True)
            caller.start()
            assert busy.wait(TIMEOUT)
            request = health_pb2.HealthCheckRequest(service=DIAGNOSIS_SERVICE)
            with pytest.raises(grpc.RpcError) as queued:
                health_pb2_grpc.HealthStub(main).Check(request, timeout=1.0)
            assert queued.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            reply = health_pb2_grpc.HealthStub(probe_port).Check(request, timeout=1.0)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        release.set()
        if caller is not None:
            caller.join(TIMEOUT)
        running.stop(grace=0)
    with socket.socket() as sock:   # stopped with the service: the port is free again
        # SO_REUSEADDR: a connection the server closed may sit in TIME_WAIT, which is not a listener
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", health_port))
        sock.listen()


def _call_ignoring_errors(channel: grpc.Channel) -> None:
    with contextlib.suppress(grpc.RpcError):
        diagnosis_pb2_grpc.DiagnosisServiceStub(channel).Diagnose(
            diagnosis_pb2.DiagnoseRequest(image=image_bytes("bone")), timeout=TIMEOUT)


def test_a_health_port_in_use_stops_the_start_with_a_clear_error(fixture_specs: dict[str, TaskSpec]) -> None:
    first = start_server(fixture_specs["bone"], settings(), port=0)
    try:
        with pytest.raises(OSError, match=f"cannot serve health on 127.0.0.1:{first.port}"):
            start_server(fixture_specs["bone"], settings(health_port=first.port), port=0)
    finally:
        first.stop(grace=0)
