"""Build the serving graph (backbone + heads + class activation maps) and export it to ONNX.

Contract (docs/architecture.md): input `input` float32 [N,H,W,3] (224x224 for the MobileNetV2
default); outputs `probabilities` [N,C], `cam` [N,h,w,C] (7x7 for MobileNetV2) and, for bone,
`kl_probabilities` [N,5].

Two ways in: `build_export_model` + `to_onnx` for the MobileNetV2 backbone with heads trained on
its features (training.train), and `classifier_to_onnx` for a whole Keras classifier from
training/architectures.py at its own input size, with Grad-CAM computed inside the graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

OPSET = 17
MAX_MODEL_BYTES = 15 * 1024 * 1024
PARITY_TOLERANCE = 1e-4
# Storing weights as float16 (store_half_precision) may move a probability by at most this much: one
# point, where serving shows one decimal of a percentage; the test figures come from the rounded model.
HALF_TOLERANCE = 1e-2
# Smaller initializers (biases, shapes) stay float32: they cost nothing and casts would clutter the graph.
HALF_MIN_ELEMENTS = 1024
T = TypeVar("T")
# Real images a parity check runs on: the issue asks for at least 100.
PARITY_IMAGES = 128


def parity_sample(val: Sequence[T], train: Sequence[T]) -> list[T]:
    """Up to PARITY_IMAGES items: the validation ones first, topped up with training ones when the
    validation split has fewer (a small dataset must still be checked on 100 or more real images)."""
    return [*val[:PARITY_IMAGES], *train[:max(0, PARITY_IMAGES - len(val))]]


def _softmax_head(pooled, kernel: np.ndarray, bias: np.ndarray, temperature: float, name: str):
    """Dense logits -> divide by the temperature -> softmax, the output layer named `name`."""
    import keras

    if temperature <= 0:
        raise ValueError(f"{name}: temperature must be positive, got {temperature}")
    dense = keras.layers.Dense(kernel.shape[1], name=f"{name}_logits")
    logits = dense(pooled)
    dense.set_weights([kernel, bias])
    scaled = keras.layers.Rescaling(1.0 / temperature, name=f"{name}_temperature")(logits)
    return keras.layers.Activation("softmax", name=name)(scaled)


def build_export_model(backbone, kernel: np.ndarray, bias: np.ndarray,
                       kl_kernel: np.ndarray | None = None, kl_bias: np.ndarray | None = None,
                       *, temperature: float = 1.0, kl_temperature: float = 1.0):
    """Keras model: image -> probabilities, cam (and kl_probabilities).

    Each head is softmax(logits / T) with its temperature (training.calibration, fitted on the
    validation split) baked in, so the exported file serves calibrated probabilities; T = 1 is the
    plain softmax. `cam` is the last 7x7x1280 feature map through a 1x1 conv holding the dense head's
    kernel (no bias), so its spatial mean is the logit minus the bias: the class activation map,
    which equals Grad-CAM for a GAP + dense head (serving applies ReLU and normalises it). CAM is
    not divided by T: serving normalises it, so a positive scale would not change it.
    """
    import keras

    n_classes = kernel.shape[1]
    feature_map = backbone.output
    pooled = keras.layers.GlobalAveragePooling2D(name="pooled")(feature_map)
    probabilities = _softmax_head(pooled, kernel, bias, temperature, "probabilities")
    cam_conv = keras.layers.Conv2D(n_classes, 1, use_bias=False, name="cam")
    cam = cam_conv(feature_map)
    cam_conv.set_weights([kernel.reshape(1, 1, *kernel.shape)])
    outputs = [probabilities, cam]
    if kl_kernel is not None:
        outputs.append(_softmax_head(pooled, kl_kernel, kl_bias, kl_temperature, "kl_probabilities"))
    return keras.Model(backbone.input, outputs, name="drtech_export")


def output_names(model) -> list[str]:
    """The contract's output names present in `model`, in the model's output order."""
    present = {layer.name for layer in model.layers}
    return [name for name in ("probabilities", "cam", "kl_probabilities") if name in present]


def to_onnx(model, path: Path, max_bytes: int | None = MAX_MODEL_BYTES) -> Path:
    """Convert with tf2onnx (opset 17), name the input `input` and outputs after their layers.

    The input signature is the model's own input shape ([N, 224, 224, 3] for MobileNetV2).
    `max_bytes=None` writes a model of any size (one `store_half_precision` shrinks next).
    """
    import tensorflow as tf
    import tf2onnx

    _, height, width, channels = model.input_shape
    proto, _ = tf2onnx.convert.from_keras(
        model, input_signature=[tf.TensorSpec((None, height, width, channels), tf.float32, name="input")],
        opset=OPSET, output_path=None,
    )
    return _save_checked(proto, path, output_names(model), max_bytes)


def _save_checked(proto, path: Path, names: list[str], max_bytes: int | None = MAX_MODEL_BYTES) -> Path:
    """Rename the graph outputs to the contract's `names` (in order), check the model and its size,
    and write it; an oversized model raises before anything is written."""
    import onnx

    # tf2onnx names graph outputs after the TensorFlow output tensors; rename them to the contract names.
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
    size = proto.ByteSize()
    if max_bytes is not None and size > max_bytes:
        raise ValueError(f"{path}: the ONNX model is {size} bytes, over the {max_bytes}-byte limit; "
                         "not written")
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
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


def half_precision_weights(proto, max_bytes: int):
    """A copy of `proto` whose largest float32 initializers are stored as float16, each followed by a
    Cast back to float32: the arithmetic stays float32 (ONNX Runtime folds the casts when it loads the
    model) and only those weights are rounded. Largest first, only as many as it takes to fit
    `max_bytes`, so the fewest are rounded."""
    import onnx
    from onnx import helper, numpy_helper

    half = onnx.ModelProto()
    half.CopyFrom(proto)
    graph = half.graph
    candidates = sorted(
        (i for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT
         and int(np.prod(i.dims)) >= HALF_MIN_ELEMENTS),
        key=lambda i: int(np.prod(i.dims)), reverse=True)
    # Each rounded element saves 2 bytes; a small margin covers the Cast nodes and renamed tensors.
    excess = half.ByteSize() - max_bytes + 4096
    casts = []
    for initializer in candidates:
        if excess <= 0:
            break
        values = numpy_helper.to_array(initializer)
        name = initializer.name
        initializer.CopyFrom(numpy_helper.from_array(values.astype(np.float16), f"{name}__float16"))
        casts.append(helper.make_node("Cast", [f"{name}__float16"], [name], to=onnx.TensorProto.FLOAT,
                                      name=f"{name}__to_float32"))
        excess -= 2 * values.size
    # Casts first: the graph's nodes must stay in topological order.
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(half)
    return half


def store_half_precision(onnx_path: Path, images: np.ndarray, max_bytes: int = MAX_MODEL_BYTES) -> dict:
    """Rewrite `onnx_path` with its largest weights stored as float16 (half_precision_weights) when it
    is over `max_bytes`; returns {"weights": "float32"} when it fits as it is, else {"weights":
    "float16", "rounded": [count, of], "max_abs_diff": {output: max |float32 - float16|},
    "argmax_agreement": fraction} on `images`, after checking that no probability moved by more than
    HALF_TOLERANCE. Raises (writing nothing) when one did or the file still does not fit."""
    import onnx
    import onnxruntime as ort

    if onnx_path.stat().st_size <= max_bytes:
        return {"weights": "float32"}
    proto = onnx.load(str(onnx_path))
    half = half_precision_weights(proto, max_bytes)
    names = [o.name for o in proto.graph.output]
    full_outputs = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        names, {"input": images})
    half_outputs = ort.InferenceSession(half.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        names, {"input": images})
    differences = {name: float(np.abs(f - h).max()) for name, f, h in zip(names, full_outputs, half_outputs,
                                                                         strict=True)}
    for name in names:
        if name != "cam" and differences[name] > HALF_TOLERANCE:
            raise AssertionError(f"float16 weights moved {name} by {differences[name]:.2e} "
                                 f"(> {HALF_TOLERANCE}); {onnx_path} left as float32")
    _save_checked(half, onnx_path, names, max_bytes)
    floats = [i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.FLOAT]
    rounded = sum(1 for i in half.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16)
    agreement = float((full_outputs[0].argmax(1) == half_outputs[0].argmax(1)).mean())
    return {"weights": "float16", "rounded": [rounded, len(floats)], "max_abs_diff": differences,
            "argmax_agreement": agreement}


def onnx_interface(onnx_path: Path) -> dict[str, Sequence]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return {
        "inputs": [(i.name, i.shape, i.type) for i in session.get_inputs()],
        "outputs": [(o.name, o.shape, o.type) for o in session.get_outputs()],
    }


# --- whole Keras classifiers (training/architectures.py) ----------------------------------------

# Layers whose 4-D output can be "the last convolutional feature map" Grad-CAM explains: a
# convolution, or the activation layer that follows one (MobileNet's ReLU, InceptionResNetV2's
# Activation).
_FEATURE_LAYER_TYPES = ("Conv2D", "SeparableConv2D", "DepthwiseConv2D", "ReLU", "Activation")
# Layers Grad-CAM's gradient is carried back through (between the feature map and the output).
_HEAD_LAYER_TYPES = ("Dense", "Dropout", "Flatten", "BatchNormalization", "MaxPooling2D",
                     "GlobalAveragePooling2D", "Activation")


def feature_layer(model):
    """The last convolution (or its activation) with a 4-D output: the map Grad-CAM weights."""
    for layer in reversed(model.layers):
        if type(layer).__name__ in _FEATURE_LAYER_TYPES and len(layer.output.shape) == 4:
            return layer
    raise ValueError(f"{model.name}: no convolutional feature map for Grad-CAM")


def head_layers(model, feature) -> list:
    """The layers from `feature`'s output to the model's output; they must form a simple chain of
    types whose gradient `_grad_cam` knows, and end in a softmax or one-unit sigmoid Dense layer."""
    layers = model.layers[model.layers.index(feature) + 1:]
    previous = feature
    for layer in layers:
        kind = type(layer).__name__
        if kind not in _HEAD_LAYER_TYPES:
            raise ValueError(f"{model.name}: cannot carry Grad-CAM through layer {layer.name!r} ({kind}); "
                             f"supported after the feature map: {', '.join(_HEAD_LAYER_TYPES)}")
        if layer.input is not previous.output:
            raise ValueError(f"{model.name}: the layers after {feature.name!r} are not a simple chain "
                             f"({layer.name!r} does not take {previous.name!r}'s output)")
        previous = layer
    if not layers or previous.output is not model.output or type(previous).__name__ != "Dense":
        raise ValueError(f"{model.name}: the model must end in a Dense layer after its feature map")
    activation = previous.activation.__name__
    if not (activation == "softmax" or (activation == "sigmoid" and previous.units == 1)):
        raise ValueError(f"{model.name}: output {previous.name!r} must be softmax or one sigmoid unit, "
                         f"got {activation} x {previous.units}")
    for layer in layers[:-1]:
        _check_backward_supported(model, layer)
    return layers


def _check_backward_supported(model, layer) -> None:
    """Refuse, before tracing, a head layer configured in a way `_grad_cam` does not differentiate."""
    kind = type(layer).__name__
    problem = None
    if hasattr(layer, "activation") and layer.activation.__name__ not in ("relu", "linear"):
        problem = f"needs relu or linear, got {layer.activation.__name__}"
    elif getattr(layer, "data_format", "channels_last") != "channels_last":
        problem = "needs channels_last"
    elif kind == "BatchNormalization" and layer.axis not in (-1, len(layer.input.shape) - 1):
        problem = f"needs BatchNormalization over the last axis, got axis {layer.axis}"
    elif kind == "GlobalAveragePooling2D" and layer.keepdims:
        problem = "needs keepdims=False"
    elif kind == "MaxPooling2D" and (tuple(layer.pool_size) != tuple(layer.strides)
                                     or layer.padding != "valid"):
        problem = f"needs pool_size == strides and 'valid' padding, got {layer.pool_size}, " \
                  f"{layer.strides}, {layer.padding!r}"
    if problem:
        raise ValueError(f"{model.name}: Grad-CAM through {layer.name!r} {problem}")


def _relu_mask(output):
    """d relu(z) / dz from relu's output: 1 where it is positive (TensorFlow's convention at 0)."""
    import tensorflow as tf

    return tf.cast(output > 0, output.dtype)


def _max_pool_backward(gradient, pool_input, layer):
    """Route a [N, C, h, w, K] gradient of a (size = stride, 'valid') max pool to the first maximum of
    each window, as TensorFlow's MaxPoolGrad does, with forward ops only (tf2onnx has no grad ops)."""
    import tensorflow as tf

    sy, sx = layer.pool_size                     # == strides, 'valid' (checked in head_layers)
    _, height, width, channels = pool_input.shape
    out_h, out_w = height // sy, width // sx
    n_classes = gradient.shape[1]
    window = tf.reshape(pool_input[:, :out_h * sy, :out_w * sx],
                        [-1, out_h, sy, out_w, sx, channels])
    window = tf.reshape(tf.transpose(window, [0, 1, 3, 5, 2, 4]), [-1, out_h, out_w, channels, sy * sx])
    first_max = tf.one_hot(tf.argmax(window, axis=-1), sy * sx, dtype=gradient.dtype)  # [N,h,w,K,s]
    routed = gradient[..., None] * first_max[:, None]                                 # [N,C,h,w,K,s]
    routed = tf.reshape(routed, [-1, n_classes, out_h, out_w, channels, sy, sx])
    routed = tf.reshape(tf.transpose(routed, [0, 1, 2, 5, 3, 6, 4]),
                        [-1, n_classes, out_h * sy, out_w * sx, channels])
    # Rows and columns the pool dropped get no gradient.
    return tf.pad(routed, [[0, 0], [0, 0], [0, height - out_h * sy], [0, width - out_w * sx], [0, 0]])


def _dense_backward(gradient, layer):
    """[B, C, D_out] -> [B, C, D_in]: the gradient times the kernel's transpose, computed as
    (kernel @ gradient^T)^T so the ONNX file holds the kernel once (tf2onnx would store a folded
    transposed copy of it otherwise, doubling a Flatten + Dense model's size)."""
    import tensorflow as tf

    kernel = tf.convert_to_tensor(layer.kernel)                       # [D_in, D_out]
    n_classes = gradient.shape[1]
    rows = tf.reshape(gradient, [-1, kernel.shape[1]])                # [B*C, D_out]
    columns = tf.matmul(kernel, rows, transpose_b=True)               # [D_in, B*C]
    return tf.reshape(tf.transpose(columns), [-1, n_classes, kernel.shape[0]])


def _grad_cam(features, head: list, activations: list):
    """Grad-CAM [N, h, w, C] of every class from the feature map and each head layer's output.

    The class score is the output layer's logit (before softmax/sigmoid); for one sigmoid unit the
    two classes' logits are -z and z. Its gradient w.r.t. the feature map is carried back through
    the head layer by layer (vector-Jacobian products written with forward ops, which tf2onnx
    converts); cam = sum_k alpha_k A_k with alpha_k = sum over positions of the gradient, i.e.
    Grad-CAM's weights times h*w (a positive constant: serving's ReLU + max normalisation is the
    same). For a GAP + Dense head this is exactly the class activation map A . W of
    `build_export_model`, whose spatial mean is the logit minus the bias.
    """
    import tensorflow as tf

    output = head[-1]
    # Weights are read from the layers' variables, as the Keras forward pass does (tf2onnx freezes them).
    weights = tf.transpose(tf.convert_to_tensor(output.kernel))      # [C, D]: d logit_c / d input
    if output.units == 1:
        weights = tf.concat([-weights, weights], axis=0)
    n_classes = weights.shape[0]
    gradient = weights[None]                                          # [1 -> N, C, D]
    # head[i] maps inputs[i] to activations[i]; walk back from the layer before the output.
    inputs = [features, *activations[:-1]]
    for layer, layer_input, layer_output in zip(reversed(head[:-1]), reversed(inputs[:-1]),
                                                reversed(activations[:-1]), strict=True):
        kind = type(layer).__name__
        # Dense and Activation layers are relu or linear (checked in head_layers).
        if getattr(layer, "activation", None) is not None and layer.activation.__name__ == "relu":
            gradient = gradient * _relu_mask(layer_output)[:, None]
        if kind == "Dense":
            gradient = _dense_backward(gradient, layer)
        elif kind == "Flatten":
            gradient = tf.reshape(gradient, [-1, n_classes, *layer_input.shape[1:]])
        elif kind == "BatchNormalization":
            # Inference mode: y = gamma * (x - mean) / sqrt(var + eps) + beta, a per-channel scale.
            scale = tf.math.rsqrt(tf.convert_to_tensor(layer.moving_variance) + layer.epsilon)
            if layer.scale:
                scale = scale * tf.convert_to_tensor(layer.gamma)
            gradient = gradient * scale
        elif kind == "MaxPooling2D":
            gradient = _max_pool_backward(gradient, layer_input, layer)
        elif kind == "GlobalAveragePooling2D":
            _, height, width, channels = layer_input.shape
            gradient = tf.reshape(gradient, [-1, n_classes, 1, 1, channels]) / float(height * width)
            gradient = gradient * tf.ones_like(layer_input)[:, None]
        # Dropout is the identity at inference.
    _, height, width, channels = features.shape
    # A gradient that does not depend on the image (a linear head) is still [1, C, ...]: broadcast it.
    gradient = gradient * tf.ones_like(features)[:, None]
    alpha = tf.reduce_sum(gradient, axis=[2, 3])                                       # [N, C, K]
    flat = tf.reshape(features, [-1, height * width, channels])
    cam = tf.matmul(flat, alpha, transpose_b=True)                                     # [N, hw, C]
    return tf.reshape(cam, [-1, height, width, n_classes])


def classifier_function(model):
    """tf.function image -> (probabilities [N, C], cam [N, h, w, C]) for a whole Keras classifier.

    A one-unit sigmoid output p becomes two columns [1 - p, p]; `cam` is Grad-CAM on the last
    convolutional feature map (`feature_layer`) for every class (`_grad_cam`).
    """
    import keras
    import tensorflow as tf

    feature = feature_layer(model)
    head = head_layers(model, feature)
    probe = keras.Model(model.input, [feature.output, *(layer.output for layer in head)])
    _, height, width, channels = model.input_shape

    @tf.function(input_signature=[tf.TensorSpec((None, height, width, channels), tf.float32, name="input")])
    def serve(images):
        features, *activations = probe(images, training=False)
        probabilities = activations[-1]
        if probabilities.shape[-1] == 1:
            probabilities = tf.concat([1.0 - probabilities, probabilities], axis=-1)
        return probabilities, _grad_cam(features, head, activations)

    return serve


def keras_probabilities(model, images: np.ndarray) -> np.ndarray:
    """The Keras model's class probabilities, a one-unit sigmoid output as two columns [1 - p, p]."""
    p = np.asarray(model.predict(images, batch_size=32, verbose=0))
    return np.concatenate([1.0 - p, p], axis=1) if p.shape[1] == 1 else p


def classifier_to_onnx(model, path: Path, max_bytes: int = MAX_MODEL_BYTES) -> Path:
    """Export a whole Keras classifier from training/architectures.py to the serving contract.

    Input `input` [N, H, W, 3] at the model's own input size; outputs `probabilities` [N, C] and
    `cam` [N, h, w, C] (see `classifier_function`). A model whose weights alone exceed `max_bytes`
    is refused before conversion; the converted file is checked again before it is written.
    """
    import tf2onnx

    weight_bytes = 4 * model.count_params()
    if weight_bytes > max_bytes:
        raise ValueError(
            f"{model.name}: {model.count_params():,} parameters = {weight_bytes / 2**20:.1f} MiB of float32 "
            f"weights, over the {max_bytes / 2**20:.0f} MiB limit of a shipped model; not exported")
    function = classifier_function(model)
    proto, _ = tf2onnx.convert.from_function(function, input_signature=function.input_signature,
                                             opset=OPSET, output_path=None)
    return _save_checked(proto, path, ["probabilities", "cam"], max_bytes)


def classifier_parity(model, onnx_path: Path, images: np.ndarray) -> dict[str, float]:
    """Max |Keras - ONNX Runtime| of the probabilities on `images`; raises above 1e-4. The cam is
    left out of the check (it is explained, not scored); its difference is reported under `cam`
    against the same graph run in TensorFlow."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    probabilities, cam = session.run(["probabilities", "cam"], {"input": images})
    expected_cam = classifier_function(model)(images)[1].numpy()
    differences = {"probabilities": float(np.abs(keras_probabilities(model, images) - probabilities).max()),
                   "cam": float(np.abs(expected_cam - cam).max())}
    if differences["probabilities"] > PARITY_TOLERANCE:
        raise AssertionError(
            f"ONNX/Keras parity failed for probabilities: max |diff| {differences['probabilities']:.2e}")
    return differences
