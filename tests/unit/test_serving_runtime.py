"""The ONNX Runtime wrapper, the model file contract it enforces, task extras and serving settings."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest

from services.bone.spec import SPEC as BONE
from services.core.errors import (
    CallCancelled, InvalidImage, ModelNotReady, ServiceBusy, UnsupportedMediaType, WrongKindOfImage,
)
from services.core.interceptors import map_error
from services.core.runtime import ModelContractError, OnnxModel
from services.core.service import extra_fields
from services.core.settings import ServingSettings
from services.pneumonia.spec import SPEC as PNEUMONIA
from services.skin.spec import SPEC as SKIN
from tests.serving_models import build_model, write_fixture_model


def test_model_runs_a_batch_and_returns_every_contract_output(tmp_path: Path) -> None:
    spec = write_fixture_model(BONE, tmp_path)
    model = OnnxModel(spec, intra_op_threads=1)
    batch = np.random.default_rng(0).uniform(-1, 1, (3, 224, 224, 3)).astype(np.float32)
    prediction = model.run(batch)
    assert prediction.probabilities.shape == (3, 2)
    assert np.allclose(prediction.probabilities.sum(axis=1), 1.0, atol=1e-6)
    assert prediction.cam.shape == (3, 7, 7, 2)
    assert prediction.extra["kl_probabilities"].shape == (3, 5)
    assert model.warm_up(2) > 0


def test_extra_probabilities_also_surface_as_a_grade(tmp_path: Path) -> None:
    model = OnnxModel(write_fixture_model(BONE, tmp_path), intra_op_threads=1)
    prediction = model.run(np.zeros((1, 224, 224, 3), np.float32))
    extra = extra_fields(prediction)
    assert extra["kl_grade"] == int(np.argmax(prediction.extra["kl_probabilities"][0]))
    assert extra["kl_probabilities"] == pytest.approx(prediction.extra["kl_probabilities"][0].tolist())


def test_missing_model_file_is_a_contract_error(tmp_path: Path) -> None:
    with pytest.raises(ModelContractError, match="model.onnx does not exist"):
        OnnxModel(replace(PNEUMONIA, model_dir=tmp_path))


def test_model_without_a_promised_output_is_refused(tmp_path: Path) -> None:
    # A two-class model without kl_probabilities cannot serve the bone spec.
    onnx.save(build_model(2, kl_grades=False), tmp_path / "model.onnx")
    with pytest.raises(ModelContractError, match=r"missing outputs \['kl_probabilities'\]"):
        OnnxModel(replace(BONE, model_dir=tmp_path))


def test_the_input_size_is_the_model_files_own(tmp_path: Path) -> None:
    # A 150x150 model (the original pneumonia CNN's size) is run at 150x150, its CAM grid 4x4.
    onnx.save(build_model(2, input_size=(150, 150)), tmp_path / "model.onnx")
    model = OnnxModel(replace(PNEUMONIA, model_dir=tmp_path), intra_op_threads=1)
    assert model.input_size == (150, 150)
    assert model.warm_up(1) > 0
    assert model.run(np.zeros((1, 150, 150, 3), np.float32)).cam.shape == (1, 4, 4, 2)


def test_a_non_square_input_size_is_width_then_height(tmp_path: Path) -> None:
    onnx.save(build_model(7, input_size=(100, 75)), tmp_path / "model.onnx")
    assert OnnxModel(replace(SKIN, model_dir=tmp_path), intra_op_threads=1).input_size == (100, 75)


def test_model_without_a_fixed_input_size_is_refused(tmp_path: Path) -> None:
    onnx.save(build_model(2, input_size=None), tmp_path / "model.onnx")
    with pytest.raises(ModelContractError, match=r"expected \[N, H, W, 3\] with fixed H and W"):
        OnnxModel(replace(PNEUMONIA, model_dir=tmp_path))


@pytest.mark.parametrize(
    ("error", "code", "reason"),
    [
        (InvalidImage("the image is empty"), grpc.StatusCode.INVALID_ARGUMENT, "invalid_image"),
        (UnsupportedMediaType("unsupported media type 'image/gif'"), grpc.StatusCode.INVALID_ARGUMENT,
         "unsupported_media_type"),
        (WrongKindOfImage("not a chest X-ray"), grpc.StatusCode.INVALID_ARGUMENT, "wrong_image_kind"),
        (ModelNotReady("still loading"), grpc.StatusCode.UNAVAILABLE, "model_not_ready"),
        (ServiceBusy("decoding other large images"), grpc.StatusCode.UNAVAILABLE, "busy"),
        (CallCancelled("cancelled while it waited"), grpc.StatusCode.CANCELLED, "cancelled"),
        (KeyError("secret detail"), grpc.StatusCode.INTERNAL, "internal"),
    ],
)
def test_domain_errors_map_to_status_codes(error: Exception, code: grpc.StatusCode, reason: str) -> None:
    mapped_code, mapped_reason, message = map_error(error)
    assert (mapped_code, mapped_reason) == (code, reason)
    if code is grpc.StatusCode.INTERNAL:
        assert "secret detail" not in message   # internals never leak to the caller


def test_unavailable_execution_providers_fall_back_to_available_ones(tmp_path: Path) -> None:
    spec = write_fixture_model(PNEUMONIA, tmp_path)
    model = OnnxModel(spec, intra_op_threads=1, providers=["NoSuchExecutionProvider", "CPUExecutionProvider"])
    assert model.providers == ["CPUExecutionProvider"]
    with pytest.raises(ModelContractError, match="none of the execution providers"):
        OnnxModel(spec, providers=["NoSuchExecutionProvider"])


def test_a_model_that_fell_back_from_a_required_provider_does_not_start(tmp_path: Path) -> None:
    """A GPU pod whose CUDA provider could not start must fail, not serve from one CPU thread."""
    from services.core.service import load_model

    spec = write_fixture_model(PNEUMONIA, tmp_path)
    fallback = ServingSettings(providers="NoSuchExecutionProvider,CPUExecutionProvider", intra_op_threads=1,
                               warmup_runs=1)
    assert load_model(spec, fallback).model.providers == ["CPUExecutionProvider"]
    required = fallback.model_copy(update={"required_providers": "NoSuchExecutionProvider"})
    with pytest.raises(ModelContractError, match="not on the required NoSuchExecutionProvider"):
        load_model(spec, required)


def test_settings_come_from_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRTECH_SERVING_PORT", "6000")
    monkeypatch.setenv("DRTECH_SERVING_INTRA_OP_THREADS", "2")
    monkeypatch.setenv("DRTECH_MAX_MESSAGE_BYTES", "1048576")   # the shared limit, docs/architecture.md
    monkeypatch.setenv("DRTECH_SERVING_PROVIDERS", "CUDAExecutionProvider, CPUExecutionProvider")
    settings = ServingSettings()
    assert (settings.port, settings.intra_op_threads, settings.max_message_bytes) == (6000, 2, 1048576)
    assert settings.provider_list == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert settings.host == "127.0.0.1"


def test_invalid_settings_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRTECH_SERVING_PORT", "70000")
    with pytest.raises(ValueError, match="port"):
        ServingSettings()


def test_inference_plan_defaults_to_one_single_threaded_worker_per_core() -> None:
    from services.core.settings import ServingSettings

    assert ServingSettings().inference_plan(cores=4) == (4, 1)
    # Only the thread count set (e.g. a pod's CPU limit): one worker with that many threads.
    assert ServingSettings(intra_op_threads=2).inference_plan(cores=16) == (1, 2)
    assert ServingSettings(model_workers=3).inference_plan(cores=16) == (3, 1)
    assert ServingSettings(model_workers=2, intra_op_threads=4).inference_plan(cores=16) == (2, 4)
    # A GPU node: one worker feeding the accelerator.
    gpu = ServingSettings(providers="CUDAExecutionProvider,CPUExecutionProvider")
    assert gpu.inference_plan(cores=16) == (1, 0)


def test_the_plan_counts_every_cpu_where_the_os_has_no_affinity(monkeypatch: pytest.MonkeyPatch) -> None:
    """macOS and Windows have no os.sched_getaffinity: make run must still start the model services."""
    import os

    from services.core.settings import ServingSettings

    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert ServingSettings().inference_plan() == (6, 1)


def test_an_unknown_runtime_is_a_clear_error(tmp_path: Path) -> None:
    from services.core.runtime import open_model

    with pytest.raises(ModelContractError, match="unknown runtime 'tensorrt'"):
        open_model(write_fixture_model(PNEUMONIA, tmp_path), "tensorrt")


def test_litert_without_a_tflite_file_says_to_use_onnxruntime(tmp_path: Path) -> None:
    pytest.importorskip("ai_edge_litert")
    from services.core.runtime import open_model

    with pytest.raises(ModelContractError, match="model.tflite.*onnxruntime"):
        open_model(write_fixture_model(PNEUMONIA, tmp_path), "litert")
