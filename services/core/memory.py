"""Giving freed heap memory back to the operating system after a large image.

glibc keeps memory a thread freed in that thread's malloc arena for its next allocations. The
gRPC and web worker threads take turns with large images, so each kept what its largest decode
needed: measured here, after one 64 M pixel colour DICOM per thread, 370 MB stayed resident per
thread with nothing alive in it (four threads: 1.1-1.9 GB), and malloc_trim(0) gave it back.
"""

from __future__ import annotations

import ctypes
import sys

# Below this many pixels an image's buffers are small enough to leave to the allocator.
TRIM_AFTER_PIXELS = 4_000_000


def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    # dlopen(NULL): the symbols already loaded, libc's among them. ctypes.util.find_library would
    # run ldconfig in a subprocess at import time.
    try:
        return getattr(ctypes.CDLL(None), "malloc_trim", None)
    except OSError:
        return None


_MALLOC_TRIM = _malloc_trim()   # None where the C library has no malloc_trim (musl, macOS)


def release_after(pixels: int) -> None:
    """After an image of `pixels` was decoded and freed: return free heap memory to the system."""
    if pixels >= TRIM_AFTER_PIXELS and _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
