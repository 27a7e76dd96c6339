"""What an upload may be, and the size check every format applies before decoding pixels."""

from __future__ import annotations

from dataclasses import dataclass

from services.core.errors import InvalidImage


@dataclass(frozen=True)
class ImageLimits:
    """What an upload may be. The model services and the gateway build theirs from one setting
    (services.core.settings.ImageLimitSettings, whose defaults these are); training and tools use
    these defaults directly."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 64_000_000   # width x height (x frames are never decoded beyond the first)
    min_side: int = 32


def check_size(width: int, height: int, limits: ImageLimits) -> None:
    if width * height > limits.max_pixels:
        raise InvalidImage(
            f"the image is {width}x{height} pixels; "
            f"the largest accepted is {limits.max_pixels} pixels in total"
        )
    if min(width, height) < limits.min_side:
        raise InvalidImage(
            f"the image is {width}x{height} pixels; each side must be at least {limits.min_side} pixels"
        )
