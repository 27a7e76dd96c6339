"""`python -m gateway` as a real process: picks free ports, says where it listens, stops on SIGTERM;
refuses development settings in production with one line."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

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
        [sys.executable, "-m", "gateway", "--port", "0", "--internal-port", "0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines: list[str] = []
        url = internal = None
        deadline = time.monotonic() + 60
        assert process.stdout is not None
        while internal is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            match = re.search(r"listening on (http://127\.0\.0\.1:(\d+))", line)
            url = match.group(1) if match else url
            match = re.search(r"internal endpoints on (http://127\.0\.0\.1:(\d+))", line)
            internal = match.group(1) if match else internal
        assert url is not None and internal is not None, "".join(lines)
        assert int(url.rsplit(":", 1)[1]) > 0 and url != internal

        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
        ready = httpx.get(f"{url}/readyz", timeout=10)
        assert ready.status_code == 503
        assert "auth (unreachable)" in ready.json()["detail"] and dead not in ready.text
        detailed = httpx.get(f"{internal}/readyz", timeout=10)
        assert f"auth (unreachable at {dead}" in detailed.json()["detail"]
        assert httpx.get(f"{internal}/metrics", timeout=10).status_code == 200
        assert (tmp_path / "gateway.db").exists()

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize(
    ("module", "env", "named"),
    [
        ("gateway", {}, "DRTECH_GATEWAY_DATABASE_URL is empty"),
        ("gateway", {"DRTECH_GATEWAY_DATABASE_URL": "postgresql://drtech@db/drtech",
                     "DRTECH_GATEWAY_FORWARDED_ALLOW_IPS": "10.0.0.0/8"}, "DRTECH_GATEWAY_FORWARDED_ALLOW_IPS entry"),
        ("gateway", {"DRTECH_GATEWAY_DATABASE_URL": "postgresql://drtech@db/drtech",
                     "DRTECH_GATEWAY_COOKIE_SECURE": "false"}, "DRTECH_GATEWAY_COOKIE_SECURE is off"),
        ("services.auth", {"DRTECH_AUTH_DATABASE_URL": "sqlite:///auth.db"}, "DRTECH_AUTH_DATABASE_URL is SQLite"),
    ],
)
def test_in_production_a_development_setting_stops_the_process_with_one_line(
    tmp_path: Path, module: str, env: dict[str, str], named: str
) -> None:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("DRTECH_")}
    environment.update(DRTECH_HOME=str(tmp_path), DRTECH_ENV="production", **env)
    finished = subprocess.run([sys.executable, "-m", module, "--port", "0"], cwd=ROOT, env=environment,
                              capture_output=True, text=True, timeout=120)
    assert finished.returncode == 2, finished.stderr
    assert finished.stdout == "" and finished.stderr.count("\n") == 1, finished.stderr
    assert "refusing to start: DRTECH_ENV=production refuses development settings" in finished.stderr
    assert named in finished.stderr
