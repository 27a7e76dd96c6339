"""`python -m services.<task>` as a real process: --port 0, the ready line, SIGTERM, start-up failures."""

from __future__ import annotations

import queue
import signal
import threading
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.drtech.v1 import diagnosis_pb2, diagnosis_pb2_grpc
from services.pneumonia.spec import SPEC as PNEUMONIA
from tests.serving_models import write_fixture_model
from tests.support import first_line, jpeg_bytes, launch, synthetic_image

START_TIMEOUT = 60.0


def test_process_prints_its_port_serves_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    write_fixture_model(PNEUMONIA, tmp_path)
    process = launch("pneumonia", {"DRTECH_SERVING_MODEL_DIR": str(tmp_path)}, "--port", "0")
    try:
        line = first_line(process, START_TIMEOUT)
        assert line.startswith("listening on 127.0.0.1:"), line
        target = line.split("listening on ", 1)[1].strip()
        with grpc.insecure_channel(target) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            reply = diagnosis_pb2_grpc.DiagnosisServiceStub(channel).Diagnose(
                diagnosis_pb2.DiagnoseRequest(image=jpeg_bytes(synthetic_image("chest_xray"))), timeout=10
            )
            assert reply.model.name == "fixture-pneumonia"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert "shutting down" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_sigterm_during_a_long_warm_up_stops_the_process_without_waiting_for_it(tmp_path: Path) -> None:
    write_fixture_model(PNEUMONIA, tmp_path)
    # Ten million warm-up runs: far longer than any test waits, like a GPU provider compiling kernels.
    process = launch("pneumonia", {"DRTECH_SERVING_MODEL_DIR": str(tmp_path),
                                   "DRTECH_SERVING_WARMUP_RUNS": "10000000"}, "--port", "0")
    try:
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=lambda: [lines.put(line) for line in process.stderr], daemon=True)
        reader.start()
        seen = ""
        while "NOT_SERVING until the model is warm" not in seen:
            seen = lines.get(timeout=START_TIMEOUT)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert process.stdout.read() == ""          # never said it was ready
        reader.join(timeout=10)
        logged = []
        while not lines.empty():
            logged.append(lines.get())
        assert any("stopping while the model is still loading" in line for line in logged), logged
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_missing_model_exits_non_zero_naming_the_file(tmp_path: Path) -> None:
    process = launch("skin", {"DRTECH_SERVING_MODEL_DIR": str(tmp_path / "nothing-here")}, "--port", "0")
    _, stderr = process.communicate(timeout=START_TIMEOUT)
    assert process.returncode == 1
    assert "card.json does not exist" in stderr


def test_invalid_settings_exit_non_zero_with_the_reason() -> None:
    process = launch("bone", {"DRTECH_SERVING_GRACE_SECONDS": "soon"}, "--port", "0")
    _, stderr = process.communicate(timeout=START_TIMEOUT)
    assert process.returncode == 2
    assert "grace_seconds" in stderr
