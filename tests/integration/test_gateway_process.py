"""`python -m gateway` as a real process: picks a free port, says where it listens, stops on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support import ROOT, free_port


def test_python_m_gateway_serves_on_a_free_port_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    env = dict(os.environ)
    # Backends that are certainly not there: the gateway must still start and say it is not ready.
    dead = f"127.0.0.1:{free_port()}"
    env.update(
        DRTECH_HOME=str(tmp_path),
        DRTECH_AUTH_ADDR=dead,
        DRTECH_BONE_ADDR=dead,
        DRTECH_SKIN_ADDR=dead,
        DRTECH_PNEUMONIA_ADDR=dead,
        PYTHONUNBUFFERED="1",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--port", "0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines: list[str] = []
        url = None
        deadline = time.monotonic() + 60
        assert process.stdout is not None
        while url is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            match = re.search(r"listening on (http://127\.0\.0\.1:(\d+))", line)
            if match:
                url = match.group(1)
        assert url is not None, "".join(lines)
        assert int(url.rsplit(":", 1)[1]) > 0

        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
        ready = httpx.get(f"{url}/readyz", timeout=10)
        assert ready.status_code == 503
        assert "auth (unreachable" in ready.json()["detail"]
        assert (tmp_path / "gateway.db").exists()

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
