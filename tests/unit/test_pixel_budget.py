"""A model service decodes at most `max_decoding_pixels` pixels at once across its worker threads, and
gives the freed memory back after a large image (benchmarks/decode_memory.py measures both)."""

from __future__ import annotations

import platform
import sys
import threading

import pytest

from services.core import memory
from services.core.pixel_budget import PixelBudget


def holder(budget: PixelBudget, pixels: int) -> tuple[threading.Thread, threading.Event, threading.Event]:
    """A thread that holds `pixels` until told to let go: (thread, got them, let go)."""
    return holder_with_timeout(budget, pixels, None)


def holder_with_timeout(budget: PixelBudget, pixels: int,
                        timeout: float | None) -> tuple[threading.Thread, threading.Event, threading.Event]:
    got, let_go = threading.Event(), threading.Event()

    def run() -> None:
        with budget.hold(pixels, timeout):
            got.set()
            let_go.wait(10)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, got, let_go


def test_images_that_fit_together_decode_side_by_side_and_the_next_waits_its_turn() -> None:
    budget = PixelBudget(100)
    first, first_got, first_go = holder(budget, 60)
    second, second_got, second_go = holder(budget, 40)
    assert first_got.wait(5) and second_got.wait(5)
    assert budget.held == 100

    third, third_got, third_go = holder(budget, 30)
    assert not third_got.wait(0.2)          # 30 more do not fit while 100 are held
    second_go.set()
    assert third_got.wait(5)                 # 40 given back: 60 + 30 fit
    assert budget.held == 90
    for go, thread in ((first_go, first), (third_go, third), (second_go, second)):
        go.set()
        thread.join(5)
    assert budget.held == 0


def test_an_image_larger_than_the_budget_waits_for_the_others_and_then_holds_all_of_it() -> None:
    budget = PixelBudget(100)
    small, small_got, small_go = holder(budget, 10)
    assert small_got.wait(5)
    huge, huge_got, huge_go = holder(budget, 10_000)
    assert not huge_got.wait(0.2)
    small_go.set()
    assert huge_got.wait(5)
    assert budget.held == 100
    huge_go.set()
    huge.join(5)
    small.join(5)
    assert budget.held == 0


def test_pixels_are_granted_in_arrival_order_so_a_large_image_is_not_passed_over() -> None:
    budget = PixelBudget(100)
    small, small_got, small_go = holder(budget, 30)
    assert small_got.wait(5)
    large, large_got, large_go = holder(budget, 100)      # needs everything: waits for the small one
    while budget.waiting < 1:
        threading.Event().wait(0.01)
    later, later_got, later_go = holder(budget, 10)        # would fit now, but arrived after the large one
    assert not later_got.wait(0.2)
    small_go.set()
    assert large_got.wait(5)
    assert not later_got.is_set()
    large_go.set()
    assert later_got.wait(5)
    later_go.set()
    for thread in (small, large, later):
        thread.join(5)
    assert budget.held == 0 and budget.waiting == 0


def test_a_caller_that_waits_past_its_timeout_leaves_the_line() -> None:
    budget = PixelBudget(100)
    with budget.hold(100):
        with pytest.raises(TimeoutError):
            budget.acquire(1, timeout=0.05)
        assert budget.waiting == 0
    assert budget.held == 0
    with budget.hold(60):                 # the line moves on as if the caller had never been there
        assert budget.held == 60


def test_a_call_without_a_deadline_waits_as_long_as_it_takes() -> None:
    """gRPC's time_remaining() without a deadline is ~9.2e18 s: beyond what a wait can be given."""
    budget = PixelBudget(100)
    with budget.hold(100):
        waiting, got, go = holder_with_timeout(budget, 10, 9.2e18)
        assert not got.wait(0.2)
    assert got.wait(5)
    go.set()
    waiting.join(5)
    assert budget.held == 0


def test_a_waiter_whose_call_ended_leaves_the_line_and_takes_nothing() -> None:
    """The caller cancelled: its place goes to the next in line, at once, not at its deadline."""
    from services.core.call_end import CallEnd
    from services.core.errors import CallCancelled

    budget = PixelBudget(100)
    call_end = CallEnd()
    outcome: list[str] = []

    def wait() -> None:
        try:
            budget.acquire(50, timeout=30, call_end=call_end)
            outcome.append("held")
        except CallCancelled:
            outcome.append("cancelled")

    with budget.hold(100):
        waiter = threading.Thread(target=wait)
        waiter.start()
        assert _eventually(lambda: budget.waiting == 1)
        call_end.set()
        waiter.join(5)
        assert outcome == ["cancelled"] and budget.waiting == 0
    assert budget.held == 0
    with pytest.raises(CallCancelled):   # an ended call does not queue at all
        budget.acquire(10, call_end=call_end)
    assert budget.held == 0


def _eventually(condition, seconds: float = 5.0) -> bool:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return True
        threading.Event().wait(0.01)
    return False


def test_a_failed_decode_gives_its_pixels_back() -> None:
    budget = PixelBudget(100)
    with pytest.raises(RuntimeError), budget.hold(80):
        raise RuntimeError("the pixel data cannot be decoded")
    assert budget.held == 0
    with pytest.raises(ValueError, match="at least 1"):
        PixelBudget(0)


def test_free_memory_is_given_back_to_the_system_after_a_large_image_only(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(memory, "_MALLOC_TRIM", calls.append)
    memory.release_after(memory.TRIM_AFTER_PIXELS - 1)      # a small photo: left to the allocator
    assert calls == []
    memory.release_after(memory.TRIM_AFTER_PIXELS)
    assert calls == [0]


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="malloc_trim is glibc's")
def test_glibc_malloc_trim_is_found_and_runs() -> None:
    assert memory._MALLOC_TRIM is not None
    memory.release_after(memory.TRIM_AFTER_PIXELS)
