"""The original project's architectures build as documented, train one step, and never download weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from training.architectures import ARCHITECTURES, build  # noqa: E402
from training.paths import weights_dir  # noqa: E402


def _batch(model, n: int = 2, seed: int = 0) -> np.ndarray:
    """Random images in the shared preprocessing's [-1, 1] range, at the model's input size."""
    _, height, width, channels = model.input_shape
    return np.random.default_rng(seed).uniform(-1, 1, (n, height, width, channels)).astype("float32")


def _one_training_step(model) -> tuple[float, list[np.ndarray], list[np.ndarray]]:
    """Compile as the original did, take one step; return loss and weights before/after."""
    sigmoid = model.output_shape[-1] == 1
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss="binary_crossentropy" if sigmoid else "sparse_categorical_crossentropy")
    x = _batch(model)
    y = np.array([0, 1], dtype="float32" if sigmoid else "int64")
    before = [w.numpy().copy() for w in model.weights]
    loss = float(model.train_on_batch(x, y))
    after = [w.numpy() for w in model.weights]
    return loss, before, after


def _changed(before, after) -> list[bool]:
    return [not np.array_equal(b, a) for b, a in zip(before, after, strict=True)]


def _trainable_mask(model) -> list[bool]:
    trainable = {id(w) for w in model.trainable_weights}
    return [id(w) in trainable for w in model.weights]


def test_registry_names_task_input_size_and_preprocessing_of_each():
    assert set(ARCHITECTURES) == {
        "bone_mobilenet_v1", "bone_vgg_scratch", "skin_cnn_75x100", "skin_inception_resnet_v2",
        "pneumonia_cnn_5block", "pneumonia_cnn_5block_he", "mobilenet_v2_finetuned", "efficientnet_lite2_finetuned",
    }
    assert ARCHITECTURES["skin_cnn_75x100"].input_size == (100, 75)          # (width, height)
    assert ARCHITECTURES["pneumonia_cnn_5block"].input_size == (150, 150)
    assert ARCHITECTURES["pneumonia_cnn_5block"].output == "sigmoid"
    for arch in ARCHITECTURES.values():
        assert arch.preprocessing and arch.reading
    with pytest.raises(ValueError, match="unknown architecture"):
        build("resnet_from_nowhere")


@pytest.mark.parametrize("name, size, n_classes", [
    ("bone_vgg_scratch", (224, 224), 2),
    ("skin_cnn_75x100", (100, 75), 7),
    ("pneumonia_cnn_5block", (150, 150), 2),
])
def test_scratch_models_have_the_documented_size_at_their_original_input(name, size, n_classes):
    model = build(name, n_classes=n_classes, input_size=size)

    assert model.input_shape == (None, size[1], size[0], 3)
    assert len(str(model.count_params())) - 1 == ARCHITECTURES[name].parameters_order


def test_skin_cnn_is_the_kernels_layer_list():
    model = build("skin_cnn_75x100")
    kinds = [type(layer).__name__ for layer in model.layers[2:]]    # after Input and the rescaling

    assert kinds == ["Conv2D", "Conv2D", "MaxPooling2D", "Dropout", "Conv2D", "Conv2D", "MaxPooling2D",
                     "Dropout", "Flatten", "Dense", "Dropout", "Dense"]
    rates = [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    assert rates == [0.25, 0.40, 0.5]
    assert model.count_params() == 3_752_999
    assert model.output_shape == (None, 7)


def test_pneumonia_cnn_is_the_5_block_kernel():
    model = build("pneumonia_cnn_5block")
    convs = [layer.filters for layer in model.layers
             if isinstance(layer, (keras.layers.Conv2D, keras.layers.SeparableConv2D))]
    dense = [layer.units for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    rates = [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)]

    assert convs == [16, 16, 32, 32, 64, 64, 128, 128, 256, 256]
    assert sum(isinstance(layer, keras.layers.SeparableConv2D) for layer in model.layers) == 8
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers) == 4
    assert dense == [512, 128, 64, 1]
    assert rates == [0.2, 0.2, 0.7, 0.5, 0.3]
    assert model.get_layer("flatten").output.shape[-1] == 4 * 4 * 256
    with pytest.raises(ValueError, match="binary"):
        build("pneumonia_cnn_5block", n_classes=3)


def test_scratch_models_convert_the_shared_input_range_to_the_originals():
    """[-1, 1] from the serving preprocessing becomes x/255 in [0, 1] (or standardised) inside the model."""
    unit = build("pneumonia_cnn_5block", input_size=(32, 32)).get_layer("to_unit_range")
    standardised = build("skin_cnn_75x100", pixel_mean=120.0, pixel_std=60.0).get_layer("standardise")
    x = np.array([[-1.0, 0.0, 1.0]], dtype="float32")             # pixels 0, 127.5, 255

    np.testing.assert_allclose(np.asarray(unit(x)), [[0.0, 0.5, 1.0]], atol=1e-6)
    np.testing.assert_allclose(np.asarray(standardised(x)),
                               [[(0 - 120) / 60, (127.5 - 120) / 60, (255 - 120) / 60]], atol=1e-5)
    with pytest.raises(ValueError, match="both"):
        build("skin_cnn_75x100", pixel_mean=120.0)


@pytest.mark.parametrize("name, kwargs", [
    ("bone_vgg_scratch", {"input_size": (32, 32)}),
    ("skin_cnn_75x100", {}),
    ("pneumonia_cnn_5block", {"input_size": (32, 32)}),
    ("pneumonia_cnn_5block_he", {"input_size": (32, 32)}),
])
def test_scratch_models_take_a_training_step(name, kwargs):
    keras.utils.set_random_seed(0)
    model = build(name, **kwargs)

    loss, before, after = _one_training_step(model)

    assert np.isfinite(loss)
    changed = _changed(before, after)
    assert all(c for c, trainable in zip(changed, _trainable_mask(model), strict=True) if trainable)


def test_bone_mobilenet_v1_trains_only_its_top_17_backbone_layers_and_the_head():
    keras.utils.set_random_seed(0)
    model = build("bone_mobilenet_v1", input_size=(32, 32))

    backbone = model.layers[1:model.layers.index(model.get_layer("gap"))]
    trainable = [layer.name for layer in backbone if layer.trainable]
    assert len(trainable) == 17 and trainable == [layer.name for layer in backbone[-17:]]
    dense = [layer.units for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert dense == [1024, 1024, 512, 2]
    assert len(str(model.count_params())) - 1 == ARCHITECTURES["bone_mobilenet_v1"].parameters_order

    loss, before, after = _one_training_step(model)

    assert np.isfinite(loss)
    frozen_kernel = [i for i, w in enumerate(model.weights) if w.path.startswith("conv1/")][0]
    head_kernel = [i for i, w in enumerate(model.weights) if w.path.startswith("dense_512/")][0]
    assert np.array_equal(before[frozen_kernel], after[frozen_kernel])
    assert not np.array_equal(before[head_kernel], after[head_kernel])


def test_inception_resnet_v2_builds_and_predicts_at_its_minimum_size():
    model = build("skin_inception_resnet_v2", input_size=(75, 75))

    probabilities = model.predict(_batch(model, n=1), verbose=0)

    assert probabilities.shape == (1, 7)
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    assert len(str(model.count_params())) - 1 == ARCHITECTURES["skin_inception_resnet_v2"].parameters_order
    assert len(model.trainable_weights) == 2          # frozen backbone; only Dense 7 trains


def test_weights_come_only_from_a_file_the_user_passes(tmp_path: Path):
    reference = keras.applications.MobileNet(input_shape=(32, 32, 3), alpha=1.0, include_top=False,
                                             weights=None)
    path = tmp_path / "mobilenet_v1_no_top.weights.h5"
    reference.save_weights(path)

    loaded = build("bone_mobilenet_v1", input_size=(32, 32), weights=path)

    np.testing.assert_array_equal(loaded.get_layer("conv1").get_weights()[0],
                                  reference.get_layer("conv1").get_weights()[0])
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        build("bone_mobilenet_v1", input_size=(32, 32), weights="imagenet")
    with pytest.raises(FileNotFoundError, match="not found"):
        build("skin_cnn_75x100", weights=tmp_path / "missing.weights.h5")


def test_mobilenet_v2_default_fine_tunes_only_the_last_blocks():
    if not weights_dir().is_dir():
        pytest.skip(f"MobileNetV2 .npy weights not found at {weights_dir()} (set DRTECH_WEIGHTS_DIR)")
    keras.utils.set_random_seed(0)
    model = build("mobilenet_v2_finetuned", n_classes=2, finetune_blocks=1)

    trainable = sorted({layer.name for layer in model.layers if layer.trainable and layer.weights})
    assert trainable == ["Conv_1", "block_16_depthwise", "block_16_expand", "block_16_project",
                         "probabilities"]

    loss, before, after = _one_training_step(model)

    assert np.isfinite(loss)
    frozen = [i for i, w in enumerate(model.weights) if w.path.startswith("block_15_project/")][0]
    tuned = [i for i, w in enumerate(model.weights) if w.path.startswith("block_16_project/")][0]
    assert np.array_equal(before[frozen], after[frozen])
    assert not np.array_equal(before[tuned], after[tuned])


def test_he_init_keeps_the_5_block_cnns_activations_from_vanishing():
    """Faithful (Glorot) separable convolutions shrink the signal ~10x each, to far below BatchNorm's
    epsilon (1e-3) by block 5; the He-initialised variant keeps it at a usable scale."""
    images = np.random.default_rng(0).uniform(-1, 1, (8, 64, 64, 3)).astype("float32")

    def block5_variance(name: str) -> float:
        keras.utils.set_random_seed(0)
        model = build(name, input_size=(64, 64))
        features = keras.Model(model.input, model.get_layer("block5_sep2").output)(images, training=False)
        return float(np.median(np.asarray(features).reshape(-1, 256).var(axis=0)))

    assert block5_variance("pneumonia_cnn_5block") < 1e-8
    assert block5_variance("pneumonia_cnn_5block_he") > 1e-4


def test_mobilenet_v2_with_train_batchnorm_learns_its_batch_statistics_too():
    if not weights_dir().is_dir():
        pytest.skip(f"MobileNetV2 .npy weights not found at {weights_dir()} (set DRTECH_WEIGHTS_DIR)")
    keras.utils.set_random_seed(0)
    model = build("mobilenet_v2_finetuned", n_classes=2, finetune_blocks=1, train_batchnorm=True)

    trainable = sorted({layer.name for layer in model.layers if layer.trainable and layer.weights})
    assert trainable == ["Conv_1", "Conv_1_bn", "block_16_depthwise", "block_16_depthwise_BN",
                         "block_16_expand", "block_16_expand_BN", "block_16_project", "block_16_project_BN",
                         "probabilities"]
    assert model.get_layer("block_16_project_BN").momentum == 0.99
    assert model.get_layer("block_15_project_BN").momentum == 0.999   # frozen: Keras' own

    _, before, after = _one_training_step(model)

    running_mean = next(i for i, w in enumerate(model.weights) if w.path == "block_16_project_BN/moving_mean")
    frozen_mean = next(i for i, w in enumerate(model.weights) if w.path == "block_15_project_BN/moving_mean")
    assert not np.array_equal(before[running_mean], after[running_mean])
    assert np.array_equal(before[frozen_mean], after[frozen_mean])
