"""The unit tier's promise, enforced: no sockets, no subprocesses, no TensorFlow (README.md, "Tests").

A unit test that connects or binds a socket, starts a gRPC server or channel, or starts a process
fails, naming the call; a unit run that imports TensorFlow or Keras fails, naming the module. Tests
that need any of these belong in tests/integration (processes, sockets) or tests/training
(TensorFlow)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc._channel as grpc_channel
import grpc.aio
import grpc.aio._channel as grpc_aio_channel
import pytest

UNIT_TIER = Path(__file__).resolve().parent
# Importing either costs seconds and gigabytes; the serving path never needs them (ONNX Runtime).
HEAVY_MODULES = ("tensorflow", "keras")
# Every kind of call on a real gRPC channel, blocking and asyncio (grpc exposes no public hook).
_GRPC_CALLS = tuple(
    cls for module in (grpc_channel, grpc_aio_channel) for cls in vars(module).values()
    if isinstance(cls, type) and cls.__module__ == module.__name__ and cls.__name__.endswith("MultiCallable")
)


class UnitTierViolation(BaseException):
    """Raised where a unit test reaches outside its process. A BaseException, so that a test's own
    `except Exception` (a client's retry loop, say) cannot swallow it; the test fails at teardown
    even if something swallows this too."""


# Whether a test's body already failed: then the refusal it raised says it all, and the teardown
# check below does not report the same thing again as an error.
_BODY_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[_BODY_FAILED] = report.failed
    return report


def _heavy_modules_loaded() -> list[str]:
    return [name for name in HEAVY_MODULES if name in sys.modules]


def _only_unit_items(items: list[pytest.Item]) -> bool:
    return bool(items) and all(UNIT_TIER in Path(item.path).resolve().parents for item in items)


def pytest_collection_finish(session: pytest.Session) -> None:
    """A run of the unit tier alone (`make test-fast`) must not have imported TensorFlow while
    collecting. In a run with the training tier it is imported by that tier, so only the per-test
    check below applies."""
    loaded = _heavy_modules_loaded()
    if loaded and _only_unit_items(session.items):
        raise pytest.UsageError(
            f"the unit tier imported {', '.join(loaded)} while collecting: move the test module that "
            "imports it to tests/training (python -X importtime -m pytest tests/unit --collect-only shows which)"
        )


@pytest.fixture(autouse=True)
def _unit_tier_stays_in_process(request: pytest.FixtureRequest) -> Iterator[None]:
    # A MonkeyPatch of its own: undone here, leaving the test's own `monkeypatch` to its teardown.
    monkeypatch = pytest.MonkeyPatch()
    violations: list[str] = []

    def refuse(what: str) -> Callable[..., Any]:
        def refused(*args: object, **kwargs: object) -> Any:
            violations.append(what)
            raise UnitTierViolation(f"a unit test may not {what}: move it to tests/integration")
        return refused

    for name in ("connect", "connect_ex", "bind"):
        monkeypatch.setattr(socket.socket, name, refuse(f"{name} a socket (socket.socket.{name})"))
    monkeypatch.setattr(subprocess.Popen, "__init__", refuse("start a process (subprocess.Popen)"))
    for name in ("fork", "system", "posix_spawn", "posix_spawnp"):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, refuse(f"start a process (os.{name})"))
    # gRPC's C core opens its sockets itself, past socket.socket: a server, or a call (or a wait
    # for readiness) on a channel, is refused. Making a channel is not: it connects only when used,
    # and the gateway's app makes its channels at start-up, which unit tests replace with fakes.
    for module, name in ((grpc, "server"), (grpc.aio, "server"), (grpc, "channel_ready_future")):
        monkeypatch.setattr(module, name, refuse(f"open a gRPC {name} ({module.__name__}.{name})"))
    monkeypatch.setattr(grpc_aio_channel.Channel, "channel_ready", refuse("wait for a gRPC channel"))
    for calls in _GRPC_CALLS:
        for name in ("__call__", "with_call", "future"):
            if name in vars(calls):
                monkeypatch.setattr(calls, name, refuse(f"make a gRPC call ({calls.__name__}.{name})"))
    heavy_before = set(_heavy_modules_loaded())
    yield
    monkeypatch.undo()
    if request.node.stash.get(_BODY_FAILED, False):
        return
    if violations:
        pytest.fail(f"this unit test tried to {'; '.join(violations)}: it belongs in tests/integration",
                    pytrace=False)
    imported = set(_heavy_modules_loaded()) - heavy_before
    if imported:
        pytest.fail(f"this unit test imported {', '.join(sorted(imported))}: it belongs in tests/training",
                    pytrace=False)
