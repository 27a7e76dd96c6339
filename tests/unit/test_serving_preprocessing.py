"""How a model service turns an upload into model input: the JPEG draft scale, and the resize."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from services.core.imaging import read_image
from services.core.preprocessing import draft_size_for, scale, to_model_input
from tests.support import jpeg_bytes, synthetic_image


@pytest.mark.parametrize(
    ("stored", "decoded"),
    [
        ((1792, 1792), (448, 448)),     # 1/4 lands exactly on twice the 224 input
        ((1791, 1791), (896, 896)),     # 1/4 would be 448 minus a pixel: 1/2 instead
        ((2000, 900), (1000, 450)),     # the shorter side decides
        ((3600, 3600), (450, 450)),     # 1/8, the smallest scale JPEG offers
        ((600, 500), (600, 500)),       # under twice the input: decoded as stored
    ],
)
def test_the_service_draft_decodes_a_jpeg_to_the_smallest_scale_at_least_twice_the_input(
    stored: tuple[int, int], decoded: tuple[int, int]
) -> None:
    upload = jpeg_bytes(synthetic_image("chest_xray", stored))
    result = read_image(upload, None, draft_size=draft_size_for((224, 224)))
    assert result.image.size == decoded
    assert (result.width, result.height) == stored        # heatmaps are still drawn at the upload's size
    assert decoded[0] >= min(stored[0], 448) and decoded[1] >= min(stored[1], 448)


def test_the_draft_size_follows_the_models_own_input_size() -> None:
    assert draft_size_for((150, 150)) == (300, 300)
    assert draft_size_for((224, 160)) == (448, 320)


@pytest.mark.parametrize("size", [(512, 512), (300, 260), (224, 224)])
def test_a_grayscale_image_gives_exactly_the_input_of_its_rgb_copy(size: tuple[int, int]) -> None:
    # Grayscale images are resized before their channel is replicated (a third of the work);
    # the model must see the same numbers as if they had been converted to RGB first.
    gray = synthetic_image("bone_xray", size, seed=5)
    assert gray.mode == "L"
    np.testing.assert_array_equal(to_model_input(gray), to_model_input(gray.convert("RGB")))


def test_model_input_is_224_square_rgb_scaled_to_minus_one_one() -> None:
    array = to_model_input(Image.new("L", (640, 480), 255))
    assert array.shape == (224, 224, 3) and array.dtype == np.float32
    assert array.min() == array.max() == 1.0


def test_every_pixel_value_scales_to_exactly_x_over_127_5_minus_one_in_float32() -> None:
    # Training and serving share this scaling: its float32 values must not drift by an ulp.
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    expected = pixels.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    scaled = scale(pixels)
    assert scaled.dtype == np.float32 and scaled[0, 0] == -1.0 and scaled[-1, -1] == 1.0
    np.testing.assert_array_equal(scaled, expected)
