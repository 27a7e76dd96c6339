"""EfficientNet-Lite2 backbone in Keras with ImageNet weights read from plain .npy files.

The weights folder (`../shared/weights/efficientnet_lite2_imagenet`, one `.npy` per tensor of the
PyTorch port, never downloaded) describes the network itself: which blocks have an expansion
convolution, each depthwise kernel size and each block's output channels are read from the tensor
shapes; the stage strides are the published ones. No squeeze-excite and ReLU6 throughout, so the
graph exports to ONNX as cleanly as MobileNetV2.

Input: the serving core's [-1, 1] scaling (x/127.5 - 1), within 0.4% of the weights' own
(x - 127)/128. Native resolution 260x260; any size of at least 32x32 takes the same weights.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from training.paths import PROJECT_ROOT

EXPECTED_PARAMETERS = 4_869_168     # the backbone without the ImageNet classifier (6,150,168 less _fc: 1,281,000)
FEATURE_CHANNELS = 1280
NATIVE_SIZE = (260, 260)
# Output channels of each stage and the stride its first block carries (the README of the weights).
_STAGE_STRIDES = {16: 1, 24: 2, 48: 2, 88: 2, 120: 1, 208: 2, 352: 1}
_BN_EPSILON = 1e-3


def default_weights_dir(weights: str | Path | None = None) -> Path:
    """`weights`, else DRTECH_LITE2_WEIGHTS_DIR, else ../shared/weights/efficientnet_lite2_imagenet."""
    if weights:
        return Path(weights)
    default = PROJECT_ROOT.parent / "shared" / "weights" / "efficientnet_lite2_imagenet"
    return Path(os.environ.get("DRTECH_LITE2_WEIGHTS_DIR", default))


class _Weights:
    def __init__(self, folder: Path):
        if not (folder / "tensors.json").is_file():
            raise FileNotFoundError(f"EfficientNet-Lite2 weights not found: {folder}/tensors.json "
                                    "(set --weights to the efficientnet_lite2_imagenet folder)")
        self.folder = folder
        self.used: set[str] = set()

    def has(self, name: str) -> bool:
        return (self.folder / f"{name}.npy").is_file()

    def get(self, name: str) -> np.ndarray:
        path = self.folder / f"{name}.npy"
        if not path.is_file():
            raise FileNotFoundError(f"EfficientNet-Lite2 weight file missing: {path}")
        self.used.add(name)
        return np.load(path, allow_pickle=False)

    def conv(self, name: str) -> np.ndarray:
        """[out, in, kh, kw] -> Keras Conv2D [kh, kw, in, out]."""
        return self.get(f"{name}.weight").transpose(2, 3, 1, 0)

    def depthwise(self, name: str) -> np.ndarray:
        """[ch, 1, kh, kw] -> Keras DepthwiseConv2D [kh, kw, ch, 1]."""
        return self.get(f"{name}.weight").transpose(2, 3, 0, 1)

    def bn(self, name: str) -> list[np.ndarray]:
        return [self.get(f"{name}.{part}") for part in ("weight", "bias", "running_mean", "running_var")]


def _conv_bn(x, weights: _Weights, conv: str, bn: str, name: str, stride: int = 1, relu: bool = True,
             depthwise: bool = False):
    import keras

    if depthwise:
        kernel = weights.depthwise(conv)
        layer = keras.layers.DepthwiseConv2D(kernel.shape[0], strides=stride, padding="same", use_bias=False,
                                             name=name)
    else:
        kernel = weights.conv(conv)
        layer = keras.layers.Conv2D(kernel.shape[3], kernel.shape[0], strides=stride, padding="same",
                                    use_bias=False, name=name)
    x = layer(x)
    layer.set_weights([kernel])
    norm = keras.layers.BatchNormalization(epsilon=_BN_EPSILON, momentum=0.99, name=f"{name}_bn")
    x = norm(x)
    norm.set_weights(weights.bn(bn))
    if relu:
        x = keras.layers.ReLU(6.0, name=f"{name}_relu")(x)
    return x


def build_backbone(weights: str | Path | None = None, input_size: tuple[int, int] = NATIVE_SIZE,
                   include_classifier: bool = False):
    """Return the Keras EfficientNet-Lite2 feature extractor (output: the last 1x1 convolution's
    ReLU6 map, 1280 channels, named `head_relu`) at `input_size` (width, height), with the ImageNet
    weights from the .npy folder `weights`; `include_classifier` adds global pooling and the
    ImageNet classifier (softmax over 1000 classes; for the weights' check).

    Raises if a tensor is missing or left unused, a shape differs, or the parameter count is not
    the reference.
    """
    import keras

    folder = default_weights_dir(weights)
    source = _Weights(folder)
    width, height = input_size
    if min(width, height) < 32:
        raise ValueError(f"EfficientNet-Lite2 needs an input of at least 32x32, got {width}x{height}")
    inputs = keras.Input((height, width, 3), name="image")
    x = _conv_bn(inputs, source, "_conv_stem", "_bn0", "stem", stride=2)
    channels = x.shape[-1]
    block = 0
    while source.has(f"_blocks.{block}._depthwise_conv.weight"):
        prefix = f"_blocks.{block}"
        out_channels = source.get(f"{prefix}._project_conv.weight").shape[0]
        if out_channels not in _STAGE_STRIDES:
            raise ValueError(f"block {block}: {out_channels} output channels is not an EfficientNet-Lite2 stage")
        stride = _STAGE_STRIDES[out_channels] if out_channels != channels else 1
        shortcut = x
        if source.has(f"{prefix}._expand_conv.weight"):
            x = _conv_bn(x, source, f"{prefix}._expand_conv", f"{prefix}._bn0", f"block{block}_expand")
        x = _conv_bn(x, source, f"{prefix}._depthwise_conv", f"{prefix}._bn1", f"block{block}_depthwise",
                     stride=stride, depthwise=True)
        x = _conv_bn(x, source, f"{prefix}._project_conv", f"{prefix}._bn2", f"block{block}_project", relu=False)
        if stride == 1 and out_channels == channels:
            x = keras.layers.Add(name=f"block{block}_add")([shortcut, x])
        channels = out_channels
        block += 1
    x = _conv_bn(x, source, "_conv_head", "_bn1", "head")
    model = keras.Model(inputs, x, name="efficientnet_lite2")
    if model.count_params() != EXPECTED_PARAMETERS:
        raise ValueError(f"EfficientNet-Lite2 backbone has {model.count_params()} parameters, "
                         f"expected {EXPECTED_PARAMETERS}")
    if include_classifier:
        dense = keras.layers.Dense(1000, activation="softmax", name="imagenet")
        pooled = keras.layers.GlobalAveragePooling2D(name="gap")(x)
        outputs = dense(pooled)
        dense.set_weights([source.get("_fc.weight").T, source.get("_fc.bias")])
        model = keras.Model(inputs, outputs, name="efficientnet_lite2_imagenet")
    unused = {p.stem for p in folder.glob("*.npy")} - source.used - ({"_fc.weight", "_fc.bias"}
                                                                        if not include_classifier else set())
    if unused:
        raise ValueError(f"EfficientNet-Lite2 tensors left unused: {sorted(unused)[:5]}")
    return model
