"""PNG structure: the chunk walk that bounds what Pillow would spend on a crafted file. Pillow itself
opens and decodes (raster.py)."""

from __future__ import annotations

from services.core.errors import InvalidImage

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


def check_chunks(data: bytes) -> None:
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
