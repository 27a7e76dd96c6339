"""The Makefile's plan on a fresh clone (`make -n`: printed, not run)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_make_protos_on_a_fresh_clone_installs_grpc_tools_first_and_runs_protoc_once_per_proto(tmp_path):
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(REPO / name, tmp_path / name)
    protos = sorted((REPO / "protos" / "drtech" / "v1").glob("*.proto"))
    (tmp_path / "protos" / "drtech" / "v1").mkdir(parents=True)
    for proto in protos:
        shutil.copy(proto, tmp_path / "protos" / "drtech" / "v1" / proto.name)

    plan = subprocess.run(["make", "-n", "protos"], cwd=tmp_path, capture_output=True, text=True,
                          check=True, timeout=60).stdout.splitlines()

    install = next(i for i, line in enumerate(plan) if "pip install" in line and "-e" in line)
    compiles = [i for i, line in enumerate(plan) if "grpc_tools.protoc" in line]
    assert len(compiles) == len(protos), plan
    assert all(i > install for i in compiles), f"protoc before grpc_tools is installed: {plan}"
    for proto in protos:
        assert sum(line.endswith(f"protos/drtech/v1/{proto.name}") for line in plan) == 1, plan
