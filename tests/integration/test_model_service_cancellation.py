"""A call its caller cancelled (the gateway's request went away, its channel closed) stops waiting:
it gives back its place in the decoding budget and its turn of the model, and nothing is decoded or
run for nobody. The serving core, over real gRPC, with small fixture models."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import grpc
from prometheus_client import REGISTRY

from protos.drtech.v1 import diagnosis_pb2, diagnosis_pb2_grpc
from services.core.server import start_server
from services.core.settings import ServingSettings
from services.skin.spec import SPEC as SKIN
from tests.serving_models import write_fixture_model
from tests.support import jpeg_bytes, synthetic_image


def settings(**overrides: object) -> ServingSettings:
    values: dict[str, object] = dict(intra_op_threads=1, worker_threads=4, warmup_runs=1, grace_seconds=5.0)
    values.update(overrides)
    return ServingSettings(**values)


def request() -> diagnosis_pb2.DiagnoseRequest:
    return diagnosis_pb2.DiagnoseRequest(image=jpeg_bytes(synthetic_image("skin_lesion", (256, 240), 0)))


def model_runs(task: str) -> float:
    return REGISTRY.get_sample_value("drtech_serving_batch_size_count", {"task": task}) or 0.0


def eventually(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        if condition():
            return True
        time.sleep(0.01)
    return False


def test_a_call_cancelled_while_waiting_to_decode_leaves_the_line_and_is_never_run(tmp_path: Path) -> None:
    spec = write_fixture_model(SKIN, tmp_path, task="skin-cancelled-decode")
    running = start_server(spec, settings(), port=0)
    budget = running.servicer.decoding
    try:
        with grpc.insecure_channel(running.target) as channel:
            stub = diagnosis_pb2_grpc.DiagnosisServiceStub(channel)
            with budget.hold(budget.capacity):        # a very large image is being decoded
                call = stub.Diagnose.future(request(), timeout=30)   # the gateway's deadline
                assert eventually(lambda: budget.waiting == 1)
                runs = model_runs(spec.task)
                call.cancel()
                assert eventually(lambda: budget.waiting == 0, seconds=3), "still in line after its cancel"
            time.sleep(0.5)                            # room to decode and run it, were it still there
            assert model_runs(spec.task) == runs
    finally:
        running.stop(grace=0)


def test_calls_cancelled_while_queued_for_the_model_are_not_run(tmp_path: Path) -> None:
    spec = write_fixture_model(SKIN, tmp_path, slow_matmuls=120, task="skin-cancelled-queue")
    running = start_server(spec, settings(model_workers=1), port=0)
    batcher = running.servicer._batcher
    try:
        with grpc.insecure_channel(running.target) as channel:
            stub = diagnosis_pb2_grpc.DiagnosisServiceStub(channel)
            first = stub.Diagnose.future(request(), timeout=60)
            queued = [stub.Diagnose.future(request(), timeout=60) for _ in range(3)]
            assert eventually(lambda: batcher._queue.qsize() == 3), "three calls queued behind the first"
            runs = model_runs(spec.task)
            for call in queued:
                call.cancel()
            first.result(timeout=60)
            assert eventually(lambda: batcher._queue.qsize() == 0)
            time.sleep(0.5)
            assert model_runs(spec.task) - runs <= 1       # the first call's own run, no other
    finally:
        running.stop(grace=0)
