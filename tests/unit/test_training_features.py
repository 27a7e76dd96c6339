"""Training images go through the serving preprocessing; flip augmentation mirrors the image itself."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

from services.core.preprocessing import to_model_input
from tests.support import synthetic_image
from training.features import load_image


def test_training_input_is_exactly_the_serving_input(tmp_path):
    path = tmp_path / "knee.png"
    synthetic_image("bone_xray", size=(300, 260), seed=3).save(path)

    np.testing.assert_array_equal(load_image(path), to_model_input(Image.open(path)))


def test_flips_mirror_the_preprocessed_image(tmp_path):
    path = tmp_path / "lesion.png"
    image = synthetic_image("skin_lesion", size=(224, 224), seed=4)
    image.save(path)

    np.testing.assert_array_equal(load_image(path, "horizontal"), to_model_input(ImageOps.mirror(image)))
    np.testing.assert_array_equal(load_image(path, "vertical"), to_model_input(ImageOps.flip(image)))
    np.testing.assert_array_equal(load_image(path, "both"), to_model_input(image.rotate(180)))


def test_a_transposed_view_is_the_square_photo_turned_and_flipped(tmp_path):
    path = tmp_path / "lesion.png"
    image = synthetic_image("skin_lesion", size=(224, 224), seed=5)
    image.save(path)

    np.testing.assert_array_equal(load_image(path, "transposed"),
                                  to_model_input(image.transpose(Image.Transpose.TRANSPOSE)))
    np.testing.assert_array_equal(load_image(path, "transposed+both"),
                                  to_model_input(image.transpose(Image.Transpose.TRANSVERSE)))


