"""CPU seconds spent in named stages of a request, as a Prometheus counter.

`drtech_stage_cpu_seconds_total{stage=...}` (the model services add `task`) counts the CPU time of
the thread that runs a stage (time.thread_time: user + system of this thread only), so it stays
right when other requests run on other threads meanwhile. It is meant for synchronous stages: work
on an event loop that awaits inside the block would count the other tasks run meanwhile, so the
gateway times only what runs in one go in a worker thread (the event loop's own share is read per
thread by benchmarks/cpu_cost.py). Two clock reads and one counter increment per stage (~1 us).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter

STAGE_CPU_NAME = "drtech_stage_cpu_seconds"
STAGE_CPU_HELP = "CPU seconds (user + system, of the thread that ran it) spent in each stage of a request."


class StageCPU:
    """Times stages into `counter`, whose labels are `fixed` (e.g. task) plus `stage`."""

    def __init__(self, counter: Counter, **fixed: str) -> None:
        self._counter = counter
        self._fixed = fixed
        self._children: dict[str, Counter] = {}

    def child(self, stage: str) -> Counter:
        # Cached: labels() takes the metric's lock and builds a key on every call.
        found = self._children.get(stage)
        if found is None:
            found = self._children[stage] = self._counter.labels(**self._fixed, stage=stage)
        return found

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Add this thread's CPU time inside the block to stage `name` (also when the block raises)."""
        started = time.thread_time()
        try:
            yield
        finally:
            self.child(name).inc(time.thread_time() - started)
