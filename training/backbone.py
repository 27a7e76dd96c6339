"""MobileNetV2 (alpha 1.0, 224) backbone with ImageNet weights read from plain .npy files.

Built at 224x224 by default; any input size takes the same weights (a larger one, e.g. an upsampled
288x288 knee radiograph, gives a finer last feature map: 9x9 instead of 7x7).

The weights are a TF-slim checkpoint exported one variable per file; they are never downloaded.
The TF-slim -> Keras name mapping is the one in ../shared/data/README.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.paths import weights_dir as default_weights_dir

EXPECTED_PARAMETERS = 2_257_984
# Keras BatchNormalization weight order.
_BN_SUFFIXES = ("gamma", "beta", "moving_mean", "moving_variance")


def _slim_prefix(keras_layer: str) -> tuple[str, str] | None:
    """Map a Keras layer name to (TF-slim prefix, kind); kind is 'conv', 'depthwise' or 'bn'.

    Returns None for layers without weights in the checkpoint.
    """
    is_bn = keras_layer.endswith("_BN") or keras_layer in ("bn_Conv1", "Conv_1_bn")
    if keras_layer in ("Conv1", "bn_Conv1"):
        prefix = "Conv"
    elif keras_layer in ("Conv_1", "Conv_1_bn"):
        prefix = "Conv_1"
    elif keras_layer.startswith("expanded_conv_"):
        prefix = keras_layer.removesuffix("_BN")           # expanded_conv_{depthwise,project}
    elif keras_layer.startswith("block_"):
        _, number, part = keras_layer.removesuffix("_BN").split("_", 2)
        prefix = f"expanded_conv_{number}_{part}"
    else:
        return None
    if is_bn:
        return prefix, "bn"
    return prefix, "depthwise" if prefix.endswith("depthwise") else "conv"


def _load_npy(folder: Path, name: str) -> np.ndarray:
    path = folder / f"{name}.npy"
    if not path.is_file():
        raise FileNotFoundError(f"MobileNetV2 weight file missing: {path}")
    return np.load(path, allow_pickle=False)


def build_backbone(weights: str | Path | None = None, input_size: tuple[int, int] = (224, 224)):
    """Return keras MobileNetV2(include_top=False) at `input_size` (width, height) with the ImageNet
    weights from `weights` (.npy folder).

    Raises if any weighted layer is left without weights, a shape differs, or the parameter
    count is not the reference 2,257,984.
    """
    import keras

    folder = default_weights_dir(weights)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"MobileNetV2 weights folder not found: {folder} (set --weights or DRTECH_WEIGHTS_DIR)"
        )
    width, height = input_size
    if min(width, height) < 32:
        raise ValueError(f"MobileNetV2 needs an input of at least 32x32, got {width}x{height}")
    model = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(height, width, 3))
    loaded = 0
    for layer in model.layers:
        if not layer.weights:
            continue
        mapping = _slim_prefix(layer.name)
        if mapping is None:
            raise ValueError(f"no TF-slim weights known for Keras layer {layer.name!r}")
        prefix, kind = mapping
        if kind == "bn":
            arrays = [_load_npy(folder, f"{prefix}_BatchNorm_{suffix}") for suffix in _BN_SUFFIXES]
        elif kind == "depthwise":
            arrays = [_load_npy(folder, f"{prefix}_depthwise_weights")]
        else:
            arrays = [_load_npy(folder, f"{prefix}_weights")]
        expected = [tuple(w.shape) for w in layer.get_weights()]
        if [a.shape for a in arrays] != expected:
            raise ValueError(f"{layer.name}: weight shapes {[a.shape for a in arrays]} != Keras {expected}")
        layer.set_weights(arrays)
        loaded += 1
    weighted = sum(1 for layer in model.layers if layer.weights)
    if loaded != weighted:
        raise ValueError(f"loaded weights into {loaded} of {weighted} weighted layers")
    if model.count_params() != EXPECTED_PARAMETERS:
        raise ValueError(f"MobileNetV2 has {model.count_params()} parameters, expected {EXPECTED_PARAMETERS}")
    return model
