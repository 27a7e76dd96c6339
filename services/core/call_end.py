"""The end of a call for its caller (cancelled, its deadline gone, its connection closed, or
answered), as gRPC reports it (`ServicerContext.add_callback`): what the call still waits for
(a place in the decoding budget, a turn of the model) stops waiting then, so a call nobody will
read holds nothing and runs nothing."""

from __future__ import annotations

import threading
from collections.abc import Callable


class CallEnd:
    def __init__(self) -> None:
        self.event = threading.Event()
        self._hooks: list[Callable[[], object]] = []
        self._lock = threading.Lock()

    def on(self, hook: Callable[[], object]) -> None:
        """Call `hook` when the call ends (at once if it has)."""
        with self._lock:
            if not self.event.is_set():
                self._hooks.append(hook)
                return
        hook()

    def set(self) -> None:
        with self._lock:
            self.event.set()
            hooks, self._hooks = self._hooks, []
        for hook in hooks:
            hook()
