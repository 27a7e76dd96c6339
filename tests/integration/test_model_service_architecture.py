"""A model service serves an exported original architecture at its own input size (150x150 here):
images are resized to what the model file takes, and its 9x9 Grad-CAM becomes the heatmap."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.training
keras = pytest.importorskip("keras")
pytest.importorskip("tf2onnx", reason="tf2onnx (the training extra) is not installed")

from protos.drtech.v1 import diagnosis_pb2, diagnosis_pb2_grpc  # noqa: E402
from services.core.preprocessing import to_model_input  # noqa: E402
from services.core.server import start_server  # noqa: E402
from services.core.settings import ServingSettings  # noqa: E402
from services.pneumonia.spec import SPEC as PNEUMONIA  # noqa: E402
from tests.support import jpeg_bytes, synthetic_image  # noqa: E402
from training.architectures import build  # noqa: E402
from training.export import classifier_to_onnx, keras_probabilities  # noqa: E402


def test_a_150x150_pneumonia_cnn_is_served_at_150x150_with_a_heatmap(tmp_path: Path) -> None:
    keras.utils.set_random_seed(0)
    model = build("pneumonia_cnn_5block_he")            # its original 150x150 input, one sigmoid unit
    classifier_to_onnx(model, tmp_path / "model.onnx")
    card = {"name": "pneumonia_cnn_5block_he", "version": "0.0.1", "labels": PNEUMONIA.label_codes}
    (tmp_path / "card.json").write_text(json.dumps(card), encoding="utf-8")
    upload = synthetic_image("chest_xray", (320, 256))
    settings = ServingSettings(intra_op_threads=1, warmup_runs=1, grace_seconds=0, metrics_port=0)

    running = start_server(replace(PNEUMONIA, model_dir=tmp_path), settings, port=0)
    try:
        with grpc.insecure_channel(running.target) as channel:
            stub = diagnosis_pb2_grpc.DiagnosisServiceStub(channel)
            request = diagnosis_pb2.DiagnoseRequest(image=jpeg_bytes(upload), explain=True)
            reply = stub.Diagnose(request, timeout=30)
            info = stub.GetModelInfo(diagnosis_pb2.GetModelInfoRequest(), timeout=30)
    finally:
        running.stop(grace=0)

    assert (info.input.width, info.input.height) == (150, 150)
    probabilities = np.array([p.probability for p in reply.probabilities])
    assert [p.label for p in reply.probabilities] == ["NORMAL", "PNEUMONIA"]
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-6)
    # The same answer as the Keras model on the upload resized to 150x150 by the shared preprocessing.
    decoded = Image.open(io.BytesIO(jpeg_bytes(upload)))
    expected = keras_probabilities(model, to_model_input(decoded, (150, 150))[None])[0]
    np.testing.assert_allclose(probabilities, expected, atol=1e-4)
    overlay = Image.open(io.BytesIO(reply.heatmap.png))
    assert overlay.format == "PNG" and overlay.size == (320, 256)
    assert reply.heatmap.method == "grad-cam" and reply.heatmap.target_label == reply.label
