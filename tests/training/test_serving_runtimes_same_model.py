"""Every selectable runtime serves the same answers from one model: ONNX Runtime (model.onnx),
LiteRT (model.tflite, checked against model.onnx at load) and TensorFlow (saved_model/).
The model is the shipped architecture exported by benchmarks/models.py (needs TensorFlow)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.training
pytest.importorskip("tensorflow", reason="TensorFlow (the training or bench extra) is not installed")
pytest.importorskip("ai_edge_litert", reason="ai-edge-litert (the bench extra) is not installed")

from services.bone.spec import SPEC as BONE  # noqa: E402
from services.core.runtime import ModelContractError, open_model  # noqa: E402
from services.core.spec import TaskSpec  # noqa: E402
from tests.serving_models import build_model  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> TaskSpec:
    from benchmarks.models import export_model_folder

    folder = export_model_folder(BONE, tmp_path_factory.mktemp("bone"))
    return replace(BONE, model_dir=folder)


def test_litert_and_tensorflow_agree_with_onnx_runtime(exported: TaskSpec) -> None:
    batch = np.random.default_rng(3).uniform(-1, 1, (3, 224, 224, 3)).astype(np.float32)
    reference = open_model(exported, "onnxruntime", intra_op_threads=1).run(batch)
    for runtime in ("litert", "tensorflow"):
        model = open_model(exported, runtime, intra_op_threads=1)
        model.warm_up(1)
        got = model.run(batch)
        np.testing.assert_allclose(got.probabilities, reference.probabilities, atol=1e-4)
        np.testing.assert_allclose(got.extra["kl_probabilities"], reference.extra["kl_probabilities"], atol=1e-4)
        np.testing.assert_allclose(got.cam, reference.cam, atol=1e-2)


def test_litert_refuses_a_tflite_that_disagrees_with_the_model_onnx(exported: TaskSpec, tmp_path: Path) -> None:
    shutil.copyfile(exported.model_dir / "model.tflite", tmp_path / "model.tflite")
    import onnx

    onnx.save(build_model(len(BONE.labels), kl_grades=True), tmp_path / "model.onnx")   # another model
    with pytest.raises(ModelContractError, match="disagrees with .*model.onnx"):
        open_model(replace(BONE, model_dir=tmp_path), "litert")
