"""Uploads in memory (gateway/upload_memory.py): bounded by count and by bytes, served in arrival
order, and a waiter that leaves holds nothing."""

from __future__ import annotations

import asyncio

import pytest

from gateway.upload_memory import UploadMemory


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def started(memory: UploadMemory, size: int) -> asyncio.Task[None]:
    return asyncio.create_task(memory.acquire(size))


def test_small_uploads_go_together_up_to_the_count() -> None:
    async def run() -> None:
        memory = UploadMemory(max_uploads=3, max_bytes=100)
        tasks = [started(memory, 10) for _ in range(4)]
        await settle()
        assert [task.done() for task in tasks] == [True, True, True, False]
        memory.release(10)
        await settle()
        assert tasks[3].done() and (memory.uploads, memory.bytes) == (3, 30)

    asyncio.run(run())


def test_bytes_bound_how_many_large_uploads_go_together() -> None:
    async def run() -> None:
        memory = UploadMemory(max_uploads=16, max_bytes=100)
        tasks = [started(memory, 40) for _ in range(3)]
        await settle()
        assert [task.done() for task in tasks] == [True, True, False]   # 80 held; 120 would not fit
        memory.release(40)
        await settle()
        assert tasks[2].done() and memory.bytes == 80

    asyncio.run(run())


def test_an_upload_larger_than_the_budget_goes_alone() -> None:
    async def run() -> None:
        memory = UploadMemory(max_uploads=16, max_bytes=100)
        await memory.acquire(10)
        huge = started(memory, 500)
        await settle()
        assert not huge.done()
        memory.release(10)
        await settle()
        assert huge.done() and memory.bytes == 500
        small = started(memory, 1)
        await settle()
        assert not small.done(), "nothing goes beside an upload over the budget"
        memory.release(500)
        await settle()
        assert small.done()

    asyncio.run(run())


def test_a_waiting_large_upload_is_not_overtaken_by_small_ones() -> None:
    async def run() -> None:
        memory = UploadMemory(max_uploads=16, max_bytes=100)
        await memory.acquire(60)
        large = started(memory, 60)
        await settle()
        small = started(memory, 10)   # would fit now (70), but the large one came first
        await settle()
        assert not large.done() and not small.done()
        memory.release(60)
        await settle()
        assert large.done() and small.done() and memory.bytes == 70

    asyncio.run(run())


def test_a_waiter_that_leaves_holds_nothing_and_lets_the_next_go() -> None:
    async def run() -> None:
        memory = UploadMemory(max_uploads=16, max_bytes=100)
        await memory.acquire(60)
        leaving = started(memory, 60)
        await settle()
        behind = started(memory, 30)   # fits beside the first, but waits behind `leaving`
        await settle()
        assert not behind.done()
        leaving.cancel()
        await settle()
        assert behind.done() and (memory.uploads, memory.bytes) == (2, 90)
        with pytest.raises(asyncio.CancelledError):
            await leaving

    asyncio.run(run())


def test_a_waiter_cancelled_as_its_turn_comes_gives_its_room_back() -> None:
    async def run() -> None:
        memory = UploadMemory(max_uploads=1, max_bytes=100)
        await memory.acquire(10)
        waiting = started(memory, 10)
        await settle()
        memory.release(10)   # its turn: granted, though the task has not run yet
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert (memory.uploads, memory.bytes) == (0, 0)
        await asyncio.wait_for(memory.acquire(10), 1)

    asyncio.run(run())


def test_a_timeout_while_waiting_is_a_timeout_and_holds_nothing() -> None:
    async def run() -> None:
        memory = UploadMemory(max_uploads=1, max_bytes=100)
        await memory.acquire(10)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(memory.acquire(10), 0.05)
        assert (memory.uploads, memory.bytes) == (1, 10)
        memory.release(10)
        assert (memory.uploads, memory.bytes) == (0, 0)

    asyncio.run(run())
