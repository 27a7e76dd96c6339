"""Group commit (gateway/write_batches.py): writes that arrive together share one call of the
store's write, and each writer returns only once its own item is written."""

from __future__ import annotations

import asyncio
import threading

import pytest

from gateway.write_batches import MAX_BATCH, WriteBatches


class Store:
    """A store whose first write can be held, to let others arrive meanwhile."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.hold_first = threading.Event()
        self.hold_first.set()
        self.fail_on = fail_on

    def write_all(self, items: list[str]) -> None:
        if not self.calls:
            self.hold_first.wait(5)
        self.calls.append(items)
        if self.fail_on in items:
            raise OSError("database is down")


def test_a_lone_write_is_one_call_of_its_own() -> None:
    store = Store()
    asyncio.run(WriteBatches().write("a", store.write_all))
    assert store.calls == [["a"]]


def test_writes_arriving_during_a_write_go_together_in_the_next_and_each_waits_for_its_own() -> None:
    store = Store()
    store.hold_first.clear()

    async def run() -> None:
        batches: WriteBatches[str] = WriteBatches()
        first = asyncio.create_task(batches.write("a", store.write_all))
        await asyncio.sleep(0.05)
        others = [asyncio.create_task(batches.write(name, store.write_all)) for name in "bcd"]
        await asyncio.sleep(0.05)
        assert not any(task.done() for task in [first, *others])   # nothing written yet
        store.hold_first.set()
        await asyncio.gather(first, *others)

    asyncio.run(run())
    assert store.calls == [["a"], ["b", "c", "d"]]


def test_a_failed_write_fails_every_writer_of_its_batch_and_the_next_batch_still_goes() -> None:
    store = Store(fail_on="b")
    store.hold_first.clear()

    async def run() -> list[object]:
        batches: WriteBatches[str] = WriteBatches()
        first = asyncio.create_task(batches.write("a", store.write_all))
        await asyncio.sleep(0.05)
        failing = [asyncio.create_task(batches.write(name, store.write_all)) for name in "bc"]
        await asyncio.sleep(0.05)
        store.hold_first.set()
        results = await asyncio.gather(first, *failing, return_exceptions=True)
        await batches.write("d", store.write_all)
        return results

    first, b, c = asyncio.run(run())
    assert first is None and isinstance(b, OSError) and isinstance(c, OSError)
    assert store.calls == [["a"], ["b", "c"], ["d"]]


def test_an_item_that_failed_alone_fails_only_its_writer() -> None:
    """A store that reports per item (one exception or None each, in order) fails only that item's
    writer; the others of the batch return normally."""
    calls: list[list[str]] = []

    def write_all(items: list[str]) -> list[BaseException | None]:
        calls.append(items)
        return [ValueError(f"{item} is not storable") if item == "b" else None for item in items]

    async def run() -> list[object]:
        batches: WriteBatches[str] = WriteBatches()
        writes = [batches.write(name, write_all) for name in "abc"]
        return await asyncio.gather(*writes, return_exceptions=True)

    a, b, c = asyncio.run(run())
    assert calls == [["a", "b", "c"]]
    assert a is None and c is None
    assert isinstance(b, ValueError) and str(b) == "b is not storable"


def test_a_burst_is_written_in_bounded_batches() -> None:
    store = Store()
    store.hold_first.clear()

    async def run() -> None:
        batches: WriteBatches[str] = WriteBatches()
        tasks = [asyncio.create_task(batches.write(str(n), store.write_all))
                 for n in range(2 * MAX_BATCH + 1)]
        await asyncio.sleep(0.05)
        store.hold_first.set()
        await asyncio.gather(*tasks)

    asyncio.run(run())
    assert [len(call) for call in store.calls] == [MAX_BATCH, MAX_BATCH, 1]


@pytest.mark.parametrize("writers", [1, 5])
def test_a_writer_that_left_does_not_stop_the_others(writers: int) -> None:
    store = Store()
    store.hold_first.clear()

    async def run() -> None:
        batches: WriteBatches[str] = WriteBatches()
        gone = asyncio.create_task(batches.write("gone", store.write_all))
        stay = [asyncio.create_task(batches.write(f"s{n}", store.write_all)) for n in range(writers)]
        await asyncio.sleep(0.05)
        gone.cancel()
        store.hold_first.set()
        await asyncio.gather(*stay)

    asyncio.run(run())
    written = sorted(item for call in store.calls for item in call)
    assert written == sorted(["gone", *(f"s{n}" for n in range(writers))])   # its event is kept too
