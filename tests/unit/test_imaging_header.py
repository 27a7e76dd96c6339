"""The gateway's upload check: inspect_image refuses what it can from the header alone, decoding no pixels."""

from __future__ import annotations

import pytest
from PIL import Image

from services.core.errors import InvalidImage, UnsupportedMediaType
from services.core.imaging import DICOM, JPEG, PNG, ImageLimits, inspect_image, read_image
from tests.unit.test_imaging import encode, gradient_rgb, make_dicom, ramp


def test_header_gives_the_sniffed_type_and_stored_size() -> None:
    header = inspect_image(encode(gradient_rgb(300, 200), "PNG"), "application/octet-stream")
    assert (header.media_type, header.width, header.height) == (PNG, 300, 200)
    assert inspect_image(encode(gradient_rgb(64, 48), "JPEG")).media_type == JPEG
    dicom = inspect_image(make_dicom(ramp(80, 60)))
    assert (dicom.media_type, dicom.width, dicom.height) == (DICOM, 60, 80)


def test_header_refuses_what_read_image_refuses_before_decoding() -> None:
    with pytest.raises(UnsupportedMediaType, match="GIF"):
        inspect_image(b"GIF89a" + b"\x00" * 64)
    with pytest.raises(InvalidImage, match="header cannot be read"):
        inspect_image(encode(gradient_rgb(256, 256), "JPEG")[:300])
    with pytest.raises(InvalidImage, match="each side must be at least 32"):
        inspect_image(encode(gradient_rgb(20, 20), "PNG"))
    with pytest.raises(InvalidImage, match="largest accepted is 100 bytes"):
        inspect_image(encode(gradient_rgb(), "PNG"), limits=ImageLimits(max_bytes=100))
    with pytest.raises(InvalidImage, match="10000x10000 pixels"):
        inspect_image(encode(Image.new("L", (10000, 10000)), "PNG"))
    with pytest.raises(InvalidImage, match="no pixel data"):
        inspect_image(make_dicom(ramp(), with_pixels=False))


def test_corrupt_pixel_data_pass_the_header_and_are_refused_when_decoded() -> None:
    data = encode(gradient_rgb(256, 256), "JPEG")
    cut = data[: len(data) // 2]
    assert inspect_image(cut).width == 256
    with pytest.raises(InvalidImage, match="truncated or corrupt"):
        read_image(cut)
