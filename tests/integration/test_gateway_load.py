"""Load: many diagnoses at concurrency 32 through the gateway's HTTP API, on the whole stack (auth,
the model services, the gateway: tests/web_stack.py), on SQLite and on PostgreSQL.

Mixed exam types and images (JPEG, PNG, DICOM; `auto` routed by DICOM tags), each image different.
Specification: no answer is a 5xx (32 clients fit the upload queue; none is turned away), every 201
has its record, and the bytes stored for it are the bytes sent (SHA-256 of the blob the record names,
and of GET .../image for the images served as stored). `make test` sends 300; `make soak` 2,000
(DRTECH_SOAK=1) and prints the figures.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from gateway import records
from gateway.database import create_database_engine, session_factory
from gateway.storage import LocalBlobStore
from tests.support import jpeg_bytes, synthetic_image
from tests.unit.test_imaging import make_dicom
from tests.web_stack import Stack, running_stack

SOAK = os.environ.get("DRTECH_SOAK") == "1"
DIAGNOSES = 2000 if SOAK else 300
CONCURRENCY = 32
PASSWORD = "correct horse 42"


@dataclass(frozen=True)
class Upload:
    name: str
    data: bytes
    exam_type: str          # as requested
    expected: str           # the exam type it must be diagnosed as
    media_type: str


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def upload_for(index: int) -> Upload:
    """The index-th upload of the mix: deterministic, and different bytes for every index."""
    rng = np.random.default_rng(index)
    side = int(rng.integers(160, 480))
    kind = index % 5
    if kind == 0:
        image = synthetic_image("chest_xray", (side, side), seed=index)
        return Upload(f"chest-{index}.jpg", jpeg_bytes(image), "chest_xray", "chest_xray", "image/jpeg")
    if kind == 1:
        image = synthetic_image("skin_lesion", (side, side), seed=index)
        return Upload(f"skin-{index}.jpg", jpeg_bytes(image), "skin_lesion", "skin_lesion", "image/jpeg")
    if kind == 2:
        image = synthetic_image("bone_xray", (side, side), seed=index)
        return Upload(f"knee-{index}.png", _png(image), "bone_xray", "bone_xray", "image/png")
    if kind == 3:
        image = synthetic_image("skin_lesion", (side, side), seed=index)
        return Upload(f"skin-{index}.png", _png(image), "skin_lesion", "skin_lesion", "image/png")
    # A chest radiograph as DICOM (Modality CR, BodyPartExamined CHEST): `auto` routes it by its tags.
    pixels = (rng.random((side, side)) * 4000).astype(np.uint16)
    return Upload(f"chest-{index}.dcm", make_dicom(pixels), "auto", "chest_xray", "application/dicom")


@pytest.fixture
def stack(tmp_path: Path, database_url: str) -> Iterator[Stack]:
    with running_stack(tmp_path / "home", tmp_path / "models", database_url=database_url) as running:
        yield running


async def _log_in(client: httpx.AsyncClient, email: str) -> dict[str, str]:
    signed = await client.post("/api/v1/auth/signup", json={
        "email": email, "password": PASSWORD,
        "first_name": "Load", "surname": "Test"})
    assert signed.status_code == 201, signed.text
    logged = await client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert logged.status_code == 200, logged.text
    return {"Authorization": f"Bearer {logged.json()['access_token']}"}


@dataclass
class Outcome:
    upload: Upload
    status: int
    body: dict
    seconds: float


async def _send_all(url: str, uploads: list[Upload]) -> tuple[list[Outcome], dict[str, str], float]:
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        auth = await _log_in(client, f"load-{time.monotonic_ns()}@example.org")
        turns = asyncio.Semaphore(CONCURRENCY)

        async def send(upload: Upload) -> Outcome:
            async with turns:
                started = time.perf_counter()
                reply = await client.post(
                    "/api/v1/diagnoses", headers=auth, data={"exam_type": upload.exam_type},
                    files={"file": (upload.name, upload.data, upload.media_type)})
                body = reply.json() if reply.headers.get("content-type", "").startswith("application/json") else {}
                return Outcome(upload, reply.status_code, body, time.perf_counter() - started)

        started = time.perf_counter()
        outcomes = await asyncio.gather(*(send(upload) for upload in uploads))
        return list(outcomes), auth, time.perf_counter() - started


async def _check_records(url: str, auth: dict[str, str], accepted: list[Outcome]) -> None:
    """Every accepted diagnosis is listed and readable; an image served as stored is the bytes sent."""
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        listed = await client.get("/api/v1/diagnoses", headers=auth, params={"limit": 1})
        assert listed.json()["total"] == len(accepted)
        turns = asyncio.Semaphore(8)

        async def check(outcome: Outcome) -> None:
            async with turns:
                record = await client.get(f"/api/v1/diagnoses/{outcome.body['id']}", headers=auth)
                assert record.status_code == 200, record.text
                assert record.json()["exam_type"] == outcome.upload.expected
                if outcome.upload.media_type != "application/dicom":   # DICOM is shown as a PNG
                    image = await client.get(f"/api/v1/diagnoses/{outcome.body['id']}/image", headers=auth)
                    assert image.status_code == 200
                    assert hashlib.sha256(image.content).digest() == hashlib.sha256(outcome.upload.data).digest()

        await asyncio.gather(*(check(outcome) for outcome in accepted))


def test_concurrent_diagnoses_lose_nothing_and_store_the_bytes_sent(stack: Stack, database_url: str) -> None:
    uploads = [upload_for(index) for index in range(DIAGNOSES)]
    outcomes, auth, elapsed = asyncio.run(_send_all(stack.url, uploads))

    statuses = Counter(outcome.status for outcome in outcomes)
    accepted = [outcome for outcome in outcomes if outcome.status == 201]
    latencies = sorted(outcome.seconds for outcome in outcomes)
    print(f"\nload on {database_url.split(':')[0]}: {DIAGNOSES} diagnoses at concurrency {CONCURRENCY} "
          f"in {elapsed:.1f} s ({DIAGNOSES / elapsed:.1f}/s); statuses {dict(statuses)}; latency "
          f"p50 {statistics.median(latencies):.2f} s, p95 {latencies[int(0.95 * len(latencies))]:.2f} s, "
          f"max {latencies[-1]:.2f} s")
    assert not [o for o in outcomes if o.status >= 500], statuses
    # The images are all valid and every model service is up: each is diagnosed, none refused.
    assert statuses == {201: DIAGNOSES}, [(o.upload.name, o.status, o.body) for o in outcomes if o.status != 201][:5]
    assert {outcome.body["status"] for outcome in accepted} == {"completed"}

    asyncio.run(_check_records(stack.url, auth, accepted))
    # The blob store, read directly: the blob each record names holds exactly the bytes sent.
    engine = create_database_engine(database_url)
    uploads_store = LocalBlobStore(stack.home / "uploads")
    try:
        with session_factory(engine)() as session:
            for outcome in accepted:
                record = session.get(records.Diagnosis, outcome.body["id"])
                assert record is not None, outcome.body["id"]
                sent = hashlib.sha256(outcome.upload.data).hexdigest()
                assert record.image_sha256 == sent
                assert hashlib.sha256(uploads_store.get(record.image_sha256)).hexdigest() == sent
    finally:
        engine.dispose()
