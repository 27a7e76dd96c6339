"""DICOM: one parse gives the header checks, the routing tags and the dataset the pixels are decoded
from (pydicom); the first frame becomes an 8-bit "L" or "RGB" image as a viewer shows it."""

from __future__ import annotations

import io
import itertools
import math
from typing import Any

import numpy as np
from PIL import Image

from services.core.errors import InvalidImage
from services.core.imaging import jpeg
from services.core.imaging.levels import scale_to_uint8
from services.core.imaging.limits import ImageLimits, check_size

# The header tags auto routing reads (gateway/routing.py): never a patient-identifying one.
ROUTING_TAGS = ("Modality", "BodyPartExamined")

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
# empty elements took 0.9 s of CPU to check and decode when it was parsed four times; past the
# limit, under 1 s.
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


def parse(data: bytes) -> Any:
    """The whole dataset, pixel data included (values are converted lazily, on access)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    if _DEFLATED_UID in data:
        raise InvalidImage(
            "the DICOM transfer syntax Deflated Explicit VR Little Endian (1.2.840.10008.1.2.1.99) is not "
            "accepted; send uncompressed DICOM or a PNG/JPEG export"
        )
    try:
        return pydicom.dcmread(_CountedReads(data))
    except _DicomFloodError:
        raise InvalidImage(
            f"the DICOM file has too many data elements (pydicom gave up after {MAX_DICOM_READS} reads); "
            "a scanner writes hundreds, or tens of thousands in a multi-frame series"
        ) from None
    except InvalidDicomError as error:
        raise InvalidImage(f"the DICOM file cannot be read ({error})") from None
    except Exception as error:  # malformed input can fail inside pydicom with any exception type
        raise InvalidImage(f"the DICOM file cannot be read ({type(error).__name__}: {error})") from None


def open_dicom(data: bytes, limits: ImageLimits) -> tuple[Any, int, int, dict[str, str]]:
    """Parse a DICOM upload and check its header before any pixel decoding; returns the dataset,
    (width, height) and its routing tags."""
    try:
        dataset = parse(data)
        columns, rows = _check_dataset(dataset, limits)
        return dataset, columns, rows, _routing_tags(dataset)
    except InvalidImage:
        raise
    except Exception as error:   # pydicom parses lazily: see decode_dicom
        raise InvalidImage(f"the DICOM file is malformed ({type(error).__name__}: {error})") from None


def _routing_tags(dataset: Any) -> dict[str, str]:
    tags = {}
    for keyword in ROUTING_TAGS:
        try:
            value = dataset.get(keyword)
            text = str(value).strip() if value else ""
        except Exception:  # a malformed element (pydicom parses lazily): treat the tag as absent
            text = ""
        if text:
            tags[keyword] = text
    return tags


def decode_dicom(dataset: Any, columns: int, rows: int) -> Image.Image:
    """The first frame of a dataset open_dicom returned (columns x rows), as an "L" or "RGB" image."""
    try:
        return _decode(dataset, columns, rows)
    except InvalidImage:
        raise
    except Exception as error:
        # pydicom parses elements lazily, so a malformed file can fail on any later access with
        # any exception type (struct.error, BytesLengthException, NotImplementedError, ...).
        raise InvalidImage(f"the DICOM file is malformed ({type(error).__name__}: {error})") from None


def _check_dataset(dataset: Any, limits: ImageLimits) -> tuple[int, int]:
    if "PixelData" not in dataset:
        raise InvalidImage("the DICOM file has no pixel data (it is not an image)")
    try:
        rows, columns = int(dataset.Rows), int(dataset.Columns)
    except (AttributeError, TypeError, ValueError):
        raise InvalidImage("the DICOM file has pixel data but no valid Rows/Columns") from None
    check_size(columns, rows, limits)

    transfer_syntax = dataset.file_meta.get("TransferSyntaxUID")
    if transfer_syntax is None:
        # Without it the pixel data's encoding is unknown, and pydicom will not decode it.
        raise InvalidImage("the DICOM file has no Transfer Syntax UID in its file meta information, so its "
                           "pixel data cannot be read; export it as a DICOM Part 10 file, or as PNG/JPEG")
    if not _can_decode(transfer_syntax):
        name = getattr(transfer_syntax, "name", str(transfer_syntax))
        raise InvalidImage(
            f"the DICOM transfer syntax {name} ({transfer_syntax}) cannot be decoded by this service; "
            "send uncompressed DICOM or a PNG/JPEG export"
        )
    _check_segmented_palettes(dataset)
    return columns, rows



def _decode(dataset: Any, columns: int, rows: int) -> Image.Image:
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
            array = scale_to_uint8(array, 0.0, float(2 ** int(dataset.get("BitsStored", 16)) - 1))
        return Image.fromarray(array, mode="RGB")
    if array.ndim != 2:
        raise InvalidImage(f"the DICOM pixel data has an unexpected shape {array.shape}")

    gray = _grey_levels_of(array, dataset)
    # MONOCHROME1: the lowest value is displayed white. A MONOCHROME2 image whose Presentation LUT
    # Shape is INVERSE is displayed inverted too (for MONOCHROME1 that shape only restates it).
    if photometric == "MONOCHROME1" or str(dataset.get("PresentationLUTShape", "")).strip() == "INVERSE":
        gray = 255 - gray
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
    size = jpeg.frame_size(frame) if frame[:2] == b"\xff\xd8" else _j2k_size(frame)
    if size is None:
        return   # no size found: the decoder refuses what it cannot read
    if size != (columns, rows):
        raise InvalidImage(
            f"the DICOM header says {columns}x{rows} pixels but its compressed image data is "
            f"{size[0]}x{size[1]}; the file is inconsistent"
        )



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


# Integer pixels spanning at most this many levels go through the lookup table of _grey_levels_of.
MAX_TABLE_LEVELS = 2 ** 16
# Other pixels (32-bit ones spanning more levels, floats) go through pydicom's float64 rescale and
# window: ~27 bytes a pixel, measured, so beyond this many the decode would need more memory than
# the pixel budget allows one image (services/core/pixel_budget.py; 550-750 MB).
MAX_FLOAT_PATH_PIXELS = 16_000_000


def _grey_levels_of(array: np.ndarray, dataset: Any) -> np.ndarray:
    """8-bit display levels of a grey DICOM image. Integer pixels of up to 16 bits (nearly all), and
    32-bit ones that span no more levels, take at most 65536 distinct values: those go through the
    modality and VOI LUTs once, and each pixel is looked up, so a 64 M pixel image costs ~7 bytes
    per pixel (~10 stored in 32 bits) instead of float images (~27)."""
    if array.dtype.kind in "ui":
        base, top = int(array.min()), int(array.max())
        if array.dtype.itemsize <= 2 or top - base < MAX_TABLE_LEVELS:
            # Signed 8- or 16-bit values may span more than their type holds; 32-bit ones here do not.
            narrow_signed = array.dtype.kind == "i" and array.dtype.itemsize <= 2
            index = array.astype(np.int32) - base if narrow_signed else array - array.dtype.type(base)
            levels = np.arange(base, top + 1).astype(array.dtype)
            present = np.zeros(len(levels), dtype=bool)
            present[index] = True
            return _display_levels(levels, dataset, present)[index]
    if array.size > MAX_FLOAT_PATH_PIXELS:
        raise InvalidImage(f"this DICOM's {array.dtype} pixels span too many levels to be shown at "
                           f"{array.size} pixels (at most {MAX_FLOAT_PATH_PIXELS}); export it at 16 bits")
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
            window_low, window_high, falling = _voi_output_range(occurring(windowed), dataset)
            if not (math.isfinite(window_low) and math.isfinite(window_high)
                    and np.isfinite(windowed).all()):
                raise ValueError("the window is not finite numbers")
            if falling:
                # A window maps its bottom to black (PS3.3 C.11.2.1.2); pydicom takes the output
                # range from the rescale, which a negative slope turns upside down.
                windowed = (window_low + window_high) - windowed
            low, high, values = window_low, window_high, windowed
        except (ValueError, AttributeError, KeyError, TypeError, IndexError, NotImplementedError):
            pass  # a malformed window or LUT: show the full value range instead of refusing the image
    return scale_to_uint8(values, low, high)


# A palette has at most 2^16 entries. A segmented table (PS3.3 C.7.9.2) stores them as runs that
# pydicom expands into Python ints without a bound: 6 bytes of table per 65,535 entries, so a 12 KB
# table of a 64x64 image took 14 s of CPU and 2.1 GB, measured. Its runs are added up first, and a
# table longer than any palette needs, or one that expands past 2^16 entries, is refused.
MAX_PALETTE_ENTRIES = 2 ** 16
# The most table words a valid segmented palette needs (2^16 one-entry linear runs of 3 words), with room.
MAX_SEGMENTED_PALETTE_WORDS = 4 * MAX_PALETTE_ENTRIES


def _check_segmented_palettes(dataset: Any) -> None:
    """Raise InvalidImage when a segmented palette table would expand past MAX_PALETTE_ENTRIES."""
    import struct

    tables = [dataset.get(f"Segmented{colour}PaletteColorLookupTableData")
              for colour in ("Red", "Green", "Blue", "Alpha")]
    tables = [table for table in tables if table]
    if not tables:
        return
    byte_depth = int(dataset.RedPaletteColorLookupTableDescriptor[2]) // 8
    little_endian = dataset.file_meta.TransferSyntaxUID.is_little_endian
    for table in tables:
        count = len(table) // max(byte_depth, 1)
        if count > MAX_SEGMENTED_PALETTE_WORDS:
            raise InvalidImage("the DICOM segmented palette table is longer than any palette needs")
        words = struct.unpack(f"{'<' if little_endian else '>'}{count}{'B' if byte_depth == 1 else 'H'}",
                              table[:count * max(byte_depth, 1)])
        if _segmented_entries(words, byte_depth == 1, little_endian) > MAX_PALETTE_ENTRIES:
            raise InvalidImage(f"the DICOM segmented palette table expands to more than "
                               f"{MAX_PALETTE_ENTRIES} entries")


def _segmented_entries(words: tuple[int, ...], one_byte_words: bool, little_endian: bool) -> int:
    """How many entries pydicom's _expand_segmented_lut would make of `words`, read the same way,
    stopping as soon as they pass MAX_PALETTE_ENTRIES. An indirect segment may not point at another."""
    budget = len(words)     # segments walked in all, indirect ones' included: the walk stays bounded
    # An indirect segment's 32-bit offset, as pydicom assembles it from 8-bit words.
    order = (3, 2, 1, 0) if little_endian else (2, 3, 0, 1)

    def walk(offset: int, segments: int | None, nested: bool) -> int:
        nonlocal budget
        entries, read = 0, 0
        while offset + 1 < len(words) and entries <= MAX_PALETTE_ENTRIES:
            budget -= 1
            if budget < 0:
                raise InvalidImage("the DICOM segmented palette table refers to itself too often")
            opcode, length = words[offset], words[offset + 1]
            offset += 2
            if opcode == 0:            # discrete: `length` entries follow
                entries += length
                offset += length
            elif opcode == 1:          # linear: `length` entries up to the one value that follows
                entries += length
                offset += 1
            elif opcode == 2 and not nested:   # indirect: `length` segments copied from an offset
                if one_byte_words:
                    b = [words[offset + index] for index in order]
                    target = (b[0] << 8 | b[1]) << 16 | (b[2] << 8 | b[3])
                    offset += 4
                else:
                    target = words[offset + 1] << 16 | words[offset]
                    offset += 2
                entries += walk(target, length, True)
            else:
                raise InvalidImage(f"the DICOM segmented palette table has a segment of type {opcode} "
                                   "that cannot be read here")
            read += 1
            if read == segments:
                break
        return entries

    return walk(0, None, False)


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
    return scale_to_uint8(rgb, 0.0, float(np.iinfo(rgb.dtype).max))


def _can_decode(transfer_syntax: Any) -> bool:
    from pydicom import pixels

    try:
        return bool(pixels.get_decoder(transfer_syntax).is_available)
    except (NotImplementedError, ValueError):
        return False


def _voi_output_range(values: np.ndarray, dataset: Any) -> tuple[float, float, bool]:
    """(lowest, highest) output of the VOI step, and whether pydicom's window falls where it should
    rise (its bottom given the higher output)."""
    from pydicom import pixels

    if "VOILUTSequence" in dataset or "WindowCenter" not in dataset:
        # pydicom applied the VOI LUT (it wins over a window in the same header, as in a viewer):
        # its output is clamped to the table's entries, in the table's own direction.
        return float(values.min()), float(values.max()), False
    extremes = np.array([-1e12, 1e12], dtype=np.float64)
    below, above = (float(v) for v in pixels.apply_voi_lut(extremes, dataset, index=0))
    return min(below, above), max(below, above), below > above

