"""training.augment: the batched rotation/zoom/shift that training.finetune trains with samples
exactly as Keras' affine_transform does, and draws a transform per image within its bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytestmark = pytest.mark.training
keras = pytest.importorskip("keras")

from keras import ops  # noqa: E402

from training import finetune  # noqa: E402
from training.augment import RandomAcquisition, RandomAffine, affine_sample  # noqa: E402


def _transforms(rng: np.random.Generator, n: int) -> np.ndarray:
    """Rotations of any angle, zooms 0.6-1.5 and shifts far past the border (reflect fill used a lot)."""
    angle, scale = rng.uniform(-math.pi, math.pi, n), rng.uniform(0.6, 1.5, n)
    cos, sin = np.cos(angle) * scale, np.sin(angle) * scale
    return np.stack([cos, -sin, rng.uniform(-80, 80, n), sin, cos, rng.uniform(-60, 60, n)], 1).astype("float32")


def test_sampling_equals_keras_affine_transform_bilinear_reflect():
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (5, 31, 47, 3)).astype("float32")     # odd, non-square sizes
    for _ in range(5):
        transforms = _transforms(rng, 5)
        keras_transforms = np.concatenate([transforms, np.zeros((5, 2), "float32")], axis=1)
        expected = ops.image.affine_transform(images, keras_transforms, interpolation="bilinear", fill_mode="reflect")
        actual = affine_sample(ops.convert_to_tensor(images), transforms)
        np.testing.assert_allclose(ops.convert_to_numpy(actual), ops.convert_to_numpy(expected), atol=1e-4)


def test_the_identity_transform_returns_the_images():
    images = np.random.default_rng(1).uniform(-1, 1, (2, 8, 9, 3)).astype("float32")
    identity = np.tile(np.array([[1, 0, 0, 0, 1, 0]], "float32"), (2, 1))
    np.testing.assert_allclose(ops.convert_to_numpy(affine_sample(ops.convert_to_tensor(images), identity)), images,
                               atol=1e-6)


def test_transforms_stay_within_the_bounds_and_turn_about_the_centre():
    layer = RandomAffine(rotation=10 / 360, zoom=0.1, shift=0.05, seed=3)
    t = ops.convert_to_numpy(layer.transforms(2000, 224, 200))
    linear = t[:, [0, 1, 3, 4]].reshape(-1, 2, 2)
    scale = np.sqrt(np.abs(np.linalg.det(linear)))
    angle = np.arctan2(linear[:, 1, 0], linear[:, 0, 0])
    assert scale.min() >= 0.9 - 1e-6 and scale.max() <= 1.1 + 1e-6
    assert np.abs(angle).max() <= math.radians(10) + 1e-6 and np.abs(angle).max() > math.radians(9)
    # Where the centre of the output reads from = the centre moved by the shift, at most 5% of each side.
    centre = np.array([(200 - 1) / 2, (224 - 1) / 2])
    read_x = t[:, 0] * centre[0] + t[:, 1] * centre[1] + t[:, 2]
    read_y = t[:, 3] * centre[0] + t[:, 4] * centre[1] + t[:, 5]
    assert np.abs(read_x - centre[0]).max() <= 0.05 * 200 + 1e-3
    assert np.abs(read_y - centre[1]).max() <= 0.05 * 224 + 1e-3
    assert np.abs(read_x - centre[0]).max() > 0.04 * 200      # the bounds are used, not only the middle


def test_each_image_gets_its_own_transform_in_training_and_none_in_inference():
    image = np.random.default_rng(2).uniform(-1, 1, (1, 32, 32, 3)).astype("float32")
    batch = ops.convert_to_tensor(np.repeat(image, 4, axis=0))
    layer = RandomAffine(rotation=0.5, zoom=0.1, shift=0.1, seed=4)

    augmented = ops.convert_to_numpy(layer(batch, training=True))

    assert not np.allclose(augmented[0], augmented[1]) and not np.allclose(augmented[2], augmented[3])
    np.testing.assert_array_equal(ops.convert_to_numpy(layer(batch)), ops.convert_to_numpy(batch))


def test_the_trainer_resamples_once_not_through_kerass_per_image_layers():
    inputs = keras.Input((32, 32, 3))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs))
    trainer = finetune.build_trainer(model, finetune.AUGMENTATIONS["skin"], (32, 32))
    kinds = [type(layer).__name__ for layer in trainer.layers]
    assert kinds.count("RandomAffine") == 1
    assert not {"RandomRotation", "RandomZoom", "RandomTranslation"} & set(kinds)


def test_acquisition_changes_exposure_per_image_in_training_only_and_keeps_a_grey_image_grey():
    grey = np.random.default_rng(3).uniform(-1, 1, (6, 32, 40, 1)).astype("float32")
    images = np.repeat(grey, 3, axis=3)
    layer = RandomAcquisition(seed=5)

    assert np.array_equal(ops.convert_to_numpy(layer(images, training=False)), images)
    out = ops.convert_to_numpy(layer(images, training=True))
    assert out.shape == images.shape and out.min() >= -1.0 and out.max() <= 1.0
    np.testing.assert_allclose(out[..., 0], out[..., 2], atol=1e-5)            # noise is the same in every channel
    means = out.mean(axis=(1, 2, 3))
    assert np.ptp(means) > 0.02                                                  # each image its own exposure
    assert not np.allclose(out, images, atol=0.05)


def test_pneumonia_trains_with_acquisition_augmentation_and_the_trainer_applies_it():
    assert finetune.AUGMENTATIONS["pneumonia"].acquisition
    assert not finetune.AUGMENTATIONS["skin"].acquisition
    model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.GlobalAveragePooling2D()])
    trainer = finetune.build_trainer(model, finetune.AUGMENTATIONS["pneumonia"], (16, 16))
    assert "acquisition" in [layer.name for layer in trainer.layers]
