"""training.calibration on Keras models: the temperature baked into the model and its ONNX export.
The fitting itself (NumPy) is in tests/unit/test_training_calibration.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.calibration import apply_temperature, with_temperature


def test_the_temperature_is_baked_into_the_keras_model_and_its_onnx_export(tmp_path: Path):
    keras = pytest.importorskip("keras")
    import onnxruntime as ort

    from training.export import to_onnx

    keras.utils.set_random_seed(0)
    inputs = keras.Input((224, 224, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="probabilities")(pooled))
    rng = np.random.default_rng(0)
    # a different colour per image, so the pooled features (and logits) differ clearly between images
    images = np.clip(rng.uniform(-1, 1, (4, 1, 1, 3)) + rng.normal(0, 0.05, (4, 224, 224, 3)), -1, 1)
    images = images.astype("float32")
    kernel, bias = model.get_layer("probabilities").get_weights()
    logits = images.mean(axis=(1, 2)) @ kernel + bias

    calibrated = with_temperature(model, 2.5)
    path = to_onnx(calibrated, tmp_path / "model.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_probabilities,) = session.run(["probabilities"], {"input": images})

    expected = apply_temperature(logits, 2.5)
    np.testing.assert_allclose(calibrated.predict(images, verbose=0), expected, atol=1e-5)
    np.testing.assert_allclose(onnx_probabilities, expected, atol=1e-5)
    assert np.abs(model.predict(images, verbose=0) - expected).max() > 0.02      # T really changed it
    with pytest.raises(ValueError, match="Dense with softmax or sigmoid"):
        with_temperature(keras.Model(inputs, pooled), 2.0)


def test_a_sigmoid_output_is_calibrated_the_same_way():
    keras = pytest.importorskip("keras")

    keras.utils.set_random_seed(1)
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="p_positive")(inputs))
    x = np.random.default_rng(1).normal(0, 2, (5, 3)).astype("float32")
    kernel, bias = model.get_layer("p_positive").get_weights()

    calibrated = with_temperature(model, 0.5)

    expected = apply_temperature(x @ kernel + bias, 0.5)
    np.testing.assert_allclose(calibrated.predict(x, verbose=0)[:, 0], expected, atol=1e-5)
