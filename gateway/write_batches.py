"""Writes that arrive together share one transaction (group commit).

A writer waits until its item is stored, as if it wrote alone; items that arrive while a batch is
being written go together in the next one. A lone write costs what it did (one transaction, one
thread hand-off); concurrent ones (a history page's thumbnails, each an audited image fetch;
diagnoses whose models answered together, each a record and its audit event) share a commit and a
hand-off instead of queueing for the database one by one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from fastapi.concurrency import run_in_threadpool

T = TypeVar("T")
# Items per transaction at most: a burst is written in a few bounded transactions, not one huge one.
MAX_BATCH = 100
# Stores a batch; returns None when every item was stored, else one exception or None per item.
WriteAll = Callable[[list[T]], Sequence[BaseException | None] | None]


class WriteBatches(Generic[T]):
    """Batches of items for one store. Lives on the event loop (not thread-safe)."""

    def __init__(self) -> None:
        self._waiting: list[tuple[T, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def write(self, item: T, write_all: WriteAll[T]) -> None:
        """Store `item`, with whatever else is waiting, by one call of `write_all` (blocking; run in a
        worker thread; every caller of one WriteBatches passes the same). Returns once that call has
        returned; raises what it raised, for every item of its batch, or what it returned for this
        item alone (`write_all` may return one exception or None per item, in the batch's order)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, done))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_waiting(write_all))
        await done

    async def _write_waiting(self, write_all: WriteAll[T]) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
                try:
                    errors = await run_in_threadpool(write_all, [item for item, _ in batch])
                except Exception as error:  # noqa: BLE001 - handed to each writer of the batch
                    errors = [error] * len(batch)
                for (_, done), error in zip(batch, errors or [None] * len(batch), strict=True):
                    if done.done():    # a writer that left (its request cancelled) is not told
                        continue
                    if error is None:
                        done.set_result(None)
                    else:
                        done.set_exception(error)
        finally:
            self._writer = None
