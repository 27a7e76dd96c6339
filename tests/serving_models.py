"""Tiny ONNX models with the shipped model file contract, for serving tests that must not wait on training.

The graph is a miniature of the real head: 32x32 average pooling gives a 7x7x3 "feature map"
(at the default 224x224 input; `input_size` gives other sizes, e.g. 150x150 -> a 4x4 map),
a 1x1 dense layer gives per-class CAMs, their spatial mean gives logits, softmax gives
probabilities — so CAM and probabilities are consistent, as in the exported MobileNetV2 models.
`slow_matmuls` adds input-dependent busy work so a call stays in flight long enough to observe.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from services.core.spec import TaskSpec


def build_model(
    num_classes: int, kl_grades: bool = False, slow_matmuls: int = 0, seed: int = 0,
    input_size: tuple[int, int] | None = (224, 224),
) -> onnx.ModelProto:
    """`input_size` (width, height), or None for a model whose height and width are left symbolic."""
    rng = np.random.default_rng(seed)
    if input_size is None:
        sides, grid = ["H", "W"], ["h", "w"]
    else:
        sides = [input_size[1], input_size[0]]
        grid = [side // 32 for side in sides]
    weights = {
        "head_w": rng.normal(0, 20, (3, num_classes)).astype(np.float32),
        "head_b": rng.normal(0, 0.1, (num_classes,)).astype(np.float32),
        "kl_w": rng.normal(0, 20, (3, 5)).astype(np.float32),
        "spatial_axes": np.array([1, 2], dtype=np.int64),
    }
    nodes = [
        helper.make_node("Transpose", ["input"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("AveragePool", ["nchw"], ["pooled"], kernel_shape=[32, 32], strides=[32, 32]),
        helper.make_node("Transpose", ["pooled"], ["features"], perm=[0, 2, 3, 1]),      # [N, h, w, 3]
        helper.make_node("MatMul", ["features", "head_w"], ["cam"]),                      # [N, 7, 7, C]
        helper.make_node("ReduceMean", ["cam", "spatial_axes"], ["mean_cam"], keepdims=0),
        helper.make_node("Add", ["mean_cam", "head_b"], ["logits_plain"]),
    ]
    logits = "logits_plain"
    if slow_matmuls:
        weights["busy_w"] = np.eye(672, dtype=np.float32) * 0.5
        weights["busy_shape"] = np.array([-1, 672], dtype=np.int64)
        weights["zero"] = np.array(0.0, dtype=np.float32)
        nodes.append(helper.make_node("Reshape", ["input", "busy_shape"], ["busy_0"]))
        for step in range(slow_matmuls):
            nodes.append(helper.make_node("MatMul", [f"busy_{step}", "busy_w"], [f"busy_{step + 1}"]))
        nodes += [
            helper.make_node("ReduceMean", [f"busy_{slow_matmuls}"], ["busy_mean"], keepdims=0),
            helper.make_node("Mul", ["busy_mean", "zero"], ["busy_nothing"]),
            helper.make_node("Add", ["logits_plain", "busy_nothing"], ["logits_busy"]),
        ]
        logits = "logits_busy"
    nodes.append(helper.make_node("Softmax", [logits], ["probabilities"], axis=-1))
    outputs = [
        helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", num_classes]),
        helper.make_tensor_value_info("cam", TensorProto.FLOAT, ["N", *grid, num_classes]),
    ]
    if kl_grades:
        nodes += [
            helper.make_node("ReduceMean", ["features", "spatial_axes"], ["mean_features"], keepdims=0),
            helper.make_node("MatMul", ["mean_features", "kl_w"], ["kl_logits"]),
            helper.make_node("Softmax", ["kl_logits"], ["kl_probabilities"], axis=-1),
        ]
        outputs.append(helper.make_tensor_value_info("kl_probabilities", TensorProto.FLOAT, ["N", 5]))
    graph = helper.make_graph(
        nodes,
        "drtech_fixture",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *sides, 3])],
        outputs,
        initializer=[numpy_helper.from_array(value, name) for name, value in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_fixture_model(
    spec: TaskSpec, folder: Path, *, slow_matmuls: int = 0, task: str | None = None
) -> TaskSpec:
    """Write model.onnx + card.json for `spec`'s labels into `folder`; return a spec pointing there."""
    folder.mkdir(parents=True, exist_ok=True)
    kl_grades = "kl_probabilities" in spec.extra_outputs
    model = build_model(len(spec.labels), kl_grades=kl_grades, slow_matmuls=slow_matmuls)
    onnx.save(model, folder / "model.onnx")
    card = {
        "name": f"fixture-{spec.task}",
        "version": "0.0.1",
        "task": spec.task,
        "exam_type": spec.exam_type,
        "labels": spec.label_codes,
        "architecture": "average pooling + dense (test fixture)",
        "metrics": {"test": {"auc": 0.5, "n": 10}},
        "intended_use": "Serving tests only.",
        "limitations": ["Not a real model: its output means nothing."],
    }
    (folder / "card.json").write_text(json.dumps(card), encoding="utf-8")
    return replace(spec, model_dir=folder, task=task or spec.task)
