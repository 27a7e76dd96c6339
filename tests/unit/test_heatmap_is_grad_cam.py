"""The shipped heatmaps are exactly Grad-CAM for the shipped heads (docs/architecture.md).

A model with test-time augmentation (training/tta.py: skin, bone) answers the mean of the views'
Grad-CAMs, each turned back (tests/unit/test_training_tta.py); the checks below are made on the
one-view model inside it, with that model's own temperature.

Grad-CAM weights each channel k of the last feature map A by alpha_k = mean_ij d(logit_c)/dA_kij.
For a head logit_c = sum_k w_kc * mean_ij(A_kij) + b_c that gradient is w_kc / Z everywhere, so
Grad-CAM = ReLU(sum_k w_kc A_k) / Z: the class activation map the model exports as `cam`, up to the
positive 1/Z that the service's normalisation removes. Two checks on each shipped model.onnx make
that hold for the file actually shipped, not just for the code that wrote it:
1. the graph: `cam` is a 1x1 convolution of the same tensor the head's global average pool reads;
2. the numbers: T (log p_c - log p_0) = mean(cam_c) - mean(cam_0) + constant on any input (T: the
   card's calibration temperature, baked into the probabilities), i.e. each
   logit is the spatial mean of its CAM plus a bias, so the head is linear in the pooled features.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from services.bone.spec import SPEC as BONE
from services.core.preprocessing import to_model_input
from services.pneumonia.spec import SPEC as PNEUMONIA
from services.router.spec import SPEC as ROUTER
from services.skin.spec import SPEC as SKIN
from tests.support import synthetic_image
from training import tta

SHIPPED = [spec for spec in (BONE, SKIN, PNEUMONIA, ROUTER) if spec.model_path.exists()]


def _one_view_model(spec) -> onnx.ModelProto:
    proto = onnx.load(str(spec.model_path))
    return tta.original_model(proto) if tta.is_wrapped(proto) else proto


def _one_view_temperature(spec) -> float:
    card = spec.load_card()
    augmentation = card["architecture"].get("test_time_augmentation") if isinstance(card["architecture"], dict) else None
    if augmentation:
        return augmentation["without_tta"]["temperatures"].get("probabilities", 1.0)
    return card.get("calibration", {}).get("heads", {}).get("probabilities", {}).get("temperature", 1.0)


def _producer(graph: onnx.GraphProto, tensor: str) -> onnx.NodeProto:
    return next(node for node in graph.node if tensor in node.output)


@pytest.mark.parametrize("spec", SHIPPED, ids=lambda spec: spec.task)
def test_cam_is_a_1x1_convolution_of_the_feature_map_the_head_pools(spec) -> None:
    graph = _one_view_model(spec).graph
    node = _producer(graph, "cam")
    while node.op_type in ("Transpose", "Identity"):
        node = _producer(graph, node.input[0])
    assert node.op_type == "Conv"
    kernel = next(init for init in graph.initializer if init.name == node.input[1])
    assert list(kernel.dims[2:]) == [1, 1] and len(node.input) == 2, "a 1x1 convolution without bias"
    readers = {other.op_type for other in graph.node if node.input[0] in other.input}
    assert "GlobalAveragePool" in readers, f"the head does not pool the CAM's feature map (readers: {readers})"


@pytest.mark.parametrize("spec", SHIPPED, ids=lambda spec: spec.task)
def test_each_logit_is_the_mean_of_its_cam_plus_a_constant(spec) -> None:
    session = ort.InferenceSession(_one_view_model(spec).SerializeToString(), providers=["CPUExecutionProvider"])
    _, height, width, _ = session.get_inputs()[0].shape      # each model at its own input size
    rng = np.random.default_rng(0)
    images = [to_model_input(synthetic_image(kind, seed=seed), (width, height))
              for kind in ("chest_xray", "skin_lesion") for seed in range(3)]
    images += [rng.uniform(-1, 1, (height, width, 3)).astype(np.float32) * scale for scale in (0.2, 0.6)]
    probabilities, cam = session.run(["probabilities", "cam"], {"input": np.stack(images)})
    # Calibrated models output softmax(logits / T) (T in the card); the CAM is not scaled.
    temperature = _one_view_temperature(spec)
    log_p = temperature * np.log(np.clip(probabilities.astype(np.float64), 1e-30, None))
    usable = (probabilities > 1e-12).all(axis=1)            # log p is exact only away from underflow
    assert usable.sum() >= 3
    offsets = (log_p - log_p[:, :1]) - (cam.mean(axis=(1, 2)) - cam.mean(axis=(1, 2))[:, :1])
    spread = offsets[usable].max(axis=0) - offsets[usable].min(axis=0)
    assert spread.max() < 1e-3, f"logit - mean(cam) is not constant across images: spread {spread}"
