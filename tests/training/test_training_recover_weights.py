"""The weights of a shipped model come back out of its model.onnx, so a new run can continue it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from training import tta
from training.paths import PROJECT_ROOT, weights_dir
from training.recover_weights import NotRecoverable, recover

BONE = PROJECT_ROOT / "services" / "bone" / "model"

pytestmark = [pytest.mark.training,
              pytest.mark.skipif(not weights_dir().is_dir(),
                                 reason=f"MobileNetV2 weights not found at {weights_dir()} (set DRTECH_WEIGHTS_DIR)")]


def test_the_recovered_bone_classifier_gives_the_shipped_kl_probabilities(tmp_path):
    from training.finetune import build_model

    record = recover("bone", BONE / "model.onnx", tmp_path / "run")

    # A fresh classifier with the written weights, the exported temperature applied to its logits
    inner = tta.original_model(onnx.load(str(BONE / "model.onnx")))
    session = ort.InferenceSession(inner.SerializeToString(), providers=["CPUExecutionProvider"])
    _, height, width, _ = session.get_inputs()[0].shape
    model = build_model("mobilenet_v2_finetuned", "bone", None, input_size=(width, height))
    model.load_weights(tmp_path / "run" / "model.weights.h5")
    images = np.random.default_rng(7).uniform(-1, 1, (3, height, width, 3)).astype(np.float32)
    card = json.loads((BONE / "card.json").read_text())
    # The one-view model inside the shipped test-time augmentation, and its own temperature
    temperature = card["architecture"]["test_time_augmentation"]["without_tta"]["temperatures"]["kl_probabilities"]
    recovered = tta.recalibrated(np.asarray(model.predict(images, verbose=0), dtype=np.float64), temperature)
    np.testing.assert_allclose(recovered, session.run(["kl_probabilities"], {"input": images})[0], atol=1e-4)

    assert record["recovered_from"]["version"] == card["version"]
    assert record["recovered_from"]["model"] == "services/bone/model/model.onnx"
    assert record["recovered_from"]["head_source"] == card["training"]["heads"]["kl_probabilities"]["source"]
    assert record["input_size"] == [width, height] and record["settings"]["arch"] == "mobilenet_v2_finetuned"
    assert (tmp_path / "run" / "split.csv").read_bytes() == (BONE / "split.csv").read_bytes()
    assert json.loads((tmp_path / "run" / "history.json").read_text()) == record


def test_a_model_without_a_finetune_run_of_our_mobilenet_is_refused(tmp_path):
    # Skin 2026.12.1 is an EfficientNet-Lite2 run: recover_weights reads back our MobileNetV2 only.
    skin = PROJECT_ROOT / "services" / "skin" / "model"
    with pytest.raises(NotRecoverable, match="no training.finetune run"):
        recover("skin", skin / "model.onnx", tmp_path / "run")
    with pytest.raises(NotRecoverable, match="is a 'bone' model, not skin"):
        recover("skin", BONE / "model.onnx", tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_graph_that_is_not_our_export_is_refused_by_name(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("card.json", "split.csv"):
        shutil.copyfile(BONE / name, folder / name)
    proto = tta.original_model(onnx.load(str(BONE / "model.onnx")))
    for node in proto.graph.node:
        node.name = node.name.replace("block_5_depthwise", "renamed")
    onnx.save(proto, str(folder / "model.onnx"))

    with pytest.raises(NotRecoverable, match="Conv node of block_5_depthwise"):
        recover("bone", folder / "model.onnx", tmp_path / "run")
