"""Start-up objects kept out of full garbage collections (services/common/startup_heap.py): a full
collection holds the GIL, and walking the gateway's start-up heap stalled every request in flight
for 60-70 ms (benchmarks/README.md, "issue 24")."""

from __future__ import annotations

import asyncio
import gc
import socket
import weakref
from collections.abc import Iterator

import pytest

import gateway.__main__ as gateway_main
from gateway.settings import GatewaySettings
from services.common.startup_heap import freeze_startup_heap


class _Node:
    """A tracked object that can be part of a reference cycle."""

    def __init__(self) -> None:
        self.other: _Node | None = None


def _cycle() -> weakref.ref[_Node]:
    """A reference cycle nobody holds any more: only a collection frees it."""
    first, second = _Node(), _Node()
    first.other, second.other = second, first
    return weakref.ref(first)


def _walked_by_collections(thing: object) -> bool:
    return any(found is thing for found in gc.get_objects())


@pytest.fixture
def thawed() -> Iterator[None]:
    """This test process's heap unfrozen afterwards (the freeze is for a server's whole life)."""
    try:
        yield
    finally:
        gc.unfreeze()


def test_objects_alive_at_the_freeze_are_walked_by_no_later_collection(thawed: None) -> None:
    kept = _Node()
    assert _walked_by_collections(kept)
    assert freeze_startup_heap() > 0
    assert not _walked_by_collections(kept)


def test_garbage_left_by_start_up_is_freed_not_kept_for_good(thawed: None) -> None:
    gc.disable()   # so that only the freeze's own collection can free the cycle
    try:
        garbage = _cycle()
        assert garbage() is not None
        freeze_startup_heap()
    finally:
        gc.enable()
    assert garbage() is None


def test_objects_made_after_the_freeze_are_collected_as_usual(thawed: None) -> None:
    freeze_startup_heap()
    made_later = _Node()
    assert _walked_by_collections(made_later)
    garbage = _cycle()
    gc.collect()
    assert garbage() is None


def test_the_gateway_freezes_its_start_up_heap_once_ready_before_it_says_it_listens(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    said_listening_at_freeze: list[bool] = []

    class ReadyListeners:
        started = True

        def __init__(self, *args: object) -> None:
            pass

        async def serve(self) -> None:
            return None

    monkeypatch.setattr(gateway_main, "Listeners", ReadyListeners)
    monkeypatch.setattr(gateway_main, "freeze_startup_heap",
                        lambda: said_listening_at_freeze.append("listening on" in capsys.readouterr().out) or 0)
    with socket.socket() as public, socket.socket() as internal:   # never bound: the fake serves
        assert asyncio.run(gateway_main.serve(GatewaySettings(), public, internal)) == 0
    assert said_listening_at_freeze == [False]
    assert "listening on" in capsys.readouterr().out
