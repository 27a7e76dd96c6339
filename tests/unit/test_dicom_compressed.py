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

from services.core.errors import InvalidImage
from services.core.imaging import DICOM, decode_image, inspect_image, read_image


def bundled_path(name: str) -> str:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom does not bundle {name}")
    return path


def bundled(name: str) -> bytes:
    return Path(bundled_path(name)).read_bytes()


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
    tags = inspect_image(bundled("CT_small.dcm")).routing_tags
    assert tags == {"Modality": "CT"}


def with_header(name: str, **changes: object) -> bytes:
    """A bundled file whose header elements are changed, its pixel data kept as they are."""
    import io

    import pydicom

    dataset = pydicom.dcmread(bundled_path(name))
    for keyword, value in changes.items():
        setattr(dataset, keyword, value)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@needs_pylibjpeg
@pytest.mark.parametrize(
    ("name", "words"),
    [("MR_small_jp2klossless.dcm", "header says 32x32 pixels but its compressed image data is 64x64"),
     ("MR_small_jpeg_ls_lossless.dcm", "header says 32x32 pixels but its compressed image data is 64x64"),
     ("JPGExtended.dcm", "header says 32x32 pixels but its compressed image data is 256x1024"),
     ("MR_small_RLE.dcm", "decodes to more than the 1024 pixels its header declares"),
     ("SC_rgb_rle.dcm", "decodes to more than the 1024 pixels its header declares")],
)
def test_a_compressed_frame_larger_than_its_header_says_is_refused_before_decoding(name: str, words: str) -> None:
    """Every limit and the pixel budget count Rows x Columns, while a decoder produces what the
    codestream declares: a 2 kB JPEG 2000 DICOM saying 64x64 held 30000x30000 (4.4 GB to decode)."""
    with pytest.raises(InvalidImage, match=words):
        read_image(with_header(name, Rows=32, Columns=32))


def test_a_deflated_dicom_is_refused_before_it_is_inflated() -> None:
    """pydicom inflates a deflated dataset whole with no limit: 1 MB of deflated zeros took 2 GB."""
    with pytest.raises(InvalidImage, match="Deflated Explicit VR Little Endian .* not accepted"):
        inspect_image(bundled("image_dfl.dcm"))


def test_an_rle_frame_padded_with_no_operation_runs_is_refused_without_walking_them_all() -> None:
    """Each no-op (-128) header costs a step and produces nothing: 19 MB of them took seconds."""
    import io

    import pydicom
    from pydicom.encaps import encapsulate

    dataset = pydicom.dcmread(bundled_path("MR_small_RLE.dcm"))   # 64x64, 16-bit: two segments
    segment = b"\x80" * 1_000_000
    header = (2).to_bytes(4, "little") + (64).to_bytes(4, "little") + (64 + len(segment)).to_bytes(4, "little")
    dataset.PixelData = encapsulate([header + b"\x00" * 52 + segment + segment])
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    with pytest.raises(InvalidImage, match="no-operation runs"):
        read_image(buffer.getvalue())
