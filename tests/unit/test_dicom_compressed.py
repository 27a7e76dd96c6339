"""Compressed DICOM: what pydicom + pylibjpeg decode is accepted (the undecodable rest is refused
naming its transfer syntax: tests/unit/test_imaging.py).

Uses the small files pydicom bundles (no download). Lossless encodings must decode to exactly the
pixels of the uncompressed original.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from services.core.imaging import DICOM, decode_image, dicom_routing_tags, read_image


def bundled(name: str) -> bytes:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom does not bundle {name}")
    return Path(path).read_bytes()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(decode_image(data))


needs_pylibjpeg = pytest.mark.skipif(
    importlib.util.find_spec("libjpeg") is None or importlib.util.find_spec("openjpeg") is None,
    reason="pylibjpeg-libjpeg / pylibjpeg-openjpeg (serving extra) are not installed",
)


@needs_pylibjpeg
@pytest.mark.parametrize(
    "name",
    ["MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm", "MR_small_implicit.dcm",
     "MR_small_bigendian.dcm"],
)
def test_lossless_encodings_decode_to_exactly_the_uncompressed_pixels(name: str) -> None:
    assert np.array_equal(pixels(bundled(name)), pixels(bundled("MR_small.dcm")))


@needs_pylibjpeg
@pytest.mark.parametrize(
    ("name", "mode"),
    [("JPEG2000.dcm", "L"), ("JPGExtended.dcm", "L"), ("SC_rgb_jpeg_dcmtk.dcm", "RGB"), ("SC_rgb_rle.dcm", "RGB")],
)
def test_lossy_and_colour_encodings_decode(name: str, mode: str) -> None:
    decoded = read_image(bundled(name), None)
    assert decoded.media_type == DICOM and decoded.image.mode == mode
    assert np.asarray(decoded.image).std() > 0   # not a blank image


def test_a_ct_slice_keeps_its_routing_tags_and_no_patient_tags() -> None:
    tags = dicom_routing_tags(bundled("CT_small.dcm"))
    assert tags == {"Modality": "CT"}
