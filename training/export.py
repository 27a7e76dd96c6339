"""Build the serving graph (backbone + heads + class activation maps) and export it to ONNX.

Contract (docs/architecture.md): input `input` float32 [N,224,224,3]; outputs `probabilities`
[N,C], `cam` [N,7,7,C] and, for bone, `kl_probabilities` [N,5].
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

OPSET = 17
MAX_MODEL_BYTES = 15 * 1024 * 1024
PARITY_TOLERANCE = 1e-4


def build_export_model(backbone, kernel: np.ndarray, bias: np.ndarray,
                       kl_kernel: np.ndarray | None = None, kl_bias: np.ndarray | None = None):
    """Keras model: image -> probabilities, cam (and kl_probabilities).

    `cam` is the last 7x7x1280 feature map through a 1x1 conv holding the dense head's kernel (no
    bias), so its spatial mean is the logit minus the bias: the class activation map, which equals
    Grad-CAM for a GAP + dense head (serving applies ReLU and normalises it).
    """
    import keras

    n_classes = kernel.shape[1]
    feature_map = backbone.output
    pooled = keras.layers.GlobalAveragePooling2D(name="pooled")(feature_map)
    dense = keras.layers.Dense(n_classes, activation="softmax", name="probabilities")
    probabilities = dense(pooled)
    dense.set_weights([kernel, bias])
    cam_conv = keras.layers.Conv2D(n_classes, 1, use_bias=False, name="cam")
    cam = cam_conv(feature_map)
    cam_conv.set_weights([kernel.reshape(1, 1, *kernel.shape)])
    outputs = [probabilities, cam]
    if kl_kernel is not None:
        kl_dense = keras.layers.Dense(kl_kernel.shape[1], activation="softmax", name="kl_probabilities")
        outputs.append(kl_dense(pooled))
        kl_dense.set_weights([kl_kernel, kl_bias])
    return keras.Model(backbone.input, outputs, name="drtech_export")


def output_names(model) -> list[str]:
    """The contract's output names present in `model`, in the model's output order."""
    present = {layer.name for layer in model.layers}
    return [name for name in ("probabilities", "cam", "kl_probabilities") if name in present]


def to_onnx(model, path: Path) -> Path:
    """Convert with tf2onnx (opset 17), name the input `input` and outputs after their layers."""
    import onnx
    import tensorflow as tf
    import tf2onnx

    names = output_names(model)
    proto, _ = tf2onnx.convert.from_keras(
        model, input_signature=[tf.TensorSpec((None, 224, 224, 3), tf.float32, name="input")],
        opset=OPSET, output_path=None,
    )
    # tf2onnx names graph outputs after Keras' output tensors; rename them to the contract names.
    graph_outputs = [o.name for o in proto.graph.output]
    if graph_outputs != names:
        renames = dict(zip(graph_outputs, names, strict=True))
        for node in proto.graph.node:
            node.output[:] = [renames.get(o, o) for o in node.output]
            node.input[:] = [renames.get(i, i) for i in node.input]
        for output in proto.graph.output:
            output.name = renames[output.name]
    if [i.name for i in proto.graph.input] != ["input"]:
        raise ValueError(f"unexpected ONNX inputs {[i.name for i in proto.graph.input]}")
    onnx.checker.check_model(proto)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    size = path.stat().st_size
    if size > MAX_MODEL_BYTES:
        raise ValueError(f"{path} is {size} bytes, over the {MAX_MODEL_BYTES}-byte limit")
    return path


def parity(model, onnx_path: Path, images: np.ndarray) -> dict[str, float]:
    """Max |Keras - ONNX Runtime| per output on `images`; raises if probabilities differ by > 1e-4."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = output_names(model)
    keras_outputs = model.predict(images, batch_size=32, verbose=0)
    onnx_outputs = session.run(names, {"input": images})
    differences = {name: float(np.abs(np.asarray(k) - o).max())
                   for name, k, o in zip(names, keras_outputs, onnx_outputs, strict=True)}
    for name in names:
        if name != "cam" and differences[name] > PARITY_TOLERANCE:
            raise AssertionError(f"ONNX/Keras parity failed for {name}: max |diff| {differences[name]:.2e}")
    return differences


def onnx_interface(onnx_path: Path) -> dict[str, Sequence]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return {
        "inputs": [(i.name, i.shape, i.type) for i in session.get_inputs()],
        "outputs": [(o.name, o.shape, o.type) for o in session.get_outputs()],
    }
