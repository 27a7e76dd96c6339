"""The explanation overlay: a CAM becomes an RGBA PNG at the image's size, hottest where the model looked."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from services.core.heatmap import MAX_ALPHA, normalise_cam, overlay_png


def test_cam_is_relu_then_scaled_to_one() -> None:
    cam = np.array([[-2.0, 0.0], [1.0, 4.0]])
    assert normalise_cam(cam).tolist() == [[0.0, 0.0], [0.25, 1.0]]


def test_all_negative_or_flat_cam_gives_no_highlight() -> None:
    assert not normalise_cam(np.full((7, 7), -3.0)).any()
    assert not normalise_cam(np.zeros((7, 7))).any()


def test_overlay_is_an_rgba_png_at_the_requested_size() -> None:
    png = overlay_png(np.random.default_rng(1).random((7, 7)), (300, 200))
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    assert image.mode == "RGBA"
    assert image.size == (300, 200)


def test_hot_region_is_red_and_opaque_and_cold_region_transparent() -> None:
    cam = np.zeros((7, 7))
    cam[0, 0] = 1.0   # the model looked at the top-left corner only
    image = np.asarray(Image.open(io.BytesIO(overlay_png(cam, (700, 700)))))
    red, green, blue, alpha = image[5, 5]
    assert red > 200 and green < 80 and blue < 80
    assert alpha == round(MAX_ALPHA * 255)
    assert image[690, 690, 3] == 0   # bottom-right: transparent


def test_overlay_of_a_large_image_is_capped_at_512_px_with_its_aspect_ratio() -> None:
    from services.core.heatmap import overlay_size

    assert overlay_size((2048, 2048)) == (512, 512)
    assert overlay_size((3000, 1500)) == (512, 256)
    assert overlay_size((1024, 4096)) == (128, 512)
    assert overlay_size((320, 256)) == (320, 256)   # small images keep their size


def test_any_cam_grid_becomes_an_overlay_hot_where_the_grid_is() -> None:
    # e.g. the 75x100 skin CNN's 18x25 grid, or a 2x2 one: the overlay is at the image's size and
    # the hot cell stays at its place (here the right-most column, mid-height).
    for rows, columns in ((18, 25), (9, 9), (2, 2)):
        cam = np.zeros((rows, columns))
        cam[rows // 2, columns - 1] = 1.0
        image = np.asarray(Image.open(io.BytesIO(overlay_png(cam, (400, 300)))))
        assert image.shape == (300, 400, 4)
        hottest_row, hottest_column = np.unravel_index(np.argmax(image[..., 3]), image.shape[:2])
        assert abs(hottest_row / 300 - (rows // 2 + 0.5) / rows) < 0.6 / rows
        assert hottest_column / 400 > 1 - 1.0 / columns
