"""Every registered architecture trains a step and exports to the serving contract at its own input
size, with Grad-CAM inside the graph; the ones over the 15 MB limit are refused, clearly and early.

Tiny inputs keep it fast; what is checked is the graph, which does not depend on the input size
beyond the shapes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.training
keras = pytest.importorskip("keras")
pytest.importorskip("tf2onnx", reason="tf2onnx (the training extra) is not installed")

from training.architectures import ARCHITECTURES, build  # noqa: E402
from training.export import (  # noqa: E402
    MAX_MODEL_BYTES, PARITY_TOLERANCE, classifier_function, classifier_parity, classifier_to_onnx,
    feature_layer,
)
from training.efficientnet_lite import default_weights_dir as lite2_weights_dir  # noqa: E402
from training.paths import weights_dir  # noqa: E402

# (width, height) small enough to be quick; skin's 22x18 makes its second max pool drop a row and a
# column (9x11 -> 4x5), so the gradient routing of a cropped pool is exercised.
EXPORTED = {
    "pneumonia_cnn_5block": (32, 32),
    "pneumonia_cnn_5block_he": (32, 32),
    "skin_cnn_75x100": (22, 18),
    "bone_vgg_scratch": (32, 32),
    "mobilenet_v2_finetuned": (64, 64),       # any size takes the ImageNet weights
}
# Over the 15 MB limit whatever the input size: their weights alone are larger.
TOO_LARGE = {
    "bone_mobilenet_v1": ((32, 32), r"5,8\d\d,\d\d\d parameters = 22\.\d MiB"),
    "skin_inception_resnet_v2": ((75, 75), r"54,\d\d\d,\d\d\d parameters = 20\d\.\d MiB"),
    # As a whole classifier; training.train stores its weights as float16 instead (test_training_export).
    "efficientnet_lite2_finetuned": ((64, 64), r"4,8\d\d,\d\d\d parameters = 18\.\d MiB"),
}
N_CLASSES = {"bone": 2, "skin": 7, "pneumonia": 2, "any": 3}


def _build_and_train_one_step(name: str, size: tuple[int, int]):
    """Build `name` at `size` and take one Adam step, so BatchNorm statistics and kernels have moved."""
    if name == "mobilenet_v2_finetuned" and not weights_dir().is_dir():
        pytest.skip(f"MobileNetV2 .npy weights not found at {weights_dir()} (set DRTECH_WEIGHTS_DIR)")
    keras.utils.set_random_seed(0)
    n_classes = N_CLASSES[ARCHITECTURES[name].task]
    model = build(name, n_classes=n_classes, input_size=size)
    sigmoid = ARCHITECTURES[name].output == "sigmoid"
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss="binary_crossentropy" if sigmoid else "sparse_categorical_crossentropy")
    images = _images(size, 4)
    labels = np.array([0, 1, 0, 1], dtype="float32" if sigmoid else "int64")
    assert np.isfinite(float(model.train_on_batch(images, labels)))
    return model, n_classes


def _images(size: tuple[int, int], n: int, seed: int = 0) -> np.ndarray:
    width, height = size
    return np.random.default_rng(seed).uniform(-1, 1, (n, height, width, 3)).astype(np.float32)


def _reference_grad_cam(model, images: np.ndarray) -> np.ndarray:
    """Grad-CAM by TensorFlow's own autodiff (GradientTape): the gradient of each class logit w.r.t.
    the last conv feature map, summed over positions, weights the map's channels. A one-unit
    sigmoid's classes have logits -z and z."""
    import tensorflow as tf

    output = model.layers[-1]
    probe = keras.Model(model.input, [feature_layer(model).output, output.input])
    with tf.GradientTape(persistent=True) as tape:
        features, penultimate = probe(tf.constant(images), training=False)
        logits = tf.matmul(penultimate, output.kernel) + output.bias
        if logits.shape[-1] == 1:
            logits = tf.concat([-logits, logits], axis=-1)
        scores = [logits[:, c] for c in range(logits.shape[-1])]
    maps = []
    for score in scores:
        alpha = tf.reduce_sum(tape.gradient(score, features), axis=[1, 2])
        maps.append(tf.einsum("nhwk,nk->nhw", features, alpha))
    return tf.stack(maps, axis=-1).numpy()


def test_every_registered_architecture_is_covered():
    assert set(EXPORTED) | set(TOO_LARGE) == set(ARCHITECTURES)


@pytest.mark.parametrize("name", sorted(EXPORTED))
def test_architecture_exports_at_its_input_size_with_parity_and_grad_cam(name: str, tmp_path: Path):
    import onnxruntime as ort

    size = EXPORTED[name]
    model, n_classes = _build_and_train_one_step(name, size)

    path = classifier_to_onnx(model, tmp_path / "model.onnx")
    differences = classifier_parity(model, path, _images(size, 8, seed=1))

    assert differences["probabilities"] <= PARITY_TOLERANCE
    assert path.stat().st_size <= MAX_MODEL_BYTES
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    width, height = size
    grid = feature_layer(model).output.shape[1:3]
    assert [(i.name, i.shape[1:]) for i in session.get_inputs()] == [("input", [height, width, 3])]
    assert [(o.name, o.shape[1:]) for o in session.get_outputs()] == [
        ("probabilities", [n_classes]), ("cam", [*grid, n_classes])]
    images = _images(size, 3, seed=2)
    probabilities, cam = session.run(["probabilities", "cam"], {"input": images})
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    if ARCHITECTURES[name].output == "sigmoid":    # one unit p becomes the two columns [1 - p, p]
        p_positive = model.predict(images, verbose=0)[:, 0]
        np.testing.assert_allclose(probabilities, np.stack([1 - p_positive, p_positive], axis=1), atol=1e-5)
    reference = _reference_grad_cam(model, images)
    np.testing.assert_allclose(cam, reference, atol=1e-4 * np.abs(reference).max())


@pytest.mark.parametrize("name", sorted(TOO_LARGE))
def test_architectures_over_the_size_limit_are_refused_before_conversion(name: str, tmp_path: Path):
    size, message = TOO_LARGE[name]
    if name == "efficientnet_lite2_finetuned" and not lite2_weights_dir().is_dir():
        pytest.skip(f"EfficientNet-Lite2 .npy weights not found at {lite2_weights_dir()}")
    model = build(name, n_classes=N_CLASSES[ARCHITECTURES[name].task], input_size=size)

    with pytest.raises(ValueError, match=message + r" of float32 weights, over the 15 MiB limit"):
        classifier_to_onnx(model, tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()


def test_grad_cam_of_a_gap_and_dense_stack_head_matches_autodiff():
    # bone_mobilenet_v1 cannot ship (too large), but its graph is the one the export would convert.
    model, _ = _build_and_train_one_step("bone_mobilenet_v1", (32, 32))
    images = _images((32, 32), 2, seed=4)

    probabilities, cam = (value.numpy() for value in classifier_function(model)(images))

    np.testing.assert_allclose(probabilities, model.predict(images, verbose=0), atol=1e-6)
    reference = _reference_grad_cam(model, images)
    np.testing.assert_allclose(cam, reference, atol=1e-4 * np.abs(reference).max())


def test_a_head_the_gradient_cannot_be_carried_through_is_refused(tmp_path: Path):
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(8, activation="tanh", name="tanh_dense")(x)
    outputs = keras.layers.Dense(2, activation="softmax")(x)

    with pytest.raises(ValueError, match="Grad-CAM through 'tanh_dense' needs relu or linear"):
        classifier_to_onnx(keras.Model(inputs, outputs), tmp_path / "model.onnx")
