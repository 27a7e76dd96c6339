"""Opportunistic batching: requests that arrive while the model is busy run together as one batch.

Worker threads (one by default) run the model. Each takes the oldest waiting image and every other
image already queued (up to `max_batch_size`) and runs them as one batch. Several workers run
batches side by side, e.g. one single-threaded ONNX Runtime run per core, which on CPU gives more
images per second than one run spread over every core (see services/core/settings.py). By default nothing waits for a batch
to fill, so a lone request pays no extra latency; under load, calls share a model run instead of
competing for the same cores. `max_wait_seconds` > 0 lets a partial batch wait that long for more.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass

import numpy as np

from services.core.call_end import CallEnd
from services.core.errors import CallCancelled, ModelNotReady, ServiceBusy
from services.core.runtime import Prediction

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchedPrediction:
    prediction: Prediction      # this request's rows only (batch dimension 1)
    batch_size: int             # how many requests shared the model run
    seconds: float              # how long the shared model run took


# The image, its caller's future, and when the caller stops waiting (time.monotonic(); None: never).
_Job = tuple[np.ndarray, Future, float | None]
_STOP = object()


class Batcher:
    def __init__(
        self,
        run: Callable[[np.ndarray], Prediction],
        max_batch_size: int,
        on_batch: Callable[[int, float], None] | None = None,
        name: str = "model",
        max_wait_seconds: float = 0.0,
        workers: int = 1,
    ) -> None:
        self._run = run
        self.max_batch_size = max(1, max_batch_size)
        self.max_wait_seconds = max(0.0, max_wait_seconds)
        self._on_batch = on_batch
        self._queue: queue.Queue[_Job | object] = queue.Queue()
        self._closed = False
        self._lock = threading.Lock()
        self._workers = [
            threading.Thread(target=self._loop, name=f"{name}-batcher-{index}", daemon=True)
            for index in range(max(1, workers))
        ]
        for worker in self._workers:
            worker.start()

    def predict(self, item: np.ndarray, timeout: float | None = None,
                call_end: CallEnd | None = None) -> BatchedPrediction:
        """Run one preprocessed image (H, W, 3); blocks until its batch has run. `timeout`: the
        call's remaining time (its gRPC deadline): past it, a call still queued is dropped, never run,
        so calls nobody waits for any more do not hold the model (and everyone behind them). The same
        when `call_end` comes first (the caller cancelled): CallCancelled."""
        future: Future[BatchedPrediction] = Future()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            if self._closed:
                raise ModelNotReady("the model is shutting down")
            self._queue.put((item, future, deadline))
        if call_end is not None:
            call_end.on(future.cancel)   # still queued: the worker skips it; running: it finishes
        try:
            return future.result(timeout=timeout)
        except CancelledError:
            raise CallCancelled("the call was cancelled while it waited for the model") from None
        except TimeoutError:
            if future.cancel():      # still queued: the worker skips it
                raise ServiceBusy("the model is busy: the call's deadline passed while it waited") from None
            return future.result()   # its batch is running: the answer is moments away

    def close(self) -> None:
        """Finish what is queued, then stop the workers."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for _ in self._workers:   # each worker stops at the first _STOP it takes
                self._queue.put(_STOP)
        for worker in self._workers:
            worker.join()

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            jobs: list[_Job] = [first]  # type: ignore[list-item]
            stop_after = False
            deadline = time.monotonic() + self.max_wait_seconds
            while len(jobs) < self.max_batch_size:
                try:
                    remaining = deadline - time.monotonic()
                    job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is _STOP:
                    stop_after = True
                    break
                jobs.append(job)  # type: ignore[arg-type]
            self._run_batch(jobs)
            if stop_after:
                return

    def _run_batch(self, queued: list[_Job]) -> None:
        now = time.monotonic()
        jobs = []
        for job in queued:
            _, future, deadline = job
            if not future.set_running_or_notify_cancel():
                continue             # its caller gave up waiting
            if deadline is not None and deadline <= now:
                future.set_exception(ServiceBusy("the model is busy: the call's deadline passed while it waited"))
                continue
            jobs.append(job)
        if not jobs:
            return
        try:
            started = time.perf_counter()
            prediction = self._run(_batch_of([item for item, _, _ in jobs]))
            seconds = time.perf_counter() - started
            results = [
                BatchedPrediction(
                    prediction=Prediction(
                        probabilities=prediction.probabilities[index:index + 1],
                        cam=prediction.cam[index:index + 1],
                        extra={name: values[index:index + 1] for name, values in prediction.extra.items()},
                        gate=None if prediction.gate is None else prediction.gate[index:index + 1],
                    ),
                    batch_size=len(jobs),
                    seconds=seconds,
                )
                for index in range(len(jobs))
            ]
        except BaseException as error:  # hand the failure to every caller waiting on this batch
            for _, future, _ in jobs:
                future.set_exception(error)
            return
        for (_, future, _), result in zip(jobs, results, strict=True):
            future.set_result(result)
        if self._on_batch is not None:
            try:
                self._on_batch(len(jobs), seconds)
            except Exception:   # a metrics callback must never stop the batching thread
                logger.exception("batch callback failed")


def _batch_of(items: list[np.ndarray]) -> np.ndarray:
    """The items as one (n, ...) array. A lone item (every call when batching is off) is viewed,
    not copied: np.stack's copy of a 224x224x3 float32 input was ~4% of a batcher thread's CPU."""
    if len(items) == 1:
        return items[0][np.newaxis]
    return np.stack(items)
