"""JPEG structure: the walk that bounds what Pillow and libjpeg would spend on a crafted file, and the
frame size of a JPEG inside a DICOM file. Pillow itself opens and decodes (raster.py)."""

from __future__ import annotations

import re

from services.core.errors import InvalidImage

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


def check_structure(data: bytes) -> tuple[int, int]:
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


# The JPEG frame headers (SOF) that carry the image size: baseline, extended, progressive and
# lossless (0xC0-0xCF but DHT, JPG and DAC) and JPEG-LS (0xF7).
_SOF_MARKERS = frozenset({*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC} | {0xF7})


def frame_size(frame: bytes) -> tuple[int, int] | None:
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
