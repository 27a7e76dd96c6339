"""Which supported type the bytes really are (magic numbers), and the refusals that need no parsing.

A declared media type is only used to refuse types we do not accept, never to pick a decoder,
because names and extensions lie.
"""

from __future__ import annotations

from services.core.errors import InvalidImage, UnsupportedMediaType
from services.core.imaging.limits import ImageLimits

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


def sniff_media_type(data: bytes) -> str | None:
    """Return the supported media type the bytes really are, or None."""
    if data.startswith(b"\xff\xd8\xff"):
        return JPEG
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if len(data) >= 132 and data[128:132] == b"DICM":
        return DICOM
    return None


def checked_media_type(data: bytes, media_type: str | None, limits: ImageLimits) -> str:
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


def _normalise_media_type(media_type: str | None) -> str:
    value = (media_type or "").split(";", 1)[0].strip().lower()
    return _MEDIA_TYPE_ALIASES.get(value, value)
