"""explain=true on a large upload: the overlay PNG is capped at 512 px on its long side, aspect kept."""

from __future__ import annotations

import io
from pathlib import Path

import grpc
from PIL import Image

from protos.drtech.v1 import diagnosis_pb2, diagnosis_pb2_grpc
from services.core.server import start_server
from services.core.settings import ServingSettings
from services.pneumonia.spec import SPEC as PNEUMONIA
from tests.serving_models import write_fixture_model
from tests.support import jpeg_bytes, synthetic_image


def test_a_2048x1024_upload_gets_a_512x256_overlay(tmp_path: Path) -> None:
    spec = write_fixture_model(PNEUMONIA, tmp_path)
    running = start_server(spec, ServingSettings(intra_op_threads=1, warmup_runs=1, grace_seconds=0), port=0)
    try:
        with grpc.insecure_channel(running.target) as channel:
            reply = diagnosis_pb2_grpc.DiagnosisServiceStub(channel).Diagnose(
                diagnosis_pb2.DiagnoseRequest(
                    image=jpeg_bytes(synthetic_image("chest_xray", (2048, 1024))), explain=True
                ),
                timeout=30,
            )
    finally:
        running.stop(grace=0)
    overlay = Image.open(io.BytesIO(reply.heatmap.png))
    assert overlay.size == (512, 256) == (reply.heatmap.width, reply.heatmap.height)
