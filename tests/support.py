"""Test helpers every tier uses: free ports, the real-data folder, test images.

Import helpers with `from tests.support import ...`; fixtures are in tests/conftest.py."""

from __future__ import annotations

import io
import os
import queue
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(task: str, env_overrides: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """`python -m services.<task> *args` as a process of its own (one inference thread unless
    `env_overrides` says otherwise), stdout and stderr piped."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "DRTECH_SERVING_INTRA_OP_THREADS": "1", **env_overrides}
    return subprocess.Popen(
        [sys.executable, "-m", f"services.{task}", *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def first_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The process's first line of stdout (a model service prints "listening on ..." once SERVING)."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(process.stdout.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        pytest.fail(f"no ready line within {timeout}s")


# Every developer and CI machine runs PostgreSQL here (trust auth, database `test`).
LOCAL_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
_local_postgres_missing: str | None = None   # why the local server could not be used, once looked for


def adopt_local_postgres(url: str = LOCAL_POSTGRES_URL) -> str:
    """With DRTECH_TEST_POSTGRES_URL unset, set it (for this run and the processes it starts) to `url`
    when that server answers, so `make test` runs the PostgreSQL tier wherever CI would; leave it unset
    when it does not. Returns one line saying which, for pytest's report header."""
    from services.auth.testing import POSTGRES_URL_ENV, postgres_unavailable_reason

    global _local_postgres_missing
    if os.environ.get(POSTGRES_URL_ENV):
        _local_postgres_missing = None   # the variable names the server: a skip says why that one fails
        return f"PostgreSQL tier: runs on {POSTGRES_URL_ENV} as set"
    os.environ[POSTGRES_URL_ENV] = url
    reason = postgres_unavailable_reason()
    if reason is None:
        _local_postgres_missing = None
        return f"PostgreSQL tier: runs on {url} (found answering; {POSTGRES_URL_ENV} unset)"
    del os.environ[POSTGRES_URL_ENV]
    # psycopg's messages run over several lines; a skip reason is one.
    _local_postgres_missing = (f"no PostgreSQL answers at {url} and {POSTGRES_URL_ENV} is unset "
                               f"({reason.splitlines()[0].split(': ', 1)[-1]})")
    return f"PostgreSQL tier: skipped: {_local_postgres_missing}"


def postgres_skip_reason() -> str | None:
    """None when the PostgreSQL tests can run; otherwise their one-line skip reason."""
    from services.auth.testing import postgres_unavailable_reason

    reason = postgres_unavailable_reason()
    if reason is None:
        return None
    return _local_postgres_missing or reason.splitlines()[0]


def data_dir() -> Path:
    return Path(os.environ.get("DRTECH_DATA_DIR", ROOT.parent / "shared" / "data"))


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def synthetic_image(kind: str, size: tuple[int, int] = (224, 224), seed: int = 0) -> Image.Image:
    """A deterministic stand-in image of roughly the right look for each exam type."""
    rng = np.random.default_rng(seed)
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width]
    if kind == "skin_lesion":
        skin = np.stack([np.full((height, width), c, np.float32) for c in (205, 160, 140)], axis=-1)
        dist = np.hypot(xx - width / 2, yy - height / 2) / (min(size) / 4)
        lesion = np.clip(1.2 - dist, 0, 1)[..., None]
        pixels = skin * (1 - 0.6 * lesion) + rng.normal(0, 6, (height, width, 3))
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    # Radiograph-like: dark background, a bright bony/chest structure, noise.
    body = np.exp(-(((xx - width / 2) / (width / 3.5)) ** 2 + ((yy - height / 2) / (height / 2.5)) ** 2))
    pixels = 30 + 170 * body + rng.normal(0, 8, (height, width))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "L")


def real_samples() -> bool:
    """Whether sample_image_bytes gives real images (../shared/data is there), which the shipped
    models' gates accept; its generated stand-ins are refused by them."""
    return all((data_dir() / name).is_dir() for name in ("chest_xray", "ham10000", "knee_kl"))


def sample_image_bytes(exam_type: str) -> bytes:
    """One real image of the exam type from ../shared/data when present, else a generated one."""
    folder = {
        "chest_xray": data_dir() / "chest_xray" / "train" / "PNEUMONIA",
        "skin_lesion": data_dir() / "ham10000" / "HAM10000_images",
        "bone_xray": data_dir() / "knee_kl" / "val" / "3",
    }[exam_type]
    if folder.is_dir():
        first = min(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
        return first.read_bytes()
    return jpeg_bytes(synthetic_image(exam_type))


def hold_argon2_verifications(monkeypatch,
                              first_only: bool = False) -> tuple[threading.Event, threading.Event]:
    """From now on every argon2 verification (with `first_only`, only the next one) sets `entered`,
    then waits for `release` (10 s at most) before checking: a log-in that holds its hashing slot
    for as long as a test needs."""
    from argon2 import PasswordHasher

    entered, release = threading.Event(), threading.Event()
    real_verify = PasswordHasher.verify
    held_once = threading.Lock()

    def held(hasher: PasswordHasher, stored: str, given: str) -> bool:
        if not first_only or held_once.acquire(blocking=False):
            entered.set()
            release.wait(10)
        return real_verify(hasher, stored, given)

    monkeypatch.setattr(PasswordHasher, "verify", held)
    return entered, release


class FinishedCall:
    """A grpc.aio unary call that has already been answered, as a fake stub returns it: awaited for
    its reply (or its error raised), then its trailing metadata."""

    def __init__(self, reply: object = None, trailing: object = None,
                 error: BaseException | None = None) -> None:
        self._reply, self._trailing, self._error = reply, trailing, error

    def __await__(self):  # type: ignore[no-untyped-def]
        return self._answer().__await__()

    async def _answer(self) -> object:
        if self._error is not None:
            raise self._error
        return self._reply

    async def trailing_metadata(self) -> object:
        return self._trailing
