"""Uploaded bytes -> PIL image, for JPEG, PNG and DICOM.

The real type is sniffed from the bytes (magic numbers); a declared media type is only used to
refuse types we do not accept, never to pick a decoder, because names and extensions lie.
Limits are checked before pixel data are decoded, so a small file that declares a huge image
(a decompression bomb) is refused without allocating it.

Stays free of gRPC and ONNX Runtime imports: the gateway and training may use it too.
"""

from __future__ import annotations

import io
import itertools
import math
import re
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from services.core.errors import InvalidImage, UnsupportedMediaType

JPEG = "image/jpeg"
PNG = "image/png"
DICOM = "application/dicom"
SUPPORTED_MEDIA_TYPES: tuple[str, ...] = (JPEG, PNG, DICOM)

# Declared types that say nothing about the content; we sniff instead.
_UNSPECIFIC_MEDIA_TYPES = {"", "application/octet-stream", "binary/octet-stream"}
_MEDIA_TYPE_ALIASES = {
    "image/jpg": JPEG, "image/pjpeg": JPEG, "image/x-png": PNG,
    "application/dicom+file": DICOM, "image/dicom": DICOM, "image/x-dicom": DICOM,
}

# Formats people commonly upload that we recognise only to say clearly that they are not accepted.
_OTHER_IMAGE_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
)

_ACCEPTED = "send a JPEG, PNG or DICOM image"
_EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the transpose that displays it upright (the table ImageOps.exif_transpose
# uses; called directly because exif_transpose also rewrites the EXIF block, which fails on junk).
_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclass(frozen=True)
class ImageLimits:
    """What an upload may be. Defaults match the serving settings' defaults."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 64_000_000   # width x height (x frames are never decoded beyond the first)
    min_side: int = 32


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image        # "RGB" or "L"; may be smaller than the original (JPEG draft decoding)
    media_type: str           # the sniffed type
    width: int                # the original image size, which heatmaps are drawn at
    height: int


def sniff_media_type(data: bytes) -> str | None:
    """Return the supported media type the bytes really are, or None."""
    if data.startswith(b"\xff\xd8\xff"):
        return JPEG
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if len(data) >= 132 and data[128:132] == b"DICM":
        return DICOM
    return None


def read_image(
    data: bytes,
    media_type: str | None = None,
    limits: ImageLimits = ImageLimits(),
    draft_size: tuple[int, int] | None = None,
) -> DecodedImage:
    """Decode an upload, checking it against `limits`.

    `draft_size` lets a large JPEG decode at a reduced scale that is still at least this size,
    which is much faster and uses less memory when the model only needs 224x224.
    Raises InvalidImage or UnsupportedMediaType with a message a user can act on.
    """
    sniffed = _checked_media_type(data, media_type, limits)
    if sniffed == DICOM:
        image = _read_dicom(data, limits)
        width, height = image.size
    else:
        image, (width, height) = _read_raster(data, sniffed, limits, draft_size)
    return DecodedImage(image=image, media_type=sniffed, width=width, height=height)


@dataclass(frozen=True)
class ImageHeader:
    media_type: str           # the sniffed type
    width: int                # as stored (before any EXIF rotation)
    height: int
    # a JPEG libjpeg buffers whole: several scans, progressive, or a first scan without every component
    multi_scan: bool = False

    def pixels_to_decode(self, draft_size: tuple[int, int] | None = None) -> int:
        """About how many pixels read_image(..., draft_size) holds for this upload. A baseline JPEG
        decodes at the DCT scale Pillow's draft picks (1/2, 1/4 or 1/8 a side, never below
        draft_size: a 64 M pixel one took 7 MiB at 1/8); a JPEG of several scans (progressive, or
        one component per scan) keeps every coefficient of the whole image until its last scan
        (190 MiB for the same image, progressive), so it counts whole."""
        if self.media_type != JPEG or self.multi_scan or draft_size is None:
            return self.width * self.height
        fits = min(self.width // draft_size[0], self.height // draft_size[1])
        scale = next((candidate for candidate in (8, 4, 2) if fits >= candidate), 1)
        return -(-self.width // scale) * -(-self.height // scale)


def read_header(data: bytes, media_type: str | None = None, limits: ImageLimits = ImageLimits()) -> ImageHeader:
    """Check an upload as far as its header allows, without decoding pixels (a few milliseconds less
    than read_image per upload, and no image-sized allocation).

    Catches wrong types, unreadable headers, sizes out of limits and DICOM transfer syntaxes that
    cannot be decoded. Pixel data cut short or corrupt are only found when read_image decodes them.
    Raises InvalidImage or UnsupportedMediaType like read_image.
    """
    sniffed = _checked_media_type(data, media_type, limits)
    if sniffed == DICOM:
        width, height = _check_dicom_header(data, limits)
    else:
        image, decodes_whole = _open_raster(data, sniffed, limits)
        width, height = image.size
        _check_size(width, height, limits)
        return ImageHeader(media_type=sniffed, width=width, height=height, multi_scan=decodes_whole)
    return ImageHeader(media_type=sniffed, width=width, height=height)


def _checked_media_type(data: bytes, media_type: str | None, limits: ImageLimits) -> str:
    """The sniffed, supported media type of `data` within the byte limit; raises otherwise."""
    if not data:
        raise InvalidImage("the image is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise InvalidImage(
            f"the image is {len(data)} bytes; the largest accepted is {limits.max_bytes} bytes"
        )
    declared = _normalise_media_type(media_type)
    if declared not in _UNSPECIFIC_MEDIA_TYPES and declared not in SUPPORTED_MEDIA_TYPES:
        raise UnsupportedMediaType(f"unsupported media type {declared!r}; {_ACCEPTED}")

    sniffed = sniff_media_type(data)
    if sniffed is None:
        for magic, name in _OTHER_IMAGE_MAGIC:
            if data.startswith(magic):
                raise UnsupportedMediaType(f"unsupported media type: the file is a {name} image; {_ACCEPTED}")
        if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
            raise UnsupportedMediaType(f"unsupported media type: the file is a WebP image; {_ACCEPTED}")
        raise UnsupportedMediaType(
            f"unsupported media type: the file is not a JPEG, PNG or DICOM image; {_ACCEPTED}"
        )
    return sniffed


def decode_image(
    data: bytes,
    media_type: str | None = None,
    limits: ImageLimits = ImageLimits(),
    draft_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Like read_image, returning only the PIL image ("RGB" or "L")."""
    return read_image(data, media_type, limits, draft_size).image


def dicom_routing_tags(data: bytes) -> dict[str, str]:
    """Modality and BodyPartExamined of a DICOM upload, for routing; {} when not DICOM.

    Reads the header only and returns no patient-identifying tags. Raises InvalidImage if the
    DICOM header cannot be parsed at all.
    """
    if sniff_media_type(data) != DICOM:
        return {}
    dataset = _parse_dicom(data, stop_before_pixels=True)
    tags = {}
    for keyword in ("Modality", "BodyPartExamined"):
        try:
            value = dataset.get(keyword)
            text = str(value).strip() if value else ""
        except Exception:  # a malformed element (pydicom parses lazily): treat the tag as absent
            text = ""
        if text:
            tags[keyword] = text
    return tags


def _normalise_media_type(media_type: str | None) -> str:
    value = (media_type or "").split(";", 1)[0].strip().lower()
    return _MEDIA_TYPE_ALIASES.get(value, value)


def _check_size(width: int, height: int, limits: ImageLimits) -> None:
    if width * height > limits.max_pixels:
        raise InvalidImage(
            f"the image is {width}x{height} pixels; "
            f"the largest accepted is {limits.max_pixels} pixels in total"
        )
    if min(width, height) < limits.min_side:
        raise InvalidImage(
            f"the image is {width}x{height} pixels; each side must be at least {limits.min_side} pixels"
        )


# A real JPEG has a few dozen segments before its first scan (an ICC profile split over APP2
# segments: at most 255). Pillow walks the header segment by segment in Python, so a crafted file
# of a million tiny segments would cost seconds of CPU per request; refuse it after this many.
MAX_JPEG_HEADER_SEGMENTS = 1024
# A progressive JPEG is decoded scan by scan, and every scan walks every block of its components,
# however few bytes it has: a 125 kB file of 2000 repeated empty scans of a 4000x4000 image took
# 31 s of CPU to decode here (the plain file: 0.06 s). Encoders write 6-10 scans (libjpeg's default
# progressive script), a dozen or two after scan optimisation; nvImageCodec caps scans for the same
# reason. At 64 scans the largest accepted image costs a few seconds at most.
MAX_JPEG_SCANS = 64
# Between and after the scans a real file has a few tables per scan; this walk is Python, so it is
# bounded there too.
MAX_JPEG_LATER_SEGMENTS = 1024
# Pillow parses the resource blocks of each APP13 ("Photoshop 3.0") segment in Python: 300 segments
# of empty 12-byte blocks in a 19.7 MB file took 2.96 s of CPU, measured. Photoshop writes one, or a
# few when its resources pass a segment's 64 KiB.
MAX_JPEG_APP13_SEGMENTS = 16
# Pillow steps over padding and junk between header segments one byte at a time in Python; a real
# file has none or a few bytes of it.
MAX_JPEG_HEADER_JUNK_BYTES = 64 * 1024
# A marker: 0xFF and a code that is neither a stuffed 0x00 nor another 0xFF (a fill byte; the last
# 0xFF of a run is the one that matches). libjpeg and Pillow skip other bytes between segments, so
# the walk resynchronises the same way. One 0xFF per match: a pattern like 0xFF+ would backtrack
# over long runs of fill bytes.
_JPEG_MARKER = re.compile(rb"\xff([^\x00\xff])")
# The end of a scan's entropy-coded data: a marker that is not a restart marker (RST0-7).
_END_OF_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
# Markers without a length field as each reader sees them: Pillow reads the header (before the first
# scan: JPG, RSTn, SOI, EOI and JPGn have none there, and an EOI does not end it); libjpeg the rest.
_PILLOW_LENGTHLESS = frozenset({0x01, 0xC8, *range(0xD0, 0xDA), *range(0xF0, 0xFE)})
_LIBJPEG_LENGTHLESS = frozenset({0x01, *range(0xD0, 0xDA)})


def _check_jpeg_structure(data: bytes) -> tuple[int, int]:
    """Count the segments before the first scan, the junk between them, the scans and the segments
    after; returns the number of scans and of components in the first scan. Malformed structure is
    left to Pillow."""
    offset, header_segments, header_junk, later_segments, scans, first_components = 2, 0, 0, 0, 0, 0
    photoshop_segments = 0
    while (found := _JPEG_MARKER.search(data, offset)) is not None:
        if found.group(1)[0] == 0xED:
            photoshop_segments += 1
            if photoshop_segments > MAX_JPEG_APP13_SEGMENTS:
                raise InvalidImage(
                    f"the JPEG has more than {MAX_JPEG_APP13_SEGMENTS} Photoshop (APP13) segments; "
                    "an editor writes one or a few"
                )
        if scans == 0:
            header_segments += 1
            header_junk += found.start() - offset
            if header_segments > MAX_JPEG_HEADER_SEGMENTS:
                raise InvalidImage(
                    f"the JPEG header has more than {MAX_JPEG_HEADER_SEGMENTS} segments before its image data; "
                    "a camera or scanner writes a few dozen"
                )
            if header_junk > MAX_JPEG_HEADER_JUNK_BYTES:
                raise InvalidImage(
                    f"the JPEG header has more than {MAX_JPEG_HEADER_JUNK_BYTES} bytes of padding or junk between "
                    "its segments"
                )
        else:
            later_segments += 1
            if later_segments > MAX_JPEG_LATER_SEGMENTS:
                raise InvalidImage(
                    f"the JPEG has more than {MAX_JPEG_LATER_SEGMENTS} segments after its first scan; "
                    "an encoder writes a few tables per scan"
                )
        marker, offset = found.group(1)[0], found.end()
        if marker == 0xD9 and scans:     # end of image
            return scans, first_components
        if marker in (_LIBJPEG_LENGTHLESS if scans else _PILLOW_LENGTHLESS):
            continue
        if marker == 0xDA and scans == 0 and offset + 2 < len(data):
            first_components = data[offset + 2]   # Ns, after the segment length
        offset += int.from_bytes(data[offset:offset + 2], "big")
        if marker == 0xDA:               # start of scan: its entropy-coded data runs to the next marker
            scans += 1
            if scans > MAX_JPEG_SCANS:
                raise InvalidImage(
                    f"the JPEG has more than {MAX_JPEG_SCANS} scans; a progressive encoder writes about 10, "
                    "and each scan costs a pass over the whole image"
                )
            following = _END_OF_SCAN.search(data, offset)
            if following is None:
                return scans, first_components
            offset = following.start()
    return scans, first_components


# The same for PNG: a real file has a handful of chunks before its image data (IHDR, colour and
# text chunks); Pillow reads each in Python, and after the first IDAT it walks every chunk too
# (1.65 M empty chunks in a 20 MB file took 3.75 s of CPU to decode, measured).
MAX_PNG_HEADER_CHUNKS = 1024
# Encoders write IDAT chunks of 8-64 KiB (libpng: 8 KiB, so ~2,600 in a 20 MiB file). After the
# image data come text chunks and, in an animated PNG, two chunks per further frame (fcTL, fdAT).
# At ~2.3 us a chunk, 16384 chunks cost Pillow ~40 ms.
MAX_PNG_DATA_CHUNKS = 16384
MAX_PNG_TRAILING_CHUNKS = 16384
# Pillow inflates each compressed text chunk (zTXt, iTXt) and each ICC profile (iCCP) up to 1 MB,
# before and after the image data: 63 text chunks in a 66 kB file held 63 MB, and 17,000 iCCP chunks
# in 18 MB took 18 s of CPU, measured. Real files carry none or one or two text chunks, and the
# format allows one profile.
MAX_PNG_COMPRESSED_CHUNKS = 8


def _itxt_is_compressed(data: bytes, offset: int) -> bool:
    """An iTXt chunk's compression flag: the byte after its keyword's NUL (keywords are 1-79 bytes)."""
    payload = data[offset + 8:offset + 8 + 81]
    keyword_end = payload.find(b"\x00")
    return 0 <= keyword_end < len(payload) - 1 and payload[keyword_end + 1] == 1


def _check_png_chunks(data: bytes) -> None:
    """Count the chunks before, among and after the image data, and the compressed ones (text and
    ICC profiles); malformed structure is left to Pillow."""
    offset, header, image_data, trailing, compressed = 8, 0, 0, 0, 0
    while offset + 8 <= len(data):
        kind = data[offset + 4:offset + 8]
        if kind == b"IEND":
            return
        if kind == b"IDAT":
            image_data += 1
            if image_data > MAX_PNG_DATA_CHUNKS:
                raise InvalidImage(
                    f"the PNG has more than {MAX_PNG_DATA_CHUNKS} image data chunks; an encoder writes "
                    "chunks of 8 KiB or more"
                )
        elif image_data == 0:
            header += 1
            if header > MAX_PNG_HEADER_CHUNKS:
                raise InvalidImage(
                    f"the PNG header has more than {MAX_PNG_HEADER_CHUNKS} chunks before its image data; "
                    "an imaging program writes a handful"
                )
        else:
            trailing += 1
            if trailing > MAX_PNG_TRAILING_CHUNKS:
                raise InvalidImage(
                    f"the PNG has more than {MAX_PNG_TRAILING_CHUNKS} chunks after its image data"
                )
        if kind in (b"zTXt", b"iCCP") or (kind == b"iTXt" and _itxt_is_compressed(data, offset)):
            compressed += 1
            if compressed > MAX_PNG_COMPRESSED_CHUNKS:
                raise InvalidImage(
                    f"the PNG has more than {MAX_PNG_COMPRESSED_CHUNKS} compressed text or ICC profile "
                    "chunks; an imaging program writes one or two"
                )
        offset += 12 + int.from_bytes(data[offset:offset + 4], "big")   # length, type, data, CRC


def _open_raster(data: bytes, media_type: str, limits: ImageLimits) -> tuple[Image.Image, bool]:
    """Open (header only, pixels not decoded yet) a JPEG or PNG; returns it and whether it decodes
    whole: a JPEG that libjpeg buffers in full (see ImageHeader.multi_scan; a PNG: False)."""
    expected_format = "JPEG" if media_type == JPEG else "PNG"
    scans, first_components = 1, 0
    if media_type == JPEG:
        scans, first_components = _check_jpeg_structure(data)
    else:
        _check_png_chunks(data)
    try:
        with warnings.catch_warnings():
            # Our own pixel limit is checked below; Pillow's global bomb check must not decide first.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[expected_format])
    except Image.DecompressionBombError:
        raise InvalidImage(
            f"the image declares too many pixels; the largest accepted is {limits.max_pixels} pixels in total"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise InvalidImage(
            f"the file starts like a {expected_format} image but its header cannot be read"
        ) from None
    # libjpeg keeps every coefficient of the image when the frame is progressive or its first scan
    # leaves components out, however many scans follow: a progressive file cut after its first scan
    # took as much memory as the whole one (401 MB for 8000x8000), measured.
    progressive = bool(image.info.get("progressive") or image.info.get("progression"))
    partial_first_scan = 0 < first_components < len(image.getbands())
    decodes_whole = media_type == JPEG and (scans > 1 or progressive or partial_first_scan)
    return image, decodes_whole


def _read_raster(
    data: bytes, media_type: str, limits: ImageLimits, draft_size: tuple[int, int] | None
) -> tuple[Image.Image, tuple[int, int]]:
    expected_format = "JPEG" if media_type == JPEG else "PNG"
    image, _ = _open_raster(data, media_type, limits)
    original_size = image.size
    _check_size(*original_size, limits)
    if media_type == JPEG and draft_size is not None:
        # DCT-domain downscaling by 1/2, 1/4 or 1/8, never below draft_size.
        image.draft(image.mode if image.mode in ("RGB", "L") else None, draft_size)
    try:
        image.load()
    except Image.DecompressionBombError:
        raise InvalidImage(
            f"the image declares too many pixels; the largest accepted is {limits.max_pixels} pixels in total"
        ) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise InvalidImage(f"the {expected_format} image is truncated or corrupt ({error})") from None
    # Camera photos (skin lesions) may be stored sideways with an EXIF orientation tag; turn them
    # the way a browser displays them, so the heatmap lines up with what the user sees.
    try:
        orientation = int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # a broken EXIF block must not cost the image: show it as stored
        orientation = 1
    if orientation in _EXIF_TRANSPOSE:
        image = image.transpose(_EXIF_TRANSPOSE[orientation])
        if orientation in (5, 6, 7, 8):
            original_size = original_size[::-1]
    return _to_rgb_or_l(image), original_size


def _to_rgb_or_l(image: Image.Image) -> Image.Image:
    if image.mode in ("RGB", "L"):
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grayscale PNG (common for radiographs): stretch to 8 bits rather than clip.
        array = np.asarray(image)
        if array.dtype.kind == "i" and array.min() >= 0 and array.max() <= 65535:
            array = array.astype(np.uint16)   # Pillow's "I" mode: int32 holding 16-bit values
        return Image.fromarray(_scale_to_uint8(array, float(array.min()), float(array.max())), mode="L")
    if image.mode in ("LA", "La"):
        return image.convert("L")
    # P, RGBA, CMYK, YCbCr, 1: let Pillow convert; transparency is dropped.
    return image.convert("RGB")


# Deflated Explicit VR Little Endian: pydicom inflates the whole dataset in one zlib call with no
# size limit before anything can be checked (a 1 MB upload of deflated zeros took 7 s and 2 GB,
# measured). Image archives practically never send it; it is refused up front. A UID is an exact
# string, so finding it anywhere in the file is a safe (at worst over-careful) test.
_DEFLATED_UID = b"1.2.840.10008.1.2.1.99"


# pydicom builds a Python object per data element, and a 20 MB upload holds 2.4 M empty ones: 8 s of
# CPU and 750 MB per parse, measured. It reads every element through one or two read() calls of the
# file object (a sequence's items too), so counting calls bounds the elements it parses. pydicom's
# 78 bundled test files take 116 reads (median) and at most 3,597 (an ECG waveform); an enhanced
# multi-frame image, ~40 per frame; encapsulated pixel data, one per 8 KiB. A file of 100,000
# empty elements took 0.9 s of CPU to check and decode (its four parses); past the limit, under 1 s.
MAX_DICOM_READS = 100_000


class _DicomFloodError(Exception):
    pass


class _CountedReads(io.BytesIO):
    """The upload as a file that refuses read() calls past MAX_DICOM_READS."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads = 0

    def read(self, size: int | None = -1, /) -> bytes:
        self.reads += 1
        if self.reads > MAX_DICOM_READS:
            raise _DicomFloodError
        return super().read(size)


def _parse_dicom(data: bytes, stop_before_pixels: bool = False) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    if _DEFLATED_UID in data:
        raise InvalidImage(
            "the DICOM transfer syntax Deflated Explicit VR Little Endian (1.2.840.10008.1.2.1.99) is not "
            "accepted; send uncompressed DICOM or a PNG/JPEG export"
        )
    try:
        return pydicom.dcmread(_CountedReads(data), stop_before_pixels=stop_before_pixels)
    except _DicomFloodError:
        raise InvalidImage(
            f"the DICOM file has too many data elements (pydicom gave up after {MAX_DICOM_READS} reads); "
            "a scanner writes hundreds, or tens of thousands in a multi-frame series"
        ) from None
    except InvalidDicomError as error:
        raise InvalidImage(f"the DICOM file cannot be read ({error})") from None
    except Exception as error:  # malformed input can fail inside pydicom with any exception type
        raise InvalidImage(f"the DICOM file cannot be read ({type(error).__name__}: {error})") from None


def _read_dicom(data: bytes, limits: ImageLimits) -> Image.Image:
    try:
        return _decode_dicom(data, limits)
    except InvalidImage:
        raise
    except Exception as error:
        # pydicom parses elements lazily, so a malformed file can fail on any later access with
        # any exception type (struct.error, BytesLengthException, NotImplementedError, ...).
        raise InvalidImage(f"the DICOM file is malformed ({type(error).__name__}: {error})") from None


def _check_dicom_header(data: bytes, limits: ImageLimits) -> tuple[int, int]:
    """(width, height) of a DICOM image whose header passes every check before pixel decoding."""
    try:
        return _check_dicom_dataset(_parse_dicom(data), limits)
    except InvalidImage:
        raise
    except Exception as error:   # pydicom parses lazily: see _read_dicom
        raise InvalidImage(f"the DICOM file is malformed ({type(error).__name__}: {error})") from None


def _check_dicom_dataset(dataset: Any, limits: ImageLimits) -> tuple[int, int]:
    if "PixelData" not in dataset:
        raise InvalidImage("the DICOM file has no pixel data (it is not an image)")
    try:
        rows, columns = int(dataset.Rows), int(dataset.Columns)
    except (AttributeError, TypeError, ValueError):
        raise InvalidImage("the DICOM file has pixel data but no valid Rows/Columns") from None
    _check_size(columns, rows, limits)

    transfer_syntax = dataset.file_meta.get("TransferSyntaxUID")
    if not _can_decode(transfer_syntax):
        name = getattr(transfer_syntax, "name", str(transfer_syntax))
        raise InvalidImage(
            f"the DICOM transfer syntax {name} ({transfer_syntax}) cannot be decoded by this service; "
            "send uncompressed DICOM or a PNG/JPEG export"
        )
    return columns, rows


def _decode_dicom(data: bytes, limits: ImageLimits) -> Image.Image:
    dataset = _parse_dicom(data)
    columns, rows = _check_dicom_dataset(dataset, limits)
    _check_first_frame_size(dataset, columns, rows)
    try:
        # index=0: decode only the first frame of a multi-frame image. as_rgb=False: YBR is turned
        # into RGB below, band by band (pydicom converts the whole image in float32 at once).
        array, decoded_as = _first_frame(dataset)
    except (ValueError, RuntimeError, AttributeError, KeyError, TypeError, EOFError,
            NotImplementedError) as error:
        raise InvalidImage(f"the DICOM pixel data cannot be decoded ({error})") from None
    if decoded_as in _YBR_FULL and array.ndim == 3 and array.shape[-1] == 3:
        _ybr_full_to_rgb_in_place(array)

    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if photometric == "PALETTE COLOR" and array.ndim == 2:
        # The stored values are indices into the red/green/blue palette tables, not grey levels.
        return Image.fromarray(_apply_palette(array, dataset), mode="RGB")
    if array.ndim == 3 and array.shape[-1] == 3:
        # Colour DICOM (e.g. dermoscopy); pydicom has already converted YBR to RGB.
        if array.dtype != np.uint8:
            array = _scale_to_uint8(array, 0.0, float(2 ** int(dataset.get("BitsStored", 16)) - 1))
        return Image.fromarray(array, mode="RGB")
    if array.ndim != 2:
        raise InvalidImage(f"the DICOM pixel data has an unexpected shape {array.shape}")

    gray = _grey_levels_of(array, dataset)
    if photometric == "MONOCHROME1":
        gray = 255 - gray   # MONOCHROME1: the lowest value is displayed white
    return Image.fromarray(gray, mode="L")


# The photometric interpretations pydicom's as_rgb turns into RGB (YBR_PARTIAL and the JPEG 2000
# YBR_ICT/RCT are left as pydicom leaves them).
_YBR_FULL = ("YBR_FULL", "YBR_FULL_422")
# pydicom converts YBR to RGB in float32 over the whole image, with temporaries: 1.6 GB of working
# memory for a 64 M pixel colour DICOM, measured (a 1 MB upload). The same conversion on bands of
# rows gives the same values in a few MB.
YBR_BAND_ROWS = 256


def _first_frame(dataset: Any) -> tuple[np.ndarray, str]:
    """The first frame's pixels as stored (YBR not turned into RGB), and their colour space: a JPEG
    decoder may have turned YBR into RGB already. What pydicom.pixels.pixel_array does, keeping the
    decoder's account of the result."""
    from pydicom import pixels
    from pydicom.pixels.utils import as_pixel_options

    transfer_syntax = getattr(dataset, "file_meta", {}).get("TransferSyntaxUID", None)
    if not transfer_syntax:
        raise AttributeError("the file meta information has no Transfer Syntax UID")
    decoder = pixels.get_decoder(transfer_syntax)
    array, decoded = decoder.as_array(dataset, index=0, validate=True, **as_pixel_options(dataset, as_rgb=False))
    return array, str(decoded.get("photometric_interpretation", ""))


def _check_first_frame_size(dataset: Any, columns: int, rows: int) -> None:
    """A compressed frame is decoded at the size its own codestream declares, not at Rows x Columns
    (which every limit and the pixel budget counted): a 2 kB JPEG 2000 DICOM saying 64x64 held a
    30000x30000 codestream and took 4.4 GB to decode, measured. Refuse a frame whose own size is not
    the header's, before decoding it; an RLE frame must not decode to more than its image needs."""
    from pydicom.encaps import get_frame

    transfer_syntax = dataset.file_meta.get("TransferSyntaxUID")
    if transfer_syntax is None or not transfer_syntax.is_encapsulated:
        return
    try:
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        frame = get_frame(dataset.PixelData, 0, number_of_frames=frames)
    except Exception as error:  # noqa: BLE001 - malformed encapsulation fails in pydicom with any type
        raise InvalidImage(f"the DICOM pixel data cannot be decoded ({error})") from None
    if transfer_syntax == "1.2.840.10008.1.2.5":    # RLE Lossless
        samples = int(dataset.get("SamplesPerPixel", 1) or 1)
        _check_rle_frame(frame, columns * rows, samples * -(-int(dataset.get("BitsAllocated", 8)) // 8))
        return
    # JPEG and JPEG-LS frames start with SOI; JPEG 2000 is a codestream (or a JP2 file holding one).
    size = _jpeg_frame_size(frame) if frame[:2] == b"\xff\xd8" else _j2k_size(frame)
    if size is None:
        return   # no size found: the decoder refuses what it cannot read
    if size != (columns, rows):
        raise InvalidImage(
            f"the DICOM header says {columns}x{rows} pixels but its compressed image data is "
            f"{size[0]}x{size[1]}; the file is inconsistent"
        )


# The JPEG frame headers (SOF) that carry the image size: baseline, extended, progressive and
# lossless (0xC0-0xCF but DHT, JPG and DAC) and JPEG-LS (0xF7).
_SOF_MARKERS = frozenset({*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC} | {0xF7})


def _jpeg_frame_size(frame: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG or JPEG-LS frame's SOF segment, or None."""
    offset = 2
    for _ in range(MAX_JPEG_HEADER_SEGMENTS):
        found = _JPEG_MARKER.search(frame, offset)
        if found is None:
            return None
        marker, offset = found.group(1)[0], found.end()
        if marker in _SOF_MARKERS and offset + 7 <= len(frame):
            height, width = int.from_bytes(frame[offset + 3:offset + 5], "big"), \
                int.from_bytes(frame[offset + 5:offset + 7], "big")
            return width, height
        if marker in _PILLOW_LENGTHLESS:
            continue
        offset += int.from_bytes(frame[offset:offset + 2], "big")
    return None


def _j2k_size(frame: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG 2000 codestream's SIZ segment (Xsiz - XOsiz, Ysiz - YOsiz), or None."""
    start = frame.find(b"\xff\x4f\xff\x51")
    if start < 0 or start + 24 > len(frame):
        return None
    siz = frame[start + 4:start + 24]      # Lsiz, Rsiz, Xsiz, Ysiz, XOsiz, YOsiz
    x, y, x_offset, y_offset = (int.from_bytes(siz[i:i + 4], "big") for i in (4, 8, 12, 16))
    return x - x_offset, y - y_offset


# PackBits' no-operation header (-128): encoders do not write it (PS3.5 G.3.1), and each costs the walk
# below a step that produces nothing, so a segment of them is refused after a few.
MAX_RLE_NO_OPS = 64


def _check_rle_frame(frame: bytes, pixels: int, segments_expected: int) -> None:
    """Walk each RLE segment's run headers (PS3.5 G.3.1: PackBits) without decoding, and refuse a
    segment that decodes to more bytes than one byte plane of the image (pydicom's decoder builds
    the whole output first: 19.9 MB of runs made 1.27 GB, measured). The walk steps run by run in
    Python, as pydicom's own decoder does, so it costs about as much as the decoding it protects."""
    if len(frame) < 64:
        raise InvalidImage("the DICOM RLE frame is shorter than its 64-byte header")
    count = int.from_bytes(frame[:4], "little")
    if not 1 <= count <= 15 or count != segments_expected:
        raise InvalidImage(f"the DICOM RLE frame has {count} segments; its header needs {segments_expected}")
    offsets = [int.from_bytes(frame[4 + 4 * i:8 + 4 * i], "little") for i in range(count)] + [len(frame)]
    limit = pixels + 1                  # a segment may be padded to an even length
    for start, end in itertools.pairwise(offsets):
        position, stop, produced, no_ops = start, min(end, len(frame)), 0, 0
        while position < stop:
            header = frame[position]
            if header < 128:            # a literal run of header + 1 bytes
                produced += header + 1
                position += header + 2
            elif header > 128:          # one byte repeated 257 - header times
                produced += 257 - header
                position += 2
            else:                       # 128: no operation
                no_ops += 1
                if no_ops > MAX_RLE_NO_OPS:
                    raise InvalidImage(
                        "the DICOM RLE data is padded with no-operation runs an encoder does not write"
                    )
                position += 1
            if produced > limit:
                raise InvalidImage(
                    f"the DICOM RLE data decodes to more than the {pixels} pixels its header declares; "
                    "the file is inconsistent"
                )


def _ybr_full_to_rgb_in_place(array: np.ndarray) -> None:
    from pydicom.pixels.processing import convert_color_space

    for start in range(0, array.shape[0], YBR_BAND_ROWS):
        band = array[start:start + YBR_BAND_ROWS]
        band[...] = convert_color_space(band, "YBR_FULL", "RGB")


def _grey_levels_of(array: np.ndarray, dataset: Any) -> np.ndarray:
    """8-bit display levels of a grey DICOM image. Integer pixels of up to 16 bits (nearly all)
    take at most 65536 distinct values: those go through the modality and VOI LUTs once, and each
    pixel is looked up, so a 64 M pixel image costs ~7 bytes per pixel instead of float images."""
    if array.dtype.kind in "ui" and array.dtype.itemsize <= 2:
        base = int(array.min())
        index = array - base if array.dtype.kind == "u" else array.astype(np.int32) - base
        levels = np.arange(base, int(array.max()) + 1).astype(array.dtype)
        present = np.zeros(len(levels), dtype=bool)
        present[index] = True
        return _display_levels(levels, dataset, present)[index]
    return _display_levels(array, dataset, None)


def _display_levels(stored: np.ndarray, dataset: Any, present: np.ndarray | None) -> np.ndarray:
    """Stored values -> 8-bit levels; the value range (when no window sets it) is taken over the
    entries `present` marks (the levels that occur in the image), or over all of them."""
    from pydicom import pixels

    def occurring(values: np.ndarray) -> np.ndarray:
        return values if present is None else values[present]

    # Modality LUT (rescale slope/intercept) first, then the VOI LUT or window, as a viewer does.
    try:
        values = pixels.apply_modality_lut(stored, dataset)
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as error:
        raise InvalidImage(f"the DICOM rescale / modality LUT cannot be applied ({error})") from None
    low, high = float(occurring(values).min()), float(occurring(values).max())
    if not (math.isfinite(low) and math.isfinite(high)):
        raise InvalidImage("the DICOM rescale slope / intercept give values that are not finite numbers")
    if "WindowCenter" in dataset or "VOILUTSequence" in dataset:
        try:
            windowed = pixels.apply_voi_lut(values, dataset, index=0)
            # The window's own output range (what a viewer maps to black..white), so an image
            # that does not fill its window keeps the contrast the window asks for.
            window_low, window_high = _voi_output_range(occurring(windowed), dataset)
            if not (math.isfinite(window_low) and math.isfinite(window_high)
                    and np.isfinite(windowed).all()):
                raise ValueError("the window is not finite numbers")
            low, high, values = window_low, window_high, windowed
        except (ValueError, AttributeError, KeyError, TypeError, IndexError, NotImplementedError):
            pass  # a malformed window or LUT: show the full value range instead of refusing the image
    return _scale_to_uint8(values, low, high)


def _apply_palette(indices: np.ndarray, dataset: Any) -> np.ndarray:
    """PALETTE COLOR indices -> 8-bit RGB through the dataset's own palette tables (pydicom's LUT
    code, which handles the first mapped value, segmented tables and 8- or 16-bit entries)."""
    from pydicom import pixels

    try:
        colours = pixels.apply_color_lut(indices, dataset)
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as error:
        raise InvalidImage(f"the DICOM palette colour lookup table cannot be applied ({error})") from None
    rgb = colours[..., :3]   # an alpha table, if any, is dropped like PNG transparency
    if rgb.dtype == np.uint8:
        return np.ascontiguousarray(rgb)
    # 16-bit entries span 0..65535.
    return _scale_to_uint8(rgb, 0.0, float(np.iinfo(rgb.dtype).max))


def _can_decode(transfer_syntax: Any) -> bool:
    from pydicom import pixels

    if transfer_syntax is None:
        return True   # pydicom falls back to the implicit-VR little-endian default
    try:
        return bool(pixels.get_decoder(transfer_syntax).is_available)
    except (NotImplementedError, ValueError):
        return False


def _voi_output_range(values: np.ndarray, dataset: Any) -> tuple[float, float]:
    from pydicom import pixels

    if "VOILUTSequence" in dataset or "WindowCenter" not in dataset:
        # pydicom applied the VOI LUT (it wins over a window in the same header, as in a viewer):
        # its output is clamped to the table's entries.
        return float(values.min()), float(values.max())
    extremes = np.array([-1e12, 1e12], dtype=np.float64)
    low, high = (float(v) for v in pixels.apply_voi_lut(extremes, dataset, index=0))
    return min(low, high), max(low, high)


def _scale_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map low..high linearly onto 0..255. One float32 working copy, changed in place: a 64 M pixel
    image must fit a model pod's memory (float64 with temporaries cost ~32 bytes per pixel)."""
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    if values.dtype == np.uint8 and low == 0 and high == 255:
        return values
    if values.dtype in (np.uint8, np.uint16) and values.ndim >= 2:
        # Integer pixels: scale the 256 or 65536 possible values once and look each pixel up.
        levels = np.arange(np.iinfo(values.dtype).max + 1, dtype=np.float32)
        return _scale_to_uint8(levels, low, high)[values]
    scaled = values.astype(np.float32)
    scaled -= np.float32(low)
    scaled *= np.float32(255.0 / (high - low))
    np.rint(scaled, out=scaled)
    np.clip(scaled, 0, 255, out=scaled)
    return scaled.astype(np.uint8)
