"""Uploaded bytes -> image: what services.core.imaging accepts, how it decodes it, and what it refuses."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    MPEG2MPML,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from services.core.errors import InvalidImage, UnsupportedMediaType
from services.core.imaging import (
    DICOM,
    JPEG,
    PNG,
    ImageLimits,
    decode_image,
    inspect_image,
    read_image,
    sniff_media_type,
)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def gradient_rgb(width: int = 64, height: int = 48) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)
    array = np.zeros((height, width, 3), dtype=np.uint8)
    array[..., 0] = x
    array[..., 2] = 255 - x
    return Image.fromarray(array, "RGB")


def _secondary_capture() -> Dataset:
    """An empty Secondary Capture dataset with its Part 10 file meta (explicit VR little endian)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    return ds


def make_dicom(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    with_pixels: bool = True,
    extra: dict | None = None,
) -> bytes:
    """A minimal Part 10 DICOM file around `pixels` (frames, rows, cols) or (rows, cols), uint16."""
    ds = _secondary_capture()
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "12345"
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    if with_pixels:
        frames = pixels if pixels.ndim == 3 else pixels[None]
        ds.Rows, ds.Columns = frames.shape[1:]
        if len(frames) > 1:
            ds.NumberOfFrames = len(frames)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = 16
        ds.BitsStored = bits_stored
        ds.HighBit = bits_stored - 1
        ds.PixelRepresentation = 0
        ds.PixelData = frames.astype("<u2").tobytes()
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def ramp(rows: int = 64, cols: int = 64, top: int = 4095) -> np.ndarray:
    """Each column a constant value, rising from 0 (left) to `top` (right)."""
    return np.tile(np.linspace(0, top, cols).astype(np.uint16), (rows, 1))


# --- sniffing and the declared media type ---------------------------------------------------

def test_type_is_sniffed_from_the_bytes_not_the_declared_type() -> None:
    png = encode(gradient_rgb(), "PNG")
    decoded = read_image(png, media_type="image/jpeg")
    assert decoded.media_type == PNG
    assert sniff_media_type(encode(gradient_rgb(), "JPEG")) == JPEG
    assert sniff_media_type(make_dicom(ramp())) == DICOM
    assert sniff_media_type(b"hello") is None


def test_a_declared_unsupported_type_is_refused_as_unsupported() -> None:
    with pytest.raises(UnsupportedMediaType, match="unsupported media type 'image/gif'"):
        read_image(encode(gradient_rgb(), "PNG"), media_type="image/gif")


def test_other_image_formats_are_named_in_the_refusal() -> None:
    with pytest.raises(UnsupportedMediaType, match="GIF"):
        read_image(encode(gradient_rgb(), "GIF"))
    with pytest.raises(UnsupportedMediaType, match="BMP"):
        read_image(encode(gradient_rgb(), "BMP"))


def test_garbage_bytes_are_not_an_image() -> None:
    with pytest.raises(UnsupportedMediaType, match="not a JPEG, PNG or DICOM image"):
        read_image(b"this is a text file, not an x-ray" * 10)


def test_empty_upload_is_refused() -> None:
    with pytest.raises(InvalidImage, match="empty"):
        read_image(b"")


# --- JPEG and PNG ---------------------------------------------------------------------------

def test_png_decodes_to_rgb_with_its_size() -> None:
    decoded = read_image(encode(gradient_rgb(64, 48), "PNG"), "image/png")
    assert decoded.image.mode == "RGB"
    assert (decoded.width, decoded.height) == (64, 48) == decoded.image.size
    assert decoded.image.getpixel((63, 0)) == (255, 0, 0)


def test_grayscale_jpeg_stays_grayscale() -> None:
    gray = Image.fromarray(np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1)), "L")
    image = decode_image(encode(gray, "JPEG", quality=95))
    assert image.mode == "L"
    assert image.size == (64, 64)


def test_sixteen_bit_png_is_stretched_to_eight_bits() -> None:
    array = ramp(40, 40, top=4095)
    image = decode_image(encode(Image.fromarray(array), "PNG"))
    assert image.mode == "L"
    assert image.getpixel((0, 0)) == 0 and image.getpixel((39, 0)) == 255


def test_large_jpeg_is_draft_decoded_but_keeps_its_original_size() -> None:
    big = gradient_rgb(2000, 1600)
    decoded = read_image(encode(big, "JPEG"), draft_size=(224, 224))
    assert (decoded.width, decoded.height) == (2000, 1600)
    assert min(decoded.image.size) >= 224          # never below what the model needs
    assert decoded.image.size[0] <= 1000           # decoded at 1/2 scale or less


def test_jpeg_exif_orientation_is_applied_like_a_browser_does() -> None:
    # Stored 64 wide x 48 high with orientation 6 ("rotate 90 clockwise to display").
    exif = Image.Exif()
    exif[0x0112] = 6
    decoded = read_image(encode(gradient_rgb(64, 48), "JPEG", exif=exif.tobytes()))
    assert (decoded.width, decoded.height) == (48, 64) == decoded.image.size
    top, bottom = decoded.image.getpixel((24, 0)), decoded.image.getpixel((24, 63))
    assert top[2] > 200 and top[0] < 50          # the stored left edge (blue) is now on top
    assert bottom[0] > 200 and bottom[2] < 50    # the stored right edge (red) at the bottom


def test_truncated_jpeg_is_refused_as_truncated() -> None:
    data = encode(gradient_rgb(256, 256), "JPEG")
    with pytest.raises(InvalidImage, match="truncated or corrupt"):
        read_image(data[: len(data) // 2])


def test_truncated_png_is_refused_as_truncated() -> None:
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8))
    data = encode(noisy, "PNG")
    with pytest.raises(InvalidImage, match="truncated or corrupt"):
        read_image(data[: len(data) // 2])


def test_too_small_image_is_refused_with_the_minimum() -> None:
    with pytest.raises(InvalidImage, match="20x20 pixels; each side must be at least 32"):
        read_image(encode(gradient_rgb(20, 20), "PNG"))


def test_too_many_bytes_is_refused_before_decoding() -> None:
    data = encode(gradient_rgb(), "PNG")
    with pytest.raises(InvalidImage, match="largest accepted is 100 bytes"):
        read_image(data, limits=ImageLimits(max_bytes=100))


def test_huge_declared_dimensions_are_refused_without_decoding() -> None:
    # Small files that declare huge images: decompression bombs.
    bomb = encode(Image.new("L", (10000, 10000)), "PNG")
    assert len(bomb) < 200_000
    with pytest.raises(InvalidImage, match="10000x10000 pixels; the largest accepted is 64000000 pixels"):
        read_image(bomb)
    bigger_bomb = encode(Image.new("1", (30000, 30000)), "PNG")
    with pytest.raises(InvalidImage, match="the largest accepted is 64000000 pixels"):
        read_image(bigger_bomb)


# --- DICOM ----------------------------------------------------------------------------------

def test_monochrome2_dicom_maps_its_range_to_eight_bits() -> None:
    image = decode_image(make_dicom(ramp()), "application/dicom")
    assert image.mode == "L" and image.size == (64, 64)
    assert image.getpixel((0, 0)) == 0
    assert image.getpixel((63, 0)) == 255


def test_monochrome1_dicom_is_inverted() -> None:
    image = decode_image(make_dicom(ramp(), photometric="MONOCHROME1"))
    assert image.getpixel((0, 0)) == 255
    assert image.getpixel((63, 0)) == 0


def test_rescale_slope_and_intercept_are_applied_before_the_window() -> None:
    # Stored 0..4095, slope 2 and intercept -1000 give -1000..7190; a window centred at 3095
    # (the stored midpoint after rescale) of width 2 splits the image at the middle column.
    pixels = ramp(64, 64)
    image = decode_image(make_dicom(pixels, rescale=(2.0, -1000.0), window=(pixels.max() - 1000.0, 2.0)))
    row = np.asarray(image)[0]
    assert row[0] == 0 and row[31] == 0         # stored <= 2016 -> below the window: black
    assert row[32] == 255 and row[63] == 255    # stored >= 2080 -> above the window: white


def test_a_negative_rescale_slope_with_a_window_is_not_shown_inverted() -> None:
    """Slope -1 turns stored 0..4095 into 4095..0; the window then maps its bottom to black, as
    without a window (pydicom's window took its output range from the rescale, upside down)."""
    plain, windowed = (
        np.asarray(decode_image(make_dicom(ramp(), rescale=(-1.0, 4095.0), window=window)))[0]
        for window in (None, (2048.0, 4096.0))
    )
    assert plain[0] == 255 and plain[63] == 0          # stored 0 -> value 4095: the brightest
    assert windowed[0] > 250 and windowed[63] < 5
    assert np.all(np.diff(windowed.astype(int)) <= 0)


def test_presentation_lut_shape_inverse_inverts_a_monochrome2_image_once() -> None:
    identity = decode_image(make_dicom(ramp(), extra={"PresentationLUTShape": "IDENTITY"}))
    inverse = decode_image(make_dicom(ramp(), extra={"PresentationLUTShape": "INVERSE"}))
    monochrome1 = decode_image(make_dicom(ramp(), photometric="MONOCHROME1",
                                          extra={"PresentationLUTShape": "INVERSE"}))
    assert (identity.getpixel((0, 0)), identity.getpixel((63, 0))) == (0, 255)
    assert (inverse.getpixel((0, 0)), inverse.getpixel((63, 0))) == (255, 0)
    assert (monochrome1.getpixel((0, 0)), monochrome1.getpixel((63, 0))) == (255, 0)   # not twice


def test_window_center_and_width_set_the_contrast() -> None:
    # Values 0..4095, window 1000 +- 100: <= 900 black, >= 1100 white, 1000 mid-grey.
    pixels = np.array([[0, 900, 1000, 1100, 4095]] * 40, dtype=np.uint16)
    pixels = np.repeat(pixels, 8, axis=1)
    image = np.asarray(decode_image(make_dicom(pixels, window=(1000.0, 200.0))))
    assert image[0, 0] == 0
    assert image[0, 8] == 0
    assert 120 <= image[0, 16] <= 135
    assert image[0, 24] == 255
    assert image[0, 32] == 255


def test_each_stored_level_maps_as_the_whole_image_would() -> None:
    """Grey DICOM pixels go through the LUTs once per distinct stored value, then are looked up:
    the result equals mapping every pixel (signed pixels and a VOI window included)."""
    from pydicom import dcmread

    from services.core.imaging.dicom import _display_levels, _grey_levels_of

    rng = np.random.default_rng(3)
    pixels = rng.integers(100, 3000, size=(40, 50)).astype(np.uint16)
    for options in ({}, {"rescale": (2.0, -1024.0)}, {"window": (1500.0, 800.0)},
                    {"rescale": (-1.0, 500.0), "window": (-200.0, 1000.0)}):
        dataset = dcmread(io.BytesIO(make_dicom(pixels, **options)))
        whole = _display_levels(pixels, dataset, None)
        assert np.array_equal(_grey_levels_of(pixels, dataset), whole), options
    signed = rng.integers(-2000, 2000, size=(40, 50)).astype(np.int16)
    dataset = dcmread(io.BytesIO(make_dicom(pixels, window=(0.0, 1000.0))))
    assert np.array_equal(_grey_levels_of(signed, dataset), _display_levels(signed, dataset, None))
    for wide in (pixels.astype(np.uint32) + 70_000, signed.astype(np.int32) - 100_000):   # 32-bit containers
        assert np.array_equal(_grey_levels_of(wide, dataset), _display_levels(wide, dataset, None))


def make_dicom_32(pixels: np.ndarray) -> bytes:
    """A grey DICOM with 32-bit stored pixels (BitsAllocated 32), uncompressed."""
    ds = _secondary_capture()
    ds.Modality = "CT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 32
    ds.HighBit = 31
    ds.PixelRepresentation = 0
    ds.RescaleSlope, ds.RescaleIntercept = 1.0, -1024.0
    ds.WindowCenter, ds.WindowWidth = 40.0, 400.0
    ds.PixelData = pixels.astype("<u4").tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_a_32_bit_dicom_of_few_levels_decodes_in_a_few_bytes_per_pixel() -> None:
    """32-bit containers of 12- to 16-bit data take the lookup path too (float64 copies: ~27 bytes a
    pixel, 1.7 GB for an 8000x8000 image, more than a model pod has)."""
    side = 1500
    values = np.tile(np.arange(side, dtype=np.uint32) * 40 % 4096, (side, 1))
    # The upload's own bytes are 4 a pixel; the float path took ~31 in all.
    assert peak_decoding_bytes(make_dicom_32(values)) / (side * side) < 14


def test_a_32_bit_dicom_of_too_many_levels_and_pixels_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.core.imaging import dicom

    wide = np.tile(np.arange(64, dtype=np.uint32) * 100_000, (64, 1))   # 6.3 M levels apart
    assert decode_image(make_dicom_32(wide)).size == (64, 64)            # small: the float path
    monkeypatch.setattr(dicom, "MAX_FLOAT_PATH_PIXELS", 64 * 64 - 1)
    with pytest.raises(InvalidImage, match="span too many levels"):
        decode_image(make_dicom_32(wide))


@pytest.mark.parametrize("kind", ["png16", "dicom"])
def test_decoding_a_large_grey_image_needs_a_few_bytes_per_pixel(kind: str) -> None:
    """A model pod decodes images up to max_pixels (64 M) within its memory limit: float64
    working copies cost ~32-36 bytes per pixel (2 GiB for 64 M pixels); lookups cost < 8."""
    side = 1500
    values = np.tile(np.arange(side, dtype=np.uint16) * 40, (side, 1))
    data = (encode(Image.fromarray(values), "PNG") if kind == "png16"
            else make_dicom(values % 4096, rescale=(1.0, -1024.0), window=(40.0, 400.0)))
    assert peak_decoding_bytes(data) / (side * side) < 8


def peak_decoding_bytes(data: bytes) -> int:
    """The most memory decode_image(data) held at once (NumPy and Python allocations, tracemalloc)."""
    import tracemalloc

    tracemalloc.start()
    try:
        decode_image(data)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def make_colour_dicom(image: Image.Image) -> bytes:
    """A JPEG-baseline DICOM of an RGB `image`, stored as YBR_FULL_422 (as dermoscopy DICOMs are)."""
    ds = _secondary_capture()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.Rows, ds.Columns = image.height, image.width
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([encode(image, "JPEG", quality=90)])
    ds["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_a_colour_dicom_is_turned_into_rgb_exactly_as_pydicom_does() -> None:
    from pydicom import dcmread
    from pydicom.pixels import pixel_array

    from services.core.imaging.dicom import YBR_BAND_ROWS

    rng = np.random.default_rng(7)
    noisy = rng.integers(0, 256, (YBR_BAND_ROWS * 2 + 37, 90, 3), dtype=np.uint8)   # several bands
    data = make_colour_dicom(Image.fromarray(noisy))
    expected = pixel_array(dcmread(io.BytesIO(data)), index=0)      # pydicom's own YBR -> RGB

    decoded = decode_image(data)
    assert decoded.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(decoded), expected)


def test_decoding_a_large_colour_dicom_needs_a_few_bytes_per_pixel() -> None:
    """pydicom's whole-image float32 YBR -> RGB conversion peaked at ~27 bytes per pixel (1.6 GB
    for a 1 MB upload of 64 M pixels); decoding and converting in bands needs the image twice."""
    side = 1500
    data = make_colour_dicom(gradient_rgb(side, side))
    assert peak_decoding_bytes(data) / (side * side) < 10   # measured 7.1


def test_a_non_finite_rescale_is_refused_and_a_non_finite_window_falls_back_to_the_full_range() -> None:
    with pytest.raises(InvalidImage, match="not finite"):
        decode_image(make_dicom(ramp(), extra={"RescaleSlope": "NaN", "RescaleIntercept": "0"}))
    with pytest.raises(InvalidImage, match="not finite"):
        decode_image(make_dicom(ramp(), extra={"RescaleSlope": "inf", "RescaleIntercept": "0"}))
    shown = np.asarray(decode_image(make_dicom(ramp(), extra={"WindowCenter": "NaN", "WindowWidth": "400"})))
    assert shown[0, 0] == 0 and shown[0, -1] == 255   # the full ramp, not a black image


def test_a_png_of_many_empty_header_chunks_is_refused_before_pillow_reads_them() -> None:
    """Pillow reads PNG chunks in Python: 100,000 empty ones cost ~0.5 s of CPU per read."""
    import struct
    import zlib

    png = encode(gradient_rgb(), "PNG")
    chunk = struct.pack(">I", 0) + b"abCd" + struct.pack(">I", zlib.crc32(b"abCd"))
    ihdr_end = 8 + 12 + 13
    crafted = png[:ihdr_end] + chunk * 100_000 + png[ihdr_end:]
    with pytest.raises(InvalidImage, match="more than 1024 chunks"):
        read_image(crafted)
    with_text = png[:ihdr_end] + chunk * 50 + png[ihdr_end:]   # a few ancillary chunks are fine
    assert read_image(with_text).image.size == (64, 48)


def png_chunk(kind: bytes, payload: bytes = b"") -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


@pytest.mark.parametrize(
    ("where", "chunk", "count", "words"),
    [("after", b"zzZz", 100_000, "more than 16384 chunks after its image data"),
     ("among", b"IDAT", 100_000, "more than 16384 image data chunks"),
     ("before", b"zTXt", 20, "more than 8 compressed text or ICC profile chunks"),
     ("before", b"iCCP", 20, "more than 8 compressed text or ICC profile chunks"),
     ("after", b"iCCP", 20, "more than 8 compressed text or ICC profile chunks")],
)
def test_a_png_flooded_with_chunks_after_or_among_its_image_data_is_refused(
    where: str, chunk: bytes, count: int, words: str
) -> None:
    """Pillow walks the chunks after the first IDAT in Python too (1.65 M empty ones: 3.75 s), and
    inflates each compressed text chunk and ICC profile up to 1 MB, before and after the image data."""
    import zlib

    png = encode(gradient_rgb(), "PNG")
    payload = {b"zTXt": b"Comment\x00\x00" + zlib.compress(b" " * 100_000),
               b"iCCP": b"profile\x00\x00" + zlib.compress(b" " * 100_000)}.get(chunk, b"")
    flood = png_chunk(chunk, payload) * count
    first_idat = png.index(b"IDAT") - 4
    iend = png.index(b"IEND") - 4
    crafted = {"after": png[:iend] + flood + png[iend:],
               "among": png[:first_idat] + flood + png[first_idat:],
               "before": png[:first_idat] + flood + png[first_idat:]}[where]
    with pytest.raises(InvalidImage, match=words):
        inspect_image(crafted)
    fine = png[:first_idat] + png_chunk(chunk, payload) * 2 + png[first_idat:]   # a couple are fine
    assert read_image(fine).image.size == (64, 48)


def test_an_animated_png_and_uncompressed_international_text_are_accepted() -> None:
    """An APNG carries two chunks per frame after its image data; an iTXt chunk is only inflated
    when its compression flag says so."""
    frames = [gradient_rgb().rotate(angle) for angle in range(600)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="PNG", save_all=True, append_images=frames[1:])
    assert read_image(buffer.getvalue()).image.size == (64, 48)

    png = encode(gradient_rgb(), "PNG")
    first_idat = png.index(b"IDAT") - 4
    plain_itxt = png_chunk(b"iTXt", b"Comment\x00\x00\x00en\x00Kommentar\x00" + b"x" * 100)
    assert read_image(png[:first_idat] + plain_itxt * 20 + png[first_idat:]).image.size == (64, 48)


def make_palette_dicom(indices: np.ndarray, lut_rgb: np.ndarray, lut_bits: int = 16) -> bytes:
    """A PALETTE COLOR DICOM file: 8-bit `indices` (rows, cols) into `lut_rgb` (entries, 3).

    `lut_rgb` holds the colours as 8-bit values; with 16-bit entries each is stored as v * 257,
    which spans 0..65535 as a 16-bit palette does.
    """
    ds = _secondary_capture()
    ds.Modality = "XC"
    ds.Rows, ds.Columns = indices.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "PALETTE COLOR"
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = indices.astype(np.uint8).tobytes()
    entries = len(lut_rgb)
    stored = lut_rgb.astype("<u2") * 257 if lut_bits == 16 else lut_rgb.astype(np.uint8)
    for channel, colour in enumerate(("Red", "Green", "Blue")):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [entries, 0, lut_bits])
        setattr(ds, f"{colour}PaletteColorLookupTableData", np.ascontiguousarray(stored[:, channel]).tobytes())
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize("lut_bits", [16, 8])
def test_palette_color_dicom_decodes_to_its_lut_colours(lut_bits: int) -> None:
    # 256 distinct colours, none of them grey, so reading the indices as grey levels cannot pass.
    values = np.arange(256)
    lut = np.stack([values, 255 - values, (values * 7) % 256], axis=1).astype(np.uint8)
    indices = np.tile(np.arange(64, dtype=np.uint8) * 4, (48, 1))   # columns 0, 4, ..., 252
    indices[:, 0] = 255
    image = read_image(make_palette_dicom(indices, lut, lut_bits)).image
    assert image.mode == "RGB" and image.size == (64, 48)
    assert np.array_equal(np.asarray(image), lut[indices])


def test_palette_color_dicom_without_its_lut_is_refused() -> None:
    data = make_palette_dicom(np.zeros((48, 48), dtype=np.uint8), np.zeros((256, 3), dtype=np.uint8))
    from pydicom import dcmread

    ds = dcmread(io.BytesIO(data))
    for colour in ("Red", "Green", "Blue"):
        delattr(ds, f"{colour}PaletteColorLookupTableData")
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    with pytest.raises(InvalidImage, match="palette"):
        read_image(buffer.getvalue())


def make_segmented_palette_dicom(words: list[int]) -> bytes:
    """A 64x64 PALETTE COLOR DICOM whose three channels share one segmented table of 16-bit `words`
    (PS3.3 C.7.9.2: 0 = discrete, 1 = linear, 2 = indirect), indices rising along the columns."""
    indices = np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))
    data = make_palette_dicom(indices, np.zeros((256, 3), np.uint8))
    from pydicom import dcmread

    ds = dcmread(io.BytesIO(data))
    for colour in ("Red", "Green", "Blue"):
        delattr(ds, f"{colour}PaletteColorLookupTableData")
        setattr(ds, f"Segmented{colour}PaletteColorLookupTableData", np.array(words, "<u2").tobytes())
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_a_segmented_palette_decodes_as_pydicom_expands_it() -> None:
    from pydicom import dcmread
    from pydicom.pixels import apply_color_lut

    # 0; up to 40000 over 64 entries; down to 1000 over 63; the segment at word 3 again (indirect);
    # up to 65535 over 64: 256 entries, as the descriptor says.
    words = [0, 1, 0, 1, 64, 40000, 1, 63, 1000, 2, 1, 3, 0, 1, 64, 65535]
    data = make_segmented_palette_dicom(words)
    dataset = dcmread(io.BytesIO(data))
    indices = dataset.pixel_array
    expected = (apply_color_lut(indices, dataset)[..., :3] / 65535 * 255).round().astype(np.uint8)
    image = read_image(data).image
    assert image.mode == "RGB"
    assert np.abs(np.asarray(image).astype(int) - expected).max() <= 1
    assert len(set(np.asarray(image)[0, :, 0].tolist())) > 30   # a real ramp, not one colour


@pytest.mark.parametrize("words", [
    [0, 1, 0] + [1, 65535, 65535, 1, 65535, 0] * 20,     # 12 bytes of runs per 131,070 entries
    [0, 1, 0] + [1, 65535, 0] * 1 + [2, 65535, 3, 0] * 40,   # indirect segments re-reading one run
    [0, 1, 0] + [1, 0, 0] * 300_000,                     # longer than any palette needs
    [0, 1, 0, 7, 1, 0],                                  # a segment type the standard does not have
])
def test_a_segmented_palette_bomb_is_refused_before_it_is_expanded(words: list[int]) -> None:
    import time

    data = make_segmented_palette_dicom(words)
    started = time.process_time()
    with pytest.raises(InvalidImage, match="palette"):
        inspect_image(data)   # the header check: the gateway refuses it before it is routed
    assert time.process_time() - started < 1.0


def test_a_dicom_without_a_transfer_syntax_is_refused_when_inspected() -> None:
    from pydicom import dcmread

    ds = dcmread(io.BytesIO(make_dicom(ramp())))
    del ds.file_meta.TransferSyntaxUID
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=False, implicit_vr=False, little_endian=True)
    with pytest.raises(InvalidImage, match="Transfer Syntax UID"):
        inspect_image(buffer.getvalue())


def _with_empty_private_elements(dicom: bytes, count: int) -> bytes:
    """The DICOM with `count` empty private LO elements inserted before its pixel data."""
    import struct

    flood = bytearray()
    for i in range(count):
        flood += struct.pack("<HH", 0x0011 + 2 * (i // 0xF000), 0x1000 + i % 0xF000) + b"LO\x00\x00"
    pixel_data = dicom.rfind(b"\xe0\x7f\x10\x00")
    return dicom[:pixel_data] + bytes(flood) + dicom[pixel_data:]


def test_a_dicom_flooded_with_elements_is_refused_and_a_few_hundred_still_read() -> None:
    """pydicom builds an object per element: 2.4 M empty ones in 20 MB cost 8 s of CPU a parse."""
    from services.core.imaging import MAX_DICOM_READS

    base = make_dicom(ramp())
    flooded = _with_empty_private_elements(base, MAX_DICOM_READS)
    for read in (inspect_image, read_image):
        with pytest.raises(InvalidImage, match="too many data elements"):
            read(flooded)
    assert read_image(_with_empty_private_elements(base, 500)).image.size == read_image(base).image.size


def test_multi_frame_dicom_uses_the_first_frame() -> None:
    first = ramp(48, 48)
    second = np.full((48, 48), 4095, dtype=np.uint16)
    image = decode_image(make_dicom(np.stack([first, second])))
    assert image.size == (48, 48)
    assert image.getpixel((0, 0)) == 0 and image.getpixel((47, 0)) == 255


def test_dicom_without_pixel_data_is_refused() -> None:
    with pytest.raises(InvalidImage, match="no pixel data"):
        read_image(make_dicom(ramp(), with_pixels=False))


def test_dicom_with_an_undecodable_transfer_syntax_is_refused_naming_it() -> None:
    data = make_dicom(ramp())
    from pydicom import dcmread

    ds = dcmread(io.BytesIO(data))
    # MPEG-2 video: no pydicom decoder exists (JPEG, JPEG-LS and JPEG 2000 decode with pylibjpeg).
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3not really MPEG-2"])
    ds["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    with pytest.raises(InvalidImage, match="transfer syntax MPEG2 Main Profile / Main Level.*cannot be decoded"):
        read_image(buffer.getvalue())


def test_dicom_too_small_is_refused() -> None:
    with pytest.raises(InvalidImage, match="at least 32"):
        read_image(make_dicom(ramp(16, 16)))


def test_truncated_dicom_is_refused() -> None:
    data = make_dicom(ramp(256, 256))
    with pytest.raises(InvalidImage, match="DICOM"):
        read_image(data[: len(data) // 2])


@pytest.mark.parametrize("kind", ["jpeg", "png", "dicom", "palette"])
def test_corrupted_uploads_only_ever_raise_invalid_image(kind: str) -> None:
    """Random byte flips, cuts and insertions: decoded or refused clearly, never another exception."""
    base = {
        "jpeg": encode(gradient_rgb(128, 96), "JPEG"),
        "png": encode(gradient_rgb(128, 96), "PNG"),
        "dicom": make_dicom(ramp(64, 64), window=(1000.0, 200.0), rescale=(1.0, 0.0)),
        "palette": make_palette_dicom(
            np.tile(np.arange(64, dtype=np.uint8), (64, 1)), np.tile(np.arange(256, dtype=np.uint8)[:, None], (1, 3))
        ),
    }[kind]
    rng = np.random.default_rng(1)
    for trial in range(300):
        data = bytearray(base)
        if trial % 3 == 0:
            for _ in range(int(rng.integers(1, 10))):
                data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        elif trial % 3 == 1:
            data = data[: int(rng.integers(1, len(data)))]
        else:
            position = int(rng.integers(0, len(data)))
            data[position:position] = rng.bytes(int(rng.integers(1, 50)))
        try:
            assert isinstance(inspect_image(bytes(data)).routing_tags, dict)
            decoded = read_image(bytes(data), draft_size=(448, 448))
        except InvalidImage:
            continue
        assert decoded.image.mode in ("RGB", "L")


def test_routing_tags_are_modality_and_body_part_only() -> None:
    tags = inspect_image(make_dicom(ramp())).routing_tags
    assert tags == {"Modality": "CR", "BodyPartExamined": "CHEST"}
    assert inspect_image(encode(gradient_rgb(), "PNG")).routing_tags == {}


def _with_comment_segments(jpeg: bytes, count: int) -> bytes:
    """The JPEG with `count` empty COM segments inserted right after its SOI marker."""
    return jpeg[:2] + b"\xff\xfe\x00\x02" * count + jpeg[2:]


def test_a_jpeg_header_flooded_with_segments_is_refused_before_pillow_walks_it():
    from services.core.imaging import MAX_JPEG_HEADER_SEGMENTS

    good = encode(gradient_rgb(), "JPEG")
    flooded = _with_comment_segments(good, 1_000_000)   # ~4 MB: seconds of Pillow's header loop
    with pytest.raises(InvalidImage, match=f"more than {MAX_JPEG_HEADER_SEGMENTS} segments"):
        inspect_image(flooded)
    with pytest.raises(InvalidImage, match="segments before its image data"):
        read_image(flooded)


def _with_photoshop_segments(jpeg: bytes, count: int) -> bytes:
    """The JPEG with `count` APP13 "Photoshop 3.0" segments of empty 8BIM resource blocks."""
    payload = b"Photoshop 3.0\x00" + (b"8BIM\x04\x04\x00\x00\x00\x00\x00\x00") * 5000
    segment = b"\xff\xed" + (len(payload) + 2).to_bytes(2, "big") + payload
    return jpeg[:2] + segment * count + jpeg[2:]


def test_a_jpeg_flooded_with_photoshop_segments_is_refused_and_a_few_still_read():
    """Pillow parses each APP13 segment's resource blocks in Python (300 segments: ~3 s of CPU)."""
    from services.core.imaging import MAX_JPEG_APP13_SEGMENTS

    good = encode(gradient_rgb(), "JPEG")
    with pytest.raises(InvalidImage, match=f"more than {MAX_JPEG_APP13_SEGMENTS} Photoshop"):
        inspect_image(_with_photoshop_segments(good, 300))
    assert read_image(_with_photoshop_segments(good, 2)).image.size == (64, 48)


def test_a_jpeg_with_many_but_plausible_header_segments_still_reads():
    jpeg = _with_comment_segments(encode(gradient_rgb(), "JPEG"), 300)
    assert read_image(jpeg).image.size == (64, 48)


def _progressive_with_repeated_last_scan(copies: int, side: int = 512) -> bytes:
    """A flat progressive JPEG whose last scan (a few dozen bytes) is repeated `copies` more times:
    each copy costs the decoder a pass over every block (the scan-flood attack)."""
    buffer = io.BytesIO()
    Image.new("L", (side, side), 128).save(buffer, "JPEG", progressive=True, optimize=True)
    jpeg = buffer.getvalue()
    start = jpeg.rindex(b"\xff\xda")
    end = jpeg.rindex(b"\xff\xd9")
    return jpeg[:end] + jpeg[start:end] * copies + jpeg[end:]


def test_a_progressive_jpeg_flooded_with_scans_is_refused_before_it_is_decoded():
    from services.core.imaging import MAX_JPEG_SCANS

    flooded = _progressive_with_repeated_last_scan(5000, side=2048)   # ~200 kB: minutes of decoding
    with pytest.raises(InvalidImage, match=f"more than {MAX_JPEG_SCANS} scans"):
        inspect_image(flooded)
    with pytest.raises(InvalidImage, match="more than .* scans"):
        read_image(flooded)


def test_a_progressive_jpeg_cut_after_its_first_scan_is_still_counted_whole():
    """libjpeg buffers a progressive frame's coefficients whatever the number of scans: the pixel
    budget must charge it the whole image, not the reduced (draft) size."""
    
    whole = encode(gradient_rgb(1600, 1200), "JPEG", progressive=True)
    second_scan = whole.index(b"\xff\xda", whole.index(b"\xff\xda") + 2)
    header = inspect_image(whole[:second_scan] + b"\xff\xd9")   # the first scan, then the end of the image
    assert header.multi_scan
    assert header.pixels_to_decode((448, 448)) == 1600 * 1200


def test_a_jpeg_whose_first_scan_leaves_components_out_is_counted_whole():
    """libjpeg buffers every coefficient when the first scan carries fewer components than the
    frame (a non-interleaved file), however many scans follow."""
    
    baseline = encode(gradient_rgb(1600, 1200), "JPEG")
    sos = baseline.index(b"\xff\xda")
    assert baseline[sos + 4] == 3                              # Ns: one scan of all three components
    one_component = baseline[:sos + 4] + b"\x01" + baseline[sos + 5:]
    assert not inspect_image(baseline).multi_scan
    header = inspect_image(one_component)
    assert header.multi_scan and header.pixels_to_decode((448, 448)) == 1600 * 1200


def test_the_pixels_to_decode_are_those_of_the_reduced_jpeg_unless_it_has_several_scans():
    
    big = gradient_rgb(2400, 1800)
    baseline = inspect_image(encode(big, "JPEG"))
    progressive = inspect_image(encode(big, "JPEG", progressive=True))
    png = inspect_image(encode(big, "PNG"))
    assert (baseline.multi_scan, progressive.multi_scan) == (False, True)
    assert baseline.pixels_to_decode((448, 448)) == 600 * 450      # 1/4 a side: still >= 448 x 448
    assert baseline.pixels_to_decode((224, 224)) == 300 * 225      # 1/8
    assert baseline.pixels_to_decode(None) == 2400 * 1800
    small = inspect_image(encode(gradient_rgb(), "JPEG"))            # smaller than the draft size: whole
    assert small.pixels_to_decode((448, 448)) == 64 * 48
    # A progressive JPEG holds every coefficient of the whole image until its last scan.
    assert progressive.pixels_to_decode((448, 448)) == png.pixels_to_decode((448, 448)) == 2400 * 1800
    assert read_image(encode(big, "JPEG"), draft_size=(448, 448)).image.size == (600, 450)


def test_junk_between_segments_does_not_hide_the_scans_from_the_count():
    """libjpeg skips bytes between segments that are not markers; the count must not stop there."""
    from services.core.imaging import MAX_JPEG_SCANS

    flooded = _progressive_with_repeated_last_scan(1000)
    first_scan = flooded.index(b"\xff\xda")
    for junk in (b"\x00", b"\xff\xfe\x00\x02\x00", b"junk"):
        with pytest.raises(InvalidImage, match=f"more than {MAX_JPEG_SCANS} scans"):
            read_image(flooded[:first_scan] + junk + flooded[first_scan:])
    after_app0 = 2 + 2 + int.from_bytes(flooded[4:6], "big")
    with pytest.raises(InvalidImage, match=f"more than {MAX_JPEG_SCANS} scans"):
        read_image(flooded[:after_app0] + b"\x00" + flooded[after_app0:])


def test_a_jpeg_header_cannot_hide_a_segment_flood_behind_markers_pillow_reads_without_length():
    from services.core.imaging import MAX_JPEG_HEADER_JUNK_BYTES, MAX_JPEG_HEADER_SEGMENTS

    jpeg = encode(gradient_rgb(), "JPEG")
    comments = b"\xff\xfe\x00\x02" * 200_000
    # Pillow reads on past an early end-of-image and reads JPGn (0xF0-0xFD) markers without a length.
    for hiding in (b"\xff\xd9", b"\xff\xf0"):
        with pytest.raises(InvalidImage, match=f"more than {MAX_JPEG_HEADER_SEGMENTS} segments"):
            inspect_image(jpeg[:2] + hiding + comments + jpeg[2:])
    # Pillow steps over junk and fill bytes in its header one at a time.
    after_app0 = 2 + 2 + int.from_bytes(jpeg[4:6], "big")
    for junk in (b"\x00", b"\xff"):
        with pytest.raises(InvalidImage, match=f"more than {MAX_JPEG_HEADER_JUNK_BYTES} bytes of padding"):
            inspect_image(jpeg[:after_app0] + junk * 1_000_000 + jpeg[after_app0:])
    assert read_image(jpeg[:after_app0] + b"\x00" * 100 + jpeg[after_app0:]).image.size == (64, 48)


def test_a_jpeg_flooded_with_segments_after_its_first_scan_is_refused():
    from services.core.imaging import MAX_JPEG_LATER_SEGMENTS

    jpeg = encode(gradient_rgb(), "JPEG", progressive=True)
    end = jpeg.rindex(b"\xff\xd9")
    for filler in (b"\xff\x01", b"\xff\xfe\x00\x02"):          # lengthless markers, empty comments
        with pytest.raises(InvalidImage, match=f"more than {MAX_JPEG_LATER_SEGMENTS} segments after"):
            inspect_image(jpeg[:end] + filler * 200_000 + jpeg[end:])
    # A long run of fill bytes after the first scan is skipped in one regular-expression step.
    assert read_image(jpeg[:end] + b"\xff" * 2_000_000 + jpeg[end:]).image.size == (64, 48)


def test_progressive_jpegs_as_encoders_write_them_still_read():
    from services.core.imaging import MAX_JPEG_SCANS

    for quality in (75, 95):
        progressive = encode(gradient_rgb(), "JPEG", quality=quality, progressive=True)
        assert progressive.count(b"\xff\xda") > 1
        assert read_image(progressive).image.size == (64, 48)
    at_the_limit = _progressive_with_repeated_last_scan(MAX_JPEG_SCANS - 6)   # Pillow writes 6 for grey
    assert at_the_limit.count(b"\xff\xda") == MAX_JPEG_SCANS
    assert read_image(at_the_limit).image.size == (512, 512)


def test_scans_inside_an_exif_thumbnail_are_not_counted():
    # An EXIF block may carry a whole JPEG thumbnail (its own start-of-scan markers) inside APP1.
    thumbnail = _progressive_with_repeated_last_scan(200, side=16)
    jpeg = encode(gradient_rgb(), "JPEG")
    app1 = b"\xff\xe1" + (2 + 6 + len(thumbnail)).to_bytes(2, "big") + b"Exif\x00\x00" + thumbnail
    with_thumbnail = jpeg[:2] + app1 + jpeg[2:]
    assert read_image(with_thumbnail).image.size == (64, 48)


def test_a_voi_lut_wins_over_a_window_in_the_same_header_as_in_a_viewer() -> None:
    """CR and DX files often carry both; pydicom applies the LUT, so its range is the one to show."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 16]
    lut.LUTData = np.arange(4095, -1, -1, dtype="<u2").tobytes()     # inverts: its effect is plain to see
    voi = {"VOILUTSequence": Sequence([lut])}

    lut_only = np.asarray(decode_image(make_dicom(ramp(), extra=voi)))
    both = np.asarray(decode_image(make_dicom(ramp(), window=(2048.0, 4096.0), extra=voi)))

    assert lut_only[0, 0] == 255 and lut_only[0, -1] == 0
    np.testing.assert_array_equal(both, lut_only)
