"""How many pixels a model service decodes at once, across its gRPC worker threads.

Decoding takes memory in proportion to the image's pixels (4-8 bytes each: a 64 M pixel colour
DICOM peaked at ~550 MB), and a service handles `worker_threads` calls side by side. Eight
uploads of the largest accepted size at once would need several GB in a 1.5 GiB pod; with a
budget, ordinary photos still decode side by side and the largest ones take turns.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class PixelBudget:
    """At most `capacity` pixels held at a time; an image larger than the capacity holds all of it."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1 pixel, not {capacity}")
        self.capacity = capacity
        self._held = 0
        self._changed = threading.Condition()

    @property
    def held(self) -> int:
        with self._changed:
            return self._held

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        """Wait until `pixels` (at most the capacity) fit, hold them for the block, then give them back."""
        amount = max(1, min(pixels, self.capacity))
        with self._changed:
            self._changed.wait_for(lambda: self._held + amount <= self.capacity)
            self._held += amount
        try:
            yield
        finally:
            with self._changed:
                self._held -= amount
                self._changed.notify_all()
