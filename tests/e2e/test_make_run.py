"""End to end: the platform started the way `make run` starts it, used the way API.md describes.

Starts `python -m services.supervisor` (what `make run` runs) on free ports with a fresh
DRTECH_HOME, signs up, logs in, uploads one image of each exam type, checks each diagnosis and
the history, logs out; kills one model service outright and sees the other exam types keep working
while the supervisor starts it again; then stops the supervisor with SIGTERM and checks no process
is left. The tests run in this order and share the one platform.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import ROOT, free_port, real_samples, sample_image_bytes

pytestmark = pytest.mark.e2e

LABELS = {
    "chest_xray": {"NORMAL", "PNEUMONIA"},
    "skin_lesion": {"akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"},
    "bone_xray": {"NORMAL", "ABNORMAL"},
}
MODEL_NAMES = {"chest_xray": "pneumonia", "skin_lesion": "skin", "bone_xray": "bone"}


def _processes_with_home(home: Path) -> list[int]:
    """PIDs of live processes whose environment carries this test's DRTECH_HOME."""
    marker = f"DRTECH_HOME={home}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().split()[2]
        except OSError:
            continue
        if marker in environ.split(b"\0") and state != "Z":
            pids.append(int(entry.name))
    return pids


def _component_pid(home: Path, module: str) -> int:
    """The PID of the component the supervisor runs as `python -m services.with_parent PID module ...`."""
    found = []
    for pid in _processes_with_home(home):
        try:
            arguments = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"services.with_parent" in arguments and module.encode() in arguments:
            found.append(pid)
    assert len(found) == 1, f"expected one {module} process, found {found}"
    return found[0]


def _wait_for_line(output: list[str], text: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in list(output):
            if text in line:
                return line
        time.sleep(0.2)
    pytest.fail(f"the supervisor never logged {text!r}:\n" + "".join(output[-40:]))


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    if not all((ROOT / "services" / task / "model" / "model.onnx").exists() for task in MODEL_NAMES.values()):
        pytest.fail("a shipped model is missing under services/<task>/model/model.onnx")
    home = tmp_path_factory.mktemp("drtech-home")
    http_port = free_port()
    env = dict(os.environ)
    env.update(
        DRTECH_HOME=str(home),
        DRTECH_HTTP_PORT=str(http_port),
        DRTECH_AUTH_PORT=str(free_port()),
        DRTECH_BONE_PORT=str(free_port()),
        DRTECH_SKIN_PORT=str(free_port()),
        DRTECH_PNEUMONIA_PORT=str(free_port()),
        DRTECH_ROUTER_PORT=str(free_port()),
        DRTECH_GATEWAY_INTERNAL_PORT=str(internal_port := free_port()),
    )
    if not real_samples():
        # A fresh clone without ../shared/data uploads generated stand-ins, which the models' gates
        # rightly refuse; the journey is the same with refusing off (the gates have their own tests).
        env["DRTECH_SERVING_REFUSE_UNREADABLE"] = "false"
    process = subprocess.Popen(
        [sys.executable, "-m", "services.supervisor", "--start-timeout", "180"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            if "Dr.Tech is running at" in line:
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + 300
    while not ready.is_set() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    if not ready.is_set():
        process.kill()
        pytest.fail("platform did not come up:\n" + "".join(output[-60:]))
    info = {"base": f"http://127.0.0.1:{http_port}", "internal": f"http://127.0.0.1:{internal_port}",
            "home": home, "process": process, "output": output}
    try:
        yield info
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
            for pid in _processes_with_home(home):
                os.kill(pid, signal.SIGKILL)


def test_a_new_user_gets_a_diagnosis_of_each_kind_and_sees_the_history(platform: dict) -> None:
    with httpx.Client(base_url=platform["base"], timeout=60) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        # Metrics and the gateway's own readiness are on the internal port only.
        assert client.get("/metrics").status_code == 404
        assert httpx.get(f"{platform['internal']}/readyz/gateway", timeout=60).status_code == 200

        signup = client.post(
            "/api/v1/auth/signup",
            json={
                "email": "e2e.user@example.org",
                "password": "correct horse 42",
                "first_name": "Ada",
                "surname": "Lovelace",
                "city": "London",
                "zip": "12345",
                "birth_date": "1990-12-10",
            },
        )
        assert signup.status_code == 201, signup.text
        assert signup.json()["email"] == "e2e.user@example.org"

        login = client.post(
            "/api/v1/auth/login", json={"email": "e2e.user@example.org", "password": "correct horse 42"}
        )
        assert login.status_code == 200, login.text
        token = login.json()["access_token"]
        assert login.json()["token_type"] == "bearer"
        auth = {"Authorization": f"Bearer {token}"}
        client.cookies.clear()  # the API path uses the bearer token only

        assert client.get("/api/v1/me", headers=auth).json()["first_name"] == "Ada"

        ids = []
        for exam_type in ("chest_xray", "skin_lesion", "bone_xray"):
            reply = client.post(
                "/api/v1/diagnoses",
                params={"explain": "true"},
                files={"file": ("upload.jpg", sample_image_bytes(exam_type), "image/jpeg")},
                data={"exam_type": exam_type},
                headers=auth,
            )
            assert reply.status_code == 201, reply.text
            diagnosis = reply.json()
            assert diagnosis["status"] == "completed"
            assert diagnosis["exam_type"] == exam_type
            assert diagnosis["label"] in LABELS[exam_type]
            assert set(diagnosis["probabilities"]) == LABELS[exam_type]
            assert math.isclose(sum(diagnosis["probabilities"].values()), 1.0, abs_tol=1e-3)
            assert diagnosis["confidence"] == pytest.approx(diagnosis["probabilities"][diagnosis["label"]])
            assert diagnosis["model"]["name"] == MODEL_NAMES[exam_type]
            assert diagnosis["model"]["version"]
            if exam_type == "bone_xray":
                assert diagnosis["extra"]["kl_grade"] in range(5)
            heatmap = client.get(f"/api/v1/diagnoses/{diagnosis['id']}/heatmap", headers=auth)
            assert heatmap.status_code == 200
            assert heatmap.content.startswith(b"\x89PNG")
            ids.append(diagnosis["id"])

        history = client.get("/api/v1/diagnoses", headers=auth).json()
        assert history["total"] == 3
        assert [item["id"] for item in history["items"]] == list(reversed(ids))
        chest_only = client.get("/api/v1/diagnoses", params={"exam_type": "chest_xray"}, headers=auth).json()
        assert [item["id"] for item in chest_only["items"]] == [ids[0]]

        image = client.get(f"/api/v1/diagnoses/{ids[0]}/image", headers=auth)
        assert image.status_code == 200 and image.headers["content-type"] in {"image/jpeg", "image/png"}

        bad = client.post(
            "/api/v1/diagnoses",
            files={"file": ("x.jpg", b"definitely not an image", "image/jpeg")},
            data={"exam_type": "chest_xray"},
            headers=auth,
        )
        assert bad.status_code in {415, 422} and bad.json()["detail"]

        assert client.delete(f"/api/v1/diagnoses/{ids[1]}", headers=auth).status_code == 204
        assert client.get("/api/v1/diagnoses", headers=auth).json()["total"] == 2

        models = client.get("/api/v1/models").json()
        assert {card["name"] for card in models} == {"bone", "skin", "pneumonia", "router"}

        assert client.post("/api/v1/auth/logout", headers=auth).status_code == 204
        assert client.get("/api/v1/me", headers=auth).status_code == 401


def test_a_killed_model_service_comes_back_while_the_other_exam_types_keep_working(platform: dict) -> None:
    home, output = platform["home"], platform["output"]
    with httpx.Client(base_url=platform["base"], timeout=60) as client:
        account = {"email": "restart@example.org", "password": "correct horse 42", "first_name": "Kim",
                   "surname": "Lee"}
        assert client.post("/api/v1/auth/signup", json=account).status_code == 201
        token = client.post("/api/v1/auth/login", json={k: account[k] for k in ("email", "password")})
        auth = {"Authorization": f"Bearer {token.json()['access_token']}"}
        client.cookies.clear()

        def diagnose(exam_type: str) -> dict:
            reply = client.post("/api/v1/diagnoses", data={"exam_type": exam_type}, headers=auth,
                                files={"file": ("upload.jpg", sample_image_bytes(exam_type), "image/jpeg")})
            assert reply.status_code == 201, reply.text
            return reply.json()

        killed = _component_pid(home, "services.skin")
        os.kill(killed, signal.SIGKILL)
        line = _wait_for_line(output, "skin exited unexpectedly", timeout_s=30)
        assert "(killed by SIGKILL); restarting it in 1 s (restart 1)" in line

        # Meanwhile: the platform says skin is not there, and chest X-rays are still diagnosed. The
        # skin upload gets the API's own answer, a failed record to retry (or, if skin was back
        # already, its diagnosis).
        meanwhile = client.get("/readyz")
        assert meanwhile.status_code in (200, 503)
        if meanwhile.status_code == 503:
            assert meanwhile.json()["detail"] == "not ready: skin (unreachable)"
        chest = diagnose("chest_xray")
        assert chest["status"] == "completed", chest
        skin = diagnose("skin_lesion")
        assert skin["status"] in ("failed", "completed"), skin

        _wait_for_line(output, "skin is healthy again (restart 1)", timeout_s=180)
        restarted = _component_pid(home, "services.skin")
        assert restarted != killed
        deadline = time.monotonic() + 60
        while skin["status"] == "failed" and time.monotonic() < deadline:
            retried = client.post(f"/api/v1/diagnoses/{skin['id']}/retry", headers=auth)
            assert retried.status_code == 200, retried.text
            skin = retried.json()
            if skin["status"] == "failed":
                time.sleep(1)       # the gateway dials a returned backend again within 5 s
        assert skin["status"] == "completed", skin
        assert skin["label"] in LABELS["skin_lesion"]
        assert diagnose("skin_lesion")["status"] == "completed"
        assert client.get("/readyz").json() == {"status": "ready", "services": dict.fromkeys(
            ("auth", "bone", "skin", "pneumonia", "router"), "SERVING")}
    assert platform["process"].poll() is None, "the supervisor kept running"


def test_sigterm_stops_every_process(platform: dict) -> None:
    process: subprocess.Popen = platform["process"]
    assert _processes_with_home(platform["home"]), "expected the platform's processes to be running"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=90) == 0, "".join(platform["output"][-40:])
    deadline = time.monotonic() + 10
    while _processes_with_home(platform["home"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_with_home(platform["home"]) == []
