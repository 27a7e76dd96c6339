"""The original student project's architectures, as Keras builders, plus our MobileNetV2 default.

Every builder takes its input the way the serving code makes it: RGB at the builder's input size,
scaled to [-1, 1] by `services.core.preprocessing.to_model_input(image, size)`. Where the
original scaled its input differently (x/255, dataset standardisation, Keras 'tf' mode), the
first layer of the model converts from [-1, 1] to that range, so the exported ONNX carries the
original's preprocessing and serving stays on the one shared path.

Pretrained weights are never downloaded. Keras' `weights="imagenet"` fetches files from the
internet, so every backbone here is built with `weights=None`, and a user who has the weight file
passes its path (`weights=PATH`); `load_weights(PATH)` then reads it (Keras `.weights.h5`, or
the legacy `.h5` files Keras publishes, e.g. `mobilenet_1_0_224_tf_no_top.h5`,
`inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5`).

Registry: `ARCHITECTURES[name]` -> `Architecture` (task, builder, input size, preprocessing,
reading of the original). Parameter counts below are those of the builders at their default
input size and were measured by building them (`count_params()`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DOWNLOAD_REFUSED = (
    "pretrained weights are never downloaded here: pass the path of a weight file you have "
    "(weights=PATH / --arch-weights PATH), or None to start from random weights"
)


@dataclass(frozen=True)
class Architecture:
    name: str
    task: str                        # "bone", "skin", "pneumonia"
    build: Callable[..., object]     # build(n_classes=..., input_size=..., weights=...) -> keras.Model
    input_size: tuple[int, int]      # (width, height), as in TaskSpec.input_size
    min_input_size: tuple[int, int]  # smallest (width, height) the builder accepts
    preprocessing: str               # what the original fed its network (converted inside the model)
    output: str                      # "softmax" (n_classes probabilities) or "sigmoid" (one P(positive))
    parameters_order: int            # order of magnitude of count_params() at the default size
    reading: str                     # where it comes from, and what is our reading of it


def _resolve_weights(weights: str | Path | None) -> Path | None:
    """A weight file path, or None; refuse Keras' download keywords and missing files clearly."""
    if weights is None:
        return None
    path = Path(weights)
    if str(weights) == "imagenet" or not path.is_file():
        raise FileNotFoundError(f"weight file not found: {weights!r}; {DOWNLOAD_REFUSED}")
    return path


def _input(input_size: tuple[int, int]):
    import keras

    width, height = input_size
    return keras.Input((height, width, 3), name="image")


def _from_minus1_1_to_0_1(x):
    """[-1, 1] (shared preprocessing) -> [0, 1] (Keras ImageDataGenerator(rescale=1/255))."""
    import keras

    return keras.layers.Rescaling(0.5, offset=0.5, name="to_unit_range")(x)


# --- bone ---------------------------------------------------------------------------------------

def bone_mobilenet_v1(
    n_classes: int = 2, input_size: tuple[int, int] = (224, 224), weights: str | Path | None = None,
    trainable_top_layers: int = 17,
):
    """Original bone model: MobileNet v1 (alpha 1.0) transfer.

    Our reading: MobileNet(alpha=1.0, include_top=False) -> GlobalAveragePooling2D ->
    Dense(1024, relu) -> Dense(1024, relu) -> Dense(512, relu) -> Dense(n_classes, softmax);
    only the last `trainable_top_layers` (17) layers of the backbone are trainable (conv_pw_11
    onwards: the last pointwise conv of block 11 and blocks 12-13, with their BatchNorms), the
    rest frozen (~5.85M parameters, 4.48M trainable). Input scaling is Keras'
    'tf' mode (x/127.5 - 1), which is exactly the shared [-1, 1] preprocessing.
    `weights`: the backbone's no-top weight file (e.g. `mobilenet_1_0_224_tf_no_top.h5`).
    """
    import keras

    inputs = _input(input_size)
    base = keras.applications.MobileNet(
        input_tensor=inputs, alpha=1.0, include_top=False, weights=None,
    )
    path = _resolve_weights(weights)
    if path is not None:
        base.load_weights(path)
    for layer in base.layers[:-trainable_top_layers]:
        layer.trainable = False
    x = keras.layers.GlobalAveragePooling2D(name="gap")(base.output)
    x = keras.layers.Dense(1024, activation="relu", name="dense_1024_a")(x)
    x = keras.layers.Dense(1024, activation="relu", name="dense_1024_b")(x)
    x = keras.layers.Dense(512, activation="relu", name="dense_512")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="bone_mobilenet_v1")


def bone_vgg_scratch(
    n_classes: int = 2, input_size: tuple[int, int] = (224, 224), weights: str | Path | None = None,
):
    """Original bone model trained from scratch, "Figure 2.11" (VGG style).

    Our reading of the figure, layer by layer (all convolutions 3x3, stride 1, 'same', ReLU):
      Conv 32, Conv 32, MaxPool 2x2
      Conv 64, Conv 64, MaxPool 2x2
      Conv 128, Conv 128, MaxPool 2x2
      Conv 256, Conv 256, MaxPool 2x2
      Flatten, Dense 256 ReLU, Dropout 0.5, Dense 128 ReLU, Dropout 0.5, Dense n_classes softmax
    Input x/255 (converted from [-1, 1] inside the model). At 224x224 the flatten is 14x14x256,
    so the first dense layer holds most of the ~14.05M parameters, as in VGG.
    `weights`: a `.weights.h5` of this same model (e.g. a previous run), never downloaded.
    """
    import keras

    inputs = _input(input_size)
    x = _from_minus1_1_to_0_1(inputs)
    for block, filters in enumerate((32, 64, 128, 256), start=1):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"block{block}_conv1")(x)
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"block{block}_conv2")(x)
        x = keras.layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(256, activation="relu", name="dense_256")(x)
    x = keras.layers.Dropout(0.5)(x)
    x = keras.layers.Dense(128, activation="relu", name="dense_128")(x)
    x = keras.layers.Dropout(0.5)(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name="bone_vgg_scratch")
    path = _resolve_weights(weights)
    if path is not None:
        model.load_weights(path)
    return model


# --- skin ---------------------------------------------------------------------------------------

def skin_cnn_75x100(
    n_classes: int = 7, input_size: tuple[int, int] = (100, 75), weights: str | Path | None = None,
    pixel_mean: float | None = None, pixel_std: float | None = None,
):
    """Original skin model, "Figure 3.34" (the well-known HAM10000 Keras kernel), input 75x100 (h x w).

    Layers: Conv 32 3x3 ReLU same, Conv 32 3x3 ReLU same, MaxPool 2x2, Dropout 0.25,
    Conv 64 3x3 ReLU same, Conv 64 3x3 ReLU same, MaxPool 2x2, Dropout 0.40,
    Flatten, Dense 128 ReLU, Dropout 0.5, Dense 7 softmax (~3.75M parameters, 3.69M in Dense 128).
    The kernel standardised pixels with the training set's mean and std (one scalar each, in
    0-255 units): pass `pixel_mean`/`pixel_std` to bake that in; without them the input is x/255.
    """
    import keras

    if (pixel_mean is None) != (pixel_std is None):
        raise ValueError("pass both pixel_mean and pixel_std (training-set statistics), or neither")
    if pixel_std is not None and pixel_std <= 0:
        raise ValueError(f"pixel_std must be positive, got {pixel_std}")
    inputs = _input(input_size)
    if pixel_mean is None:
        x = _from_minus1_1_to_0_1(inputs)
    else:
        # [-1, 1] -> 0..255 -> (x - mean) / std, as one affine map.
        scale = 127.5 / pixel_std
        x = keras.layers.Rescaling(scale, offset=(127.5 - pixel_mean) / pixel_std, name="standardise")(inputs)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Dropout(0.25)(x)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Dropout(0.40)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(128, activation="relu")(x)
    x = keras.layers.Dropout(0.5)(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name="skin_cnn_75x100")
    path = _resolve_weights(weights)
    if path is not None:
        model.load_weights(path)
    return model


def skin_inception_resnet_v2(
    n_classes: int = 7, input_size: tuple[int, int] = (299, 299), weights: str | Path | None = None,
    trainable_backbone: bool = False,
):
    """Original skin transfer model: InceptionResNetV2 -> GlobalAveragePooling2D -> Dropout 0.5 ->
    Dense n_classes softmax (~54.3M parameters). Input 'tf' mode (x/127.5 - 1) = the shared
    preprocessing. The backbone is frozen unless `trainable_backbone`. Minimum input 75x75.
    `weights`: the no-top ImageNet file
    (`inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5`), never downloaded.
    """
    import keras

    inputs = _input(input_size)
    base = keras.applications.InceptionResNetV2(input_tensor=inputs, include_top=False, weights=None)
    path = _resolve_weights(weights)
    if path is not None:
        base.load_weights(path)
    base.trainable = trainable_backbone
    x = keras.layers.GlobalAveragePooling2D(name="gap")(base.output)
    x = keras.layers.Dropout(0.5)(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="skin_inception_resnet_v2")


# --- pneumonia ----------------------------------------------------------------------------------

def pneumonia_cnn_5block(
    n_classes: int = 2, input_size: tuple[int, int] = (150, 150), weights: str | Path | None = None,
    he_init: bool = False,
):
    """Original pneumonia model: the well-known Kermany kernel's 5-block CNN at 150x150, x/255 input.

    Layers (3x3 kernels, 'same', ReLU):
      block 1: Conv 16, Conv 16, MaxPool 2x2
      block 2: SeparableConv 32, SeparableConv 32, BatchNorm, MaxPool 2x2
      block 3: SeparableConv 64, SeparableConv 64, BatchNorm, MaxPool 2x2
      block 4: SeparableConv 128, SeparableConv 128, BatchNorm, MaxPool 2x2, Dropout 0.2
      block 5: SeparableConv 256, SeparableConv 256, BatchNorm, MaxPool 2x2, Dropout 0.2
      Flatten (4x4x256 at 150x150), Dense 512 ReLU, Dropout 0.7, Dense 128 ReLU, Dropout 0.5,
      Dense 64 ReLU, Dropout 0.3, Dense 1 sigmoid = P(PNEUMONIA)   (~2.31M parameters)
    The output is one sigmoid, as in the original (binary cross-entropy); `n_classes` must be 2.

    `he_init` (our deviation, registered as `pneumonia_cnn_5block_he`): Keras' default Glorot
    initialiser counts a depthwise kernel's fan-in as 3x3xC although each output sums only 3x3
    inputs, so at initialisation every separable convolution shrinks the signal, block after block,
    far below BatchNorm's epsilon, and the trained model then gives one constant output in inference
    mode (the measured variances: training/experiments/FINDINGS.md).
    With `he_init` the depthwise kernels are N(0, 2/9) and the pointwise kernels He-normal.
    """
    import keras

    if n_classes != 2:
        raise ValueError(
            f"the 5-block CNN is binary (one sigmoid output); n_classes must be 2, got {n_classes}"
        )
    initialisers = {}
    if he_init:
        initialisers = {"depthwise_initializer": keras.initializers.RandomNormal(stddev=(2 / 9) ** 0.5),
                        "pointwise_initializer": keras.initializers.HeNormal()}
    inputs = _input(input_size)
    x = _from_minus1_1_to_0_1(inputs)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="block1_conv1")(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="block1_conv2")(x)
    x = keras.layers.MaxPooling2D(2, name="block1_pool")(x)
    for block, filters in ((2, 32), (3, 64), (4, 128), (5, 256)):
        for n in (1, 2):
            x = keras.layers.SeparableConv2D(filters, 3, padding="same", activation="relu",
                                             name=f"block{block}_sep{n}", **initialisers)(x)
        x = keras.layers.BatchNormalization(name=f"block{block}_bn")(x)
        x = keras.layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
        if block >= 4:
            x = keras.layers.Dropout(0.2, name=f"block{block}_dropout")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    for units, rate in ((512, 0.7), (128, 0.5), (64, 0.3)):
        x = keras.layers.Dense(units, activation="relu", name=f"dense_{units}")(x)
        x = keras.layers.Dropout(rate, name=f"dropout_{units}")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="p_positive")(x)
    model = keras.Model(inputs, outputs, name="pneumonia_cnn_5block")
    path = _resolve_weights(weights)
    if path is not None:
        model.load_weights(path)
    return model


def pneumonia_cnn_5block_he(**kwargs):
    """The 5-block CNN with He initialisation of its separable convolutions (see pneumonia_cnn_5block)."""
    return pneumonia_cnn_5block(he_init=True, **kwargs)


# --- our default --------------------------------------------------------------------------------

def mobilenet_v2_finetuned(
    n_classes: int, input_size: tuple[int, int] = (224, 224), weights: str | Path | None = None,
    finetune_blocks: int = 3, dropout: float = 0.3, train_batchnorm: bool = False,
):
    """Our default: MobileNetV2 (alpha 1.0, 224) with the shared ImageNet .npy weights
    (`training.backbone.build_backbone`; `weights` = that .npy folder, default ../shared/weights/...),
    the last `finetune_blocks` inverted-residual blocks + Conv_1 trainable (their BatchNorm frozen, as
    in training.heads, unless `train_batchnorm`: then it normalises by each training batch and
    learns its scale, shift and running statistics, which wants batches of 32 or more), then
    GlobalAveragePooling2D -> Dropout 0.3 -> Dense n_classes softmax (~2.26M
    backbone parameters). Input: the shared [-1, 1] preprocessing at `input_size` (the ImageNet
    weights' 224x224 by default; training.finetune --input-size trains at another).
    """
    import keras

    from training.backbone import build_backbone

    if not 0 <= finetune_blocks <= 16:
        raise ValueError(f"finetune_blocks must be 0..16, got {finetune_blocks}")
    base = build_backbone(weights, input_size)
    trainable_prefixes = tuple(f"block_{n}_" for n in range(17 - finetune_blocks, 17))
    trainable_prefixes += ("Conv_1",) if finetune_blocks else ()
    for layer in base.layers:
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = layer.name.startswith(trainable_prefixes) and (train_batchnorm or not is_bn)
        if is_bn and layer.trainable:
            # Keras' MobileNetV2 keeps 0.999, which would leave the running statistics near ImageNet's
            # for the first ~1,000 steps of a fine-tune, and every validation pass on them.
            layer.momentum = 0.99
    x = keras.layers.GlobalAveragePooling2D(name="gap")(base.output)
    x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(base.input, outputs, name="mobilenet_v2_finetuned")


def efficientnet_lite2_finetuned(
    n_classes: int, input_size: tuple[int, int] = (224, 224), weights: str | Path | None = None,
    dropout: float = 0.3, train_batchnorm: bool = False,
):
    """EfficientNet-Lite2 (training.efficientnet_lite; `weights` = its .npy folder, default
    ../shared/weights/efficientnet_lite2_imagenet) trained end to end but for the stem (BatchNorm
    frozen unless `train_batchnorm`), then GlobalAveragePooling2D -> Dropout -> Dense softmax, as
    mobilenet_v2_finetuned. ~4.9M backbone parameters; 224x224 by default (the images are smaller
    than the weights' native 260, which costs 35% more per image for no new detail)."""
    import keras

    from training.efficientnet_lite import build_backbone

    base = build_backbone(weights, input_size)
    for layer in base.layers:
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = not layer.name.startswith("stem") and (train_batchnorm or not is_bn)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(base.output)
    x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(base.input, outputs, name="efficientnet_lite2_finetuned")


# End-to-end trained backbones (training.finetune --arch), taking --input-size and --train-batchnorm.
FINETUNED = ("mobilenet_v2_finetuned", "efficientnet_lite2_finetuned")


ARCHITECTURES: dict[str, Architecture] = {
    arch.name: arch for arch in (
        Architecture(
            "bone_mobilenet_v1", "bone", bone_mobilenet_v1, (224, 224), (32, 32),
            "x/127.5 - 1 (Keras 'tf' mode)", "softmax", 6,
            "original bone transfer model: MobileNet v1 alpha 1.0, GAP + Dense 1024/1024/512, "
            "top 17 layers trainable",
        ),
        Architecture(
            "bone_vgg_scratch", "bone", bone_vgg_scratch, (224, 224), (16, 16),
            "x/255", "softmax", 7,
            "original bone scratch model ('Figure 2.11'), our reading: 4 VGG blocks 32-64-128-256 "
            "+ Dense 256/128",
        ),
        Architecture(
            "skin_cnn_75x100", "skin", skin_cnn_75x100, (100, 75), (4, 4),
            "(x - training mean) / training std, or x/255 without statistics", "softmax", 6,
            "original skin CNN ('Figure 3.34'), the HAM10000 Keras kernel",
        ),
        Architecture(
            "skin_inception_resnet_v2", "skin", skin_inception_resnet_v2, (299, 299), (75, 75),
            "x/127.5 - 1 (Keras 'tf' mode)", "softmax", 7,
            "original skin transfer model: InceptionResNetV2 + GAP + Dropout 0.5 + Dense 7",
        ),
        Architecture(
            "pneumonia_cnn_5block", "pneumonia", pneumonia_cnn_5block, (150, 150), (32, 32),
            "x/255", "sigmoid", 6,
            "original pneumonia model: the Kermany kernel's 5-block CNN (Conv16 + 4 SeparableConv blocks)",
        ),
        Architecture(
            "pneumonia_cnn_5block_he", "pneumonia", pneumonia_cnn_5block_he, (150, 150), (32, 32),
            "x/255", "sigmoid", 6,
            "the 5-block CNN with He-initialised separable convolutions (our fix of vanishing activations)",
        ),
        Architecture(
            "mobilenet_v2_finetuned", "any", mobilenet_v2_finetuned, (224, 224), (32, 32),
            "x/127.5 - 1 (the shared preprocessing)", "softmax", 6,
            "our default: MobileNetV2 with the shared ImageNet .npy weights, top blocks fine-tuned",
        ),
        Architecture(
            "efficientnet_lite2_finetuned", "any", efficientnet_lite2_finetuned, (224, 224), (32, 32),
            "x/127.5 - 1 (the shared preprocessing; the weights' own is (x - 127)/128)", "softmax", 6,
            "EfficientNet-Lite2 with the shared ImageNet .npy weights, all but the stem fine-tuned",
        ),
    )
}


def build(name: str, **kwargs):
    """Build the registered architecture `name` (kwargs go to its builder)."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name].build(**kwargs)
