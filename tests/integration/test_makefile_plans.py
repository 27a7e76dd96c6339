"""What `make` would run (`make -n`, a process of its own, on a fresh copy of the repository): the
protos, the installs from the locks with hashes, `make lock`. The locks themselves are checked in
process in tests/unit/test_makefile.py."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.unit.test_makefile import (
    LOCKS,
    PROFILES,
    REPO,
)

needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")


@needs_make
def test_make_protos_on_a_fresh_clone_installs_grpc_tools_first_and_runs_protoc_once_per_proto(tmp_path):
    fresh_clone(tmp_path)
    protos = sorted((REPO / "protos" / "drtech" / "v1").glob("*.proto"))
    (tmp_path / "protos" / "drtech" / "v1").mkdir(parents=True)
    for proto in protos:
        shutil.copy(proto, tmp_path / "protos" / "drtech" / "v1" / proto.name)

    plan = make_plan(tmp_path, "protos")

    install = next(i for i, line in enumerate(plan) if "pip install" in line and line.endswith("-e ."))
    compiles = [i for i, line in enumerate(plan) if "grpc_tools.protoc" in line]
    assert len(compiles) == len(protos), plan
    assert all(i > install for i in compiles), f"protoc before grpc_tools is installed: {plan}"
    for proto in protos:
        assert sum(line.endswith(f"protos/drtech/v1/{proto.name}") for line in plan) == 1, plan


def fresh_clone(tmp_path: Path) -> Path:
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(REPO / name, tmp_path / name)
    shutil.copytree(LOCKS, tmp_path / "requirements")
    return tmp_path


def make_plan(where: Path, *targets: str) -> list[str]:
    """What `make -n` would run, as a make of its own: under `make test` the outer make's variables
    would make this one a sub-make that prints "Entering directory" lines."""
    env = {key: value for key, value in os.environ.items() if key not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    return subprocess.run(["make", "--no-print-directory", "-n", *targets], cwd=where, capture_output=True,
                          text=True, check=True, timeout=60, env=env).stdout.splitlines()


@needs_make
@pytest.mark.parametrize("target, profile", [("install-run", "run"), ("install-test", "test"),
                                             ("install-bench", "bench")])
def test_make_installs_each_profile_from_its_lock_with_hashes(tmp_path: Path, target: str, profile: str) -> None:
    plan = make_plan(fresh_clone(tmp_path), target)
    installs = [line.strip() for line in plan if "pip install" in line]
    assert installs == [
        # the venv, made again from scratch unless one with a working pip is there; its stamp last
        "rm -rf .venv && python3 -m venv .venv && .venv/bin/python -m pip install --quiet --require-hashes"
        " -r requirements/build.txt && touch .venv/.created \\",
        ".venv/bin/python -m pip install --quiet --require-hashes -r requirements/build.txt",
        f".venv/bin/python -m pip install --quiet --require-hashes -r requirements/{profile}.txt",
        # the project last, resolving nothing, built by the locked setuptools
        ".venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .",
    ], plan
    # The Python check still comes before the venv is made.
    assert "sys.version_info >= (3, 11)" in plan[0]


@needs_make
def test_a_changed_lock_reinstalls_and_an_unchanged_one_does_not(tmp_path: Path) -> None:
    clone = fresh_clone(tmp_path)
    (clone / ".venv" / "bin").mkdir(parents=True)
    (clone / ".venv" / "bin" / "python").touch()
    (clone / ".venv" / ".created").touch()   # a venv made and ready
    stamp = clone / ".venv" / ".run-installed"
    stamp.touch()
    sources = [clone / "pyproject.toml", *(clone / "requirements").glob("*.txt")]
    for path in sources:
        os.utime(path, (1_000_000_000, 1_000_000_000))
    os.utime(stamp, (2_000_000_000, 2_000_000_000))
    assert not [line for line in make_plan(clone, "install-run") if "pip install" in line]

    os.utime(clone / "requirements" / "run.txt", (3_000_000_000, 3_000_000_000))
    plan = make_plan(clone, "install-run")
    assert any("--require-hashes -r requirements/run.txt" in line for line in plan), plan


@needs_make
def test_make_lock_regenerates_every_lock_with_a_pinned_uv(tmp_path: Path) -> None:
    plan = make_plan(fresh_clone(tmp_path), "lock")
    assert ".venv/bin/python -m pip install --quiet --require-hashes -r requirements/uv.txt" in plan
    compiles = [line for line in plan if line.startswith(".venv/bin/uv pip compile")]
    outputs = [line.rsplit(" -o ", 1)[1] for line in compiles]
    assert sorted(outputs) == sorted(f"requirements/{path.name}" for path in LOCKS.glob("*.txt"))
    for line in compiles:
        assert "--generate-hashes" in line and "--universal" in line and "--python-version 3.11" in line
    for profile, extras in PROFILES.items():
        line = next(line for line in compiles if line.endswith(f"-o requirements/{profile}.txt"))
        assert re.findall(r"--extra (\S+)", line) == list(extras), line
    # bench first: the others are constrained by it, so every profile shares its versions.
    assert outputs.index("requirements/bench.txt") < min(
        outputs.index(f"requirements/{profile}.txt") for profile in ("run", "test", "gpu")
    )
