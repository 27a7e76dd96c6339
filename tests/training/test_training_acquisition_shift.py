"""training.experiments.acquisition_shift: the views its test-time augmentation averages."""

from __future__ import annotations

from PIL import Image

from training.experiments.acquisition_shift import ZOOMS, zoom_views


def test_zoom_views_are_the_image_and_its_centred_crops():
    image = Image.new("L", (200, 100))
    image.putpixel((100, 50), 255)           # the centre stays in every view

    views = zoom_views(image)

    assert len(views) == len(ZOOMS) and ZOOMS[0] == 1.0
    assert [view.size for view in views] == [(200, 100), (180, 90), (160, 80)]
    assert views[0].tobytes() == image.tobytes()
    for view in views:
        assert view.getpixel((view.width // 2, view.height // 2)) == 255
