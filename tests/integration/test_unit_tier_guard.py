"""The unit tier's guard (tests/unit/conftest.py) fails a unit test that opens a socket, starts a
process, calls gRPC or imports TensorFlow, and a unit run whose collection imported TensorFlow;
a test that stays in process passes. Each case runs the guard in a pytest of its own."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

GUARD = ROOT / "tests" / "unit" / "conftest.py"


def run_unit_tier(tmp_path: Path, test_source: str) -> subprocess.CompletedProcess[str]:
    """pytest on a folder holding the guard as its conftest and `test_source` as a test module."""
    tier = tmp_path / "unit"
    tier.mkdir()
    shutil.copy(GUARD, tier / "conftest.py")
    (tier / "test_case.py").write_text(test_source, encoding="utf-8")
    return subprocess.run(
        [sys.executable, "-m", "pytest", str(tier), "-q", "-p", "no:cacheprovider", "--rootdir", str(tier)],
        cwd=tmp_path, capture_output=True, text=True, timeout=180, check=False,
    )


def test_a_test_that_stays_in_process_passes(tmp_path: Path) -> None:
    run = run_unit_tier(tmp_path, "def test_arithmetic():\n    assert 1 + 1 == 2\n")
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ("import socket\n    socket.create_connection(('127.0.0.1', 9), timeout=1)", "connect a socket"),
        ("import socket\n    with socket.socket() as s:\n        s.bind(('127.0.0.1', 0))", "bind a socket"),
        ("import subprocess, sys\n    subprocess.run([sys.executable, '-c', 'pass'])", "start a process"),
        ("import grpc\n    grpc.server(None)", "open a gRPC server"),
        (("import grpc\n    from protos.drtech.v1 import auth_pb2, auth_pb2_grpc\n"
          "    stub = auth_pb2_grpc.AuthServiceStub(grpc.insecure_channel('127.0.0.1:9'))\n"
          "    stub.Authenticate(auth_pb2.AuthenticateRequest(access_token='x'), timeout=1)"), "make a gRPC call"),
        # Standing in for `import tensorflow` (seconds, and it starts processes of its own).
        ("import sys, types\n    sys.modules['tensorflow'] = types.ModuleType('tensorflow')",
         "imported tensorflow: it belongs in tests/training"),
    ],
    ids=["connect", "bind", "subprocess", "grpc-server", "grpc-call", "tensorflow"],
)
def test_a_unit_test_that_leaves_its_process_fails_naming_what_it_did(tmp_path: Path, body: str, named: str) -> None:
    run = run_unit_tier(tmp_path, f"def test_reaches_out():\n    {body}\n")
    assert run.returncode == 1, run.stdout + run.stderr
    assert named in run.stdout, run.stdout


def test_one_that_catches_the_refusal_still_fails(tmp_path: Path) -> None:
    """A client's `except Exception` retry loop, say, cannot hide the attempt."""
    run = run_unit_tier(tmp_path, "import socket\n\ndef test_swallows():\n    try:\n"
                                  "        socket.create_connection(('127.0.0.1', 9), timeout=1)\n"
                                  "    except BaseException:\n        pass\n")
    assert run.returncode == 1 and "connect a socket" in run.stdout, run.stdout + run.stderr


def test_a_unit_run_whose_collection_imports_tensorflow_stops_naming_the_tier_to_use(tmp_path: Path) -> None:
    run = run_unit_tier(tmp_path, "import sys, types\nsys.modules['keras'] = types.ModuleType('keras')\n\n"
                                  "def test_anything():\n    pass\n")
    assert run.returncode == 4, run.stdout + run.stderr   # pytest's usage error: nothing ran
    assert "imported keras while collecting" in run.stderr and "tests/training" in run.stderr
