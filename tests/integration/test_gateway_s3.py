"""The gateway on S3 (DRTECH_GATEWAY_BLOB_STORE=s3) against a real SeaweedFS on loopback: an upload
and its heatmap land in the bucket under their SHA-256, come back whole, and a delete leaves no
object behind. The auth and model services are the in-process fakes of tests/unit/test_gateway_http.py.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from gateway.app import create_app, internal_app
from gateway.settings import GatewaySettings
from tests.s3_server import REGION, SeaweedFS
from tests.unit.test_gateway_http import LIVE_TOKEN, ChestModelThatExplains, OneLiveSession, png_bytes

AUTH = {"Authorization": f"Bearer {LIVE_TOKEN}"}


@pytest.fixture
def prefix(s3_server: SeaweedFS) -> str:
    return s3_server.new_prefix()


@pytest.fixture
def client(s3_server: SeaweedFS, prefix: str, tmp_path: Path) -> Iterator[TestClient]:
    settings = GatewaySettings(
        DRTECH_HOME=tmp_path, blob_store="s3", s3_bucket=s3_server.bucket, s3_prefix=prefix,
        s3_endpoint_url=s3_server.endpoint_url, s3_region=REGION, s3_addressing_style="path",
    )
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        client.app.state.gateway.backends.auth = OneLiveSession()
        client.app.state.gateway.backends.models["pneumonia"] = ChestModelThatExplains()
        yield client


def objects(server: SeaweedFS, prefix: str) -> list[str]:
    listed = server.client().list_objects_v2(Bucket=server.bucket, Prefix=prefix).get("Contents", [])
    return sorted(item["Key"][len(prefix):] for item in listed)


def sharded(digest: str) -> str:
    return f"{digest[:2]}/{digest[2:4]}/{digest}"


def test_an_upload_and_its_heatmap_live_in_the_bucket_and_a_delete_leaves_no_object(
    client: TestClient, s3_server: SeaweedFS, prefix: str, tmp_path: Path
) -> None:
    # Noise, so the PNG is larger than one streamed chunk (64 KiB).
    pixels = np.random.default_rng(3).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    upload = png_bytes(Image.fromarray(pixels))
    assert len(upload) > 64 * 1024
    created = client.post("/api/v1/diagnoses", params={"explain": "true"}, files={"file": ("x.png", upload)},
                          data={"exam_type": "chest_xray"}, headers=AUTH)
    assert created.status_code == 201, created.text
    body = created.json()

    image_key = f"uploads/{sharded(hashlib.sha256(upload).hexdigest())}"
    image = client.get(body["image_url"], headers=AUTH)
    assert image.status_code == 200 and image.content == upload
    assert image.headers["content-length"] == str(len(upload)) and image.headers["accept-ranges"] == "none"
    heatmap = client.get(body["heatmap_url"], headers=AUTH)
    assert heatmap.status_code == 200 and heatmap.headers["content-type"] == "image/png"
    heatmap_key = f"heatmaps/{sharded(hashlib.sha256(heatmap.content).hexdigest())}"
    assert objects(s3_server, prefix) == sorted([image_key, heatmap_key])
    assert not [p for p in (tmp_path / "uploads", tmp_path / "heatmaps") if p.exists()], "nothing on disk"

    # A second record with the same bytes shares the objects; deleting one record keeps them.
    again = client.post("/api/v1/diagnoses", params={"explain": "true"}, files={"file": ("y.png", upload)},
                        data={"exam_type": "chest_xray"}, headers=AUTH)
    assert again.status_code == 201
    assert client.delete(f"/api/v1/diagnoses/{body['id']}", headers=AUTH).status_code == 204
    assert objects(s3_server, prefix) == sorted([image_key, heatmap_key])
    assert client.get(again.json()["image_url"], headers=AUTH).content == upload

    # The last record gone: no object left, not even an aside copy.
    assert client.delete(f"/api/v1/diagnoses/{again.json()['id']}", headers=AUTH).status_code == 204
    assert objects(s3_server, prefix) == []


def test_an_upload_gone_from_the_bucket_is_410(client: TestClient, s3_server: SeaweedFS, prefix: str) -> None:
    upload = png_bytes(Image.new("RGB", (32, 32), (10, 20, 30)))
    created = client.post("/api/v1/diagnoses", files={"file": ("x.png", upload)},
                          data={"exam_type": "chest_xray"}, headers=AUTH).json()
    key = f"{prefix}uploads/{sharded(hashlib.sha256(upload).hexdigest())}"
    s3_server.client().delete_object(Bucket=s3_server.bucket, Key=key)
    gone = client.get(created["image_url"], headers=AUTH)
    assert gone.status_code == 410 and gone.json()["detail"] == "The stored upload is gone."


def test_readiness_checks_the_bucket(client: TestClient) -> None:
    async def auth_serving(timeout_s: float) -> dict[str, str]:   # the gRPC checks are not at issue
        return {"auth": "SERVING"}

    client.app.state.gateway.backends.check_health = auth_serving
    internal = TestClient(internal_app(client.app), base_url="http://127.0.0.1")
    checks = internal.get("/readyz/gateway").json()["checks"]
    assert checks["uploads"] == "ok" and checks["heatmaps"] == "ok"
    client.app.state.gateway.uploads.bucket = "no-such-bucket-here"
    checks = internal.get("/readyz/gateway").json()["checks"]
    assert checks["uploads"].startswith("unreachable (")


def _closed_port() -> int:
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        return listener.getsockname()[1]


def test_an_object_store_that_does_not_answer_is_503_as_a_full_disk_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upload then keeps nothing and the client is told to come back; a stored image that cannot be
    read is 503 too, not a bare 500."""
    from gateway.storage import S3BlobStore, s3_client

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "drtech-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "drtech-test")
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    settings = GatewaySettings(
        DRTECH_HOME=tmp_path, blob_store="s3", s3_bucket="drtech", s3_endpoint_url=endpoint, s3_region=REGION,
        s3_addressing_style="path", s3_timeout_s=1,
    )
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        client.app.state.gateway.backends.auth = OneLiveSession()
        client.app.state.gateway.backends.models["pneumonia"] = ChestModelThatExplains()
        upload = {"file": ("x.png", png_bytes(Image.new("RGB", (32, 32))))}
        reply = client.post("/api/v1/diagnoses", files=upload, data={"exam_type": "chest_xray"}, headers=AUTH)
        assert reply.status_code == 503, reply.text
        assert reply.headers["Retry-After"] == "30"
        assert "object store did not answer" in reply.json()["detail"]
        assert client.get("/api/v1/diagnoses", headers=AUTH).json()["total"] == 0

    local = GatewaySettings(DRTECH_HOME=tmp_path / "local")
    with TestClient(create_app(local), base_url="http://127.0.0.1") as client:
        client.app.state.gateway.backends.auth = OneLiveSession()
        client.app.state.gateway.backends.models["pneumonia"] = ChestModelThatExplains()
        upload = {"file": ("x.png", png_bytes(Image.new("RGB", (32, 32))))}
        made = client.post("/api/v1/diagnoses", files=upload, data={"exam_type": "chest_xray"},
                           headers=AUTH).json()
        dead = s3_client(endpoint, REGION, "path", 1, 4)
        client.app.state.gateway.uploads = S3BlobStore(dead, "drtech", "")
        reply = client.get(made["image_url"], headers=AUTH)
        assert reply.status_code == 503, reply.text
        assert reply.headers["Retry-After"] == "30"
