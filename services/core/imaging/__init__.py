"""Uploaded bytes -> PIL image, for JPEG, PNG and DICOM, in two steps that open the file once.

`inspect_image` sniffs the real type (sniffing.py), walks the structure and reads the header of its
format (jpeg.py, png.py and raster.py through Pillow; dicom.py through pydicom), and checks it
against the limits, decoding no pixels: a small file that declares a huge image (a decompression
bomb) is refused without allocating it. `decode` continues from the file the inspection opened, so
nothing is parsed twice. `read_image` does both.

Stays free of gRPC and ONNX Runtime imports: the gateway and training use it too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from services.core.imaging import dicom, raster
from services.core.imaging.dicom import MAX_DICOM_READS
from services.core.imaging.jpeg import (
    MAX_JPEG_APP13_SEGMENTS,
    MAX_JPEG_HEADER_JUNK_BYTES,
    MAX_JPEG_HEADER_SEGMENTS,
    MAX_JPEG_LATER_SEGMENTS,
    MAX_JPEG_SCANS,
)
from services.core.imaging.limits import ImageLimits, check_size
from services.core.imaging.sniffing import (
    DICOM,
    JPEG,
    PNG,
    SUPPORTED_MEDIA_TYPES,
    checked_media_type,
    sniff_media_type,
)

__all__ = [
    "DICOM", "JPEG", "PNG", "SUPPORTED_MEDIA_TYPES", "MAX_DICOM_READS", "MAX_JPEG_APP13_SEGMENTS",
    "MAX_JPEG_HEADER_JUNK_BYTES", "MAX_JPEG_HEADER_SEGMENTS", "MAX_JPEG_LATER_SEGMENTS", "MAX_JPEG_SCANS",
    "DecodedImage", "ImageLimits", "Inspection", "decode", "decode_image", "inspect_image", "read_image",
    "sniff_media_type",
]


class _Opened:
    """The upload as its format's reader left it after the header (a Pillow image not loaded yet, or
    a parsed pydicom dataset), handed to decode once: a Pillow image cannot be decoded twice."""

    def __init__(self, reader: Any, limits: ImageLimits) -> None:
        self._reader = reader
        self.limits = limits

    def take(self) -> Any:
        reader, self._reader = self._reader, None
        if reader is None:
            raise RuntimeError("this inspection was decoded already; inspect the upload again")
        return reader


@dataclass(frozen=True)
class Inspection:
    """What the header says, and the opened file `decode` continues from."""

    media_type: str           # the sniffed type
    width: int                # as stored (before any EXIF rotation)
    height: int
    # a JPEG libjpeg buffers whole: several scans, progressive, or a first scan without every component
    multi_scan: bool = False
    # DICOM Modality and BodyPartExamined when present, for routing (no patient-identifying tag); else {}
    routing_tags: Mapping[str, str] = field(default_factory=dict)
    opened: _Opened | None = field(default=None, repr=False, compare=False)

    def pixels_to_decode(self, draft_size: tuple[int, int] | None = None) -> int:
        """About how many pixels decode(..., draft_size) holds for this upload. A baseline JPEG
        decodes at the DCT scale Pillow's draft picks (1/2, 1/4 or 1/8 a side, never below
        draft_size: a 64 M pixel one took 7 MiB at 1/8); a JPEG of several scans (progressive, or
        one component per scan) keeps every coefficient of the whole image until its last scan
        (190 MiB for the same image, progressive), so it counts whole."""
        if self.media_type != JPEG or self.multi_scan or draft_size is None:
            return self.width * self.height
        fits = min(self.width // draft_size[0], self.height // draft_size[1])
        scale = next((candidate for candidate in (8, 4, 2) if fits >= candidate), 1)
        return -(-self.width // scale) * -(-self.height // scale)


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image        # "RGB" or "L"; may be smaller than the original (JPEG draft decoding)
    media_type: str           # the sniffed type
    width: int                # the original image size, which heatmaps are drawn at
    height: int


def inspect_image(
    data: bytes, media_type: str | None = None, limits: ImageLimits = ImageLimits()
) -> Inspection:
    """Check an upload as far as its header allows, without decoding pixels.

    Catches wrong types, unreadable headers, sizes out of limits and DICOM transfer syntaxes that
    cannot be decoded. Pixel data cut short or corrupt are only found when `decode` decodes them.
    Raises InvalidImage, or its subclass UnsupportedMediaType, with a message a user can act on.
    """
    sniffed = checked_media_type(data, media_type, limits)
    if sniffed == DICOM:
        dataset, width, height, tags = dicom.open_dicom(data, limits)
        return Inspection(sniffed, width, height, routing_tags=tags, opened=_Opened(dataset, limits))
    image, decodes_whole = raster.open_raster(data, sniffed, limits)
    width, height = image.size
    check_size(width, height, limits)
    return Inspection(sniffed, width, height, multi_scan=decodes_whole, opened=_Opened(image, limits))


def decode(inspection: Inspection, draft_size: tuple[int, int] | None = None) -> DecodedImage:
    """Decode the pixels of an upload `inspect_image` opened, once.

    `draft_size` lets a large JPEG decode at a reduced scale that is still at least this size,
    which is much faster and uses less memory when the model only needs 224x224.
    Raises InvalidImage for pixel data that are truncated or corrupt.
    """
    if inspection.opened is None:
        raise ValueError("decode takes an Inspection that inspect_image returned")
    limits, reader = inspection.opened.limits, inspection.opened.take()
    if inspection.media_type == DICOM:
        image = dicom.decode_dicom(reader, inspection.width, inspection.height)
        width, height = image.size
    else:
        image, (width, height) = raster.decode_raster(reader, inspection.media_type, limits, draft_size)
    return DecodedImage(image=image, media_type=inspection.media_type, width=width, height=height)


def read_image(
    data: bytes,
    media_type: str | None = None,
    limits: ImageLimits = ImageLimits(),
    draft_size: tuple[int, int] | None = None,
) -> DecodedImage:
    """inspect_image, then decode: an upload checked against `limits` and decoded."""
    return decode(inspect_image(data, media_type, limits), draft_size)


def decode_image(
    data: bytes,
    media_type: str | None = None,
    limits: ImageLimits = ImageLimits(),
    draft_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Like read_image, returning only the PIL image ("RGB" or "L")."""
    return read_image(data, media_type, limits, draft_size).image
