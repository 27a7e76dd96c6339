"""The shipped architecture rebuilt in Keras, exported for every runtime the benchmark compares.

The shipped Keras models are not kept (only model.onnx ships), so the baselines use a model of the
same architecture: MobileNetV2 at 224x224 + global average pooling + dense softmax head + CAM
(+ the 5-grade KL head for bone) on the ImageNet MobileNetV2 backbone where its weights
are found (DRTECH_WEIGHTS_DIR), built by training/export.py's `build_export_model`, the function
the shipped models were exported with. Speed does not depend on the head's weights.

`export_model_folder` writes one folder a model service can serve with any runtime:
model.onnx (tf2onnx), saved_model/ (TensorFlow), model.tflite (LiteRT, the same Keras model),
model.keras (the original approach's per-request load) and the shipped card.json.
Needs TensorFlow (the `bench` or `training` extra).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from services.core.spec import TaskSpec

KL_GRADES = 5


def build_keras_model(spec: TaskSpec, seed: int = 0):
    """A Keras model of the shipped architecture with the spec's outputs (random weights)."""
    import keras

    from training.export import build_export_model

    keras.utils.set_random_seed(seed)
    try:
        from training.backbone import build_backbone

        # The ImageNet backbone the shipped models start from: realistic activations. A randomly
        # initialised MobileNetV2 lets them vanish (~1e-11), which is not what serving sees.
        backbone = build_backbone()
    except FileNotFoundError:
        backbone = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(224, 224, 3))
    rng = np.random.default_rng(seed)
    classes = len(spec.labels)
    kernel = rng.normal(0, 0.05, (1280, classes)).astype(np.float32)
    bias = np.zeros(classes, np.float32)
    kl = {}
    if "kl_probabilities" in spec.extra_outputs:
        kl = {"kl_kernel": rng.normal(0, 0.05, (1280, KL_GRADES)).astype(np.float32),
              "kl_bias": np.zeros(KL_GRADES, np.float32)}
    return build_export_model(backbone, kernel, bias, **kl)


def signature_function(model):
    """tf.function taking `input` and returning the contract's outputs by name."""
    import tensorflow as tf

    from training.export import output_names

    names = output_names(model)

    @tf.function(input_signature=[tf.TensorSpec((None, 224, 224, 3), tf.float32, name="input")])
    def serve(input):  # noqa: A002 - the signature's input name is the contract's
        return dict(zip(names, model(input, training=False)))

    return serve


def save_signature_model(model, folder: Path) -> Path:
    """SavedModel whose serving_default takes `input` and returns the contract's named outputs."""
    import tensorflow as tf

    module = tf.Module()
    module.model = model
    serve = signature_function(model)
    tf.saved_model.save(module, str(folder), signatures={"serving_default": serve})
    return folder


def to_tflite(model, path: Path) -> Path:
    """Convert the same Keras model (variables frozen). Its signature names the outputs output_0,
    output_1, ... in the model's output order, which is the contract's (probabilities, cam, extras)."""
    import tensorflow as tf

    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return path


def export_model_folder(spec: TaskSpec, folder: Path, *, tflite: bool = True, onnx: bool = True) -> Path:
    """Write every runtime's model file for `spec` into `folder` (created); returns the folder."""
    from training.export import to_onnx

    folder.mkdir(parents=True, exist_ok=True)
    model = build_keras_model(spec)
    shutil.copyfile(spec.card_path, folder / "card.json")
    model.save(folder / "model.keras")
    save_signature_model(model, folder / "saved_model")
    if onnx:
        to_onnx(model, folder / "model.onnx")
    if tflite:
        to_tflite(model, folder / "model.tflite")
    return folder
