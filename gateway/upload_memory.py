"""Uploads held in memory at once, bounded by count and by bytes, served in arrival order
(gateway/admission.upload_slot).

An upload in flight is held about three times over while it is sent to a model service (its bytes,
the gRPC request, the request's serialized form), so the gateway's memory is bounded by the sizes
of the uploads it holds, not by their number: a count alone that keeps four of the largest (20 MiB)
within the pod's memory also keeps ordinary X-rays (tens to hundreds of KB) four at a time, and
leaves the cores idle between them. Each upload reserves three times its size; the count stays as a
second bound. An upload larger than the whole byte budget still goes, alone.

Waiters are served strictly in arrival order: a large upload is not overtaken forever by a stream
of small ones. Used from the event loop only, so plain integers suffice.
"""

from __future__ import annotations

import asyncio
from collections import deque

# What one upload in flight costs the gateway's memory, in multiples of its size (see above).
COPIES_IN_FLIGHT = 3


class UploadMemory:
    def __init__(self, max_uploads: int, max_bytes: int) -> None:
        self.max_uploads = max_uploads
        self.max_bytes = max_bytes
        self.uploads = 0
        self.bytes = 0
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    def _fits(self, size: int) -> bool:
        return self.uploads < self.max_uploads and (self.uploads == 0 or self.bytes + size <= self.max_bytes)

    def _take(self, size: int) -> None:
        self.uploads += 1
        self.bytes += size

    async def acquire(self, size: int) -> None:
        """Wait until one more upload reserving `size` bytes fits, after every upload that was already
        waiting. Cancelled (a timeout, a client that left), it holds nothing."""
        if not self._waiting and self._fits(size):
            self._take(size)
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = (size, turn)
        self._waiting.append(waiter)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.release(size)   # its turn came as it was cancelled: give it back
            else:
                if waiter in self._waiting:
                    self._waiting.remove(waiter)
                self._serve_waiting()   # it may have been the one the others waited behind
            raise

    def release(self, size: int) -> None:
        """Give back what acquire(size) reserved."""
        self.uploads -= 1
        self.bytes -= size
        self._serve_waiting()

    def _serve_waiting(self) -> None:
        while self._waiting and self._fits(self._waiting[0][0]):
            size, turn = self._waiting.popleft()
            if turn.cancelled():   # its waiter is leaving (its task was cancelled): skip it
                continue
            self._take(size)
            turn.set_result(None)
