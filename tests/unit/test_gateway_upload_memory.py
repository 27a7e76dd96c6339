"""Uploads in memory (gateway/upload_memory.py): bounded by count and by bytes, served in arrival
order, and a waiter that leaves holds nothing; a retry holds room for its own stored upload."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.settings import GatewaySettings
from gateway.upload_memory import COPIES_IN_FLIGHT, UploadMemory
from protos.drtech.v1 import diagnosis_pb2
from tests.unit.test_gateway_http import LIVE_TOKEN, OneLiveSession
from tests.unit.test_imaging import encode, gradient_rgb


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


class DownThenUp:
    """A model service that is unavailable for the first call and answers every later one."""

    def __init__(self) -> None:
        self.calls = 0

    async def Diagnose(self, request: diagnosis_pb2.DiagnoseRequest,
                       timeout: float) -> diagnosis_pb2.DiagnoseResponse:
        self.calls += 1
        if self.calls == 1:
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                       "connection refused")
        return diagnosis_pb2.DiagnoseResponse(
            request_id=request.request_id, label="NORMAL", label_display="Normal", confidence=0.9,
            probabilities=[
                diagnosis_pb2.ClassProbability(label="NORMAL", display_name="Normal", probability=0.9),
                diagnosis_pb2.ClassProbability(label="PNEUMONIA", display_name="Pneumonia", probability=0.1),
            ],
            model=diagnosis_pb2.ModelRef(name="pneumonia", version="test"))


def test_a_retry_holds_room_for_its_stored_upload_not_for_the_largest_upload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After an outage every failed diagnosis may be retried at once: each holds what its own upload
    needs, as a new upload of that size does."""
    image = encode(gradient_rgb(256, 256), "JPEG")
    headers = {"Authorization": f"Bearer {LIVE_TOKEN}"}
    with TestClient(create_app(GatewaySettings(DRTECH_HOME=tmp_path)), base_url="http://127.0.0.1") as client:
        ctx = client.app.state.gateway
        ctx.backends.auth = OneLiveSession()
        ctx.backends.models["pneumonia"] = DownThenUp()
        held: list[int] = []
        acquire = ctx.upload_slots.acquire

        async def recorded(size: int) -> None:
            held.append(size)
            await acquire(size)

        monkeypatch.setattr(ctx.upload_slots, "acquire", recorded)
        failed = client.post("/api/v1/diagnoses", files={"file": ("x.jpg", image)},
                             data={"exam_type": "chest_xray"}, headers=headers)
        assert failed.status_code == 201 and failed.json()["status"] == "failed", failed.text
        retried = client.post(f"/api/v1/diagnoses/{failed.json()['id']}/retry", headers=headers)
        assert retried.status_code == 200 and retried.json()["status"] == "completed", retried.text
    assert held == [COPIES_IN_FLIGHT * len(image)] * 2
    assert len(image) < ctx.settings.max_upload_bytes // 100
