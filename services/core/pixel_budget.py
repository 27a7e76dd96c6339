"""How many pixels a model service decodes at once, across its gRPC worker threads.

Decoding takes memory in proportion to the image's pixels (a 64 M pixel colour DICOM: 550 MB in a
main thread, ~750 MB in a worker thread, measured), and a service handles `worker_threads` calls
side by side. Eight uploads of the largest accepted size at once would need several GB in a
1.5 GiB pod; with a budget, ordinary photos still decode side by side and the largest ones take
turns.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from services.core.call_end import CallEnd
from services.core.errors import CallCancelled


class PixelBudget:
    """At most `capacity` pixels held at a time, granted in arrival order (so a large image is not
    passed over for ever by smaller ones); an image larger than the capacity holds all of it."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1 pixel, not {capacity}")
        self.capacity = capacity
        self._held = 0
        self._waiting: deque[object] = deque()
        self._changed = threading.Condition()

    @property
    def held(self) -> int:
        with self._changed:
            return self._held

    @property
    def waiting(self) -> int:
        with self._changed:
            return len(self._waiting)

    def acquire(self, pixels: int, timeout: float | None = None, call_end: CallEnd | None = None) -> int:
        """Wait until every earlier caller has its pixels and `pixels` (at most the capacity) fit, then
        hold them; returns the amount held, for release(). TimeoutError after `timeout` seconds;
        CallCancelled once `call_end` comes (the caller cancelled): the wait ends then."""
        amount = max(1, min(pixels, self.capacity))
        if timeout is not None and timeout > threading.TIMEOUT_MAX:
            timeout = None   # gRPC's time_remaining() without a deadline: ~9e18 s, beyond what waits take
        turn = object()
        if call_end is not None:
            call_end.on(self._wake)

        def given_up() -> bool:
            return call_end is not None and call_end.event.is_set()

        def fits() -> bool:
            return self._waiting[0] is turn and self._held + amount <= self.capacity

        with self._changed:
            self._waiting.append(turn)
            granted = False
            try:
                self._changed.wait_for(lambda: given_up() or fits(), timeout)
                granted = not given_up() and fits()
            finally:
                self._waiting.remove(turn)
                if granted:
                    self._held += amount
                self._changed.notify_all()   # the next in line may fit now
        if given_up():
            raise CallCancelled("the call was cancelled while it waited to decode")
        if not granted:
            raise TimeoutError(f"{amount} pixels did not fit the decoding budget within {timeout} s")
        return amount

    def _wake(self) -> None:
        """Let every waiter look again (one of them was abandoned)."""
        with self._changed:
            self._changed.notify_all()

    def release(self, amount: int) -> None:
        with self._changed:
            self._held -= amount
            self._changed.notify_all()

    @contextmanager
    def hold(self, pixels: int, timeout: float | None = None) -> Iterator[None]:
        """acquire() for the block, release() after it."""
        amount = self.acquire(pixels, timeout)
        try:
            yield
        finally:
            self.release(amount)
