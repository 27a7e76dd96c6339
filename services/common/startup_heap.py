"""Keep a server's start-up objects out of the garbage collector's full collections.

A full (generation 2) collection walks every tracked object, and it holds the GIL throughout, so
every thread of the process, the event loop included, stops for it. In the gateway the heap after
start-up (FastAPI, pydantic, SQLAlchemy, gRPC: ~140,000 objects) made each one take 60-70 ms, and
under load one came every 4-5 s: each stalled every request in flight and the ones queued behind
them (benchmarks/README.md, "issue 24"). The start-up objects (modules, classes, routes, schemas,
settings) live as long as the process does, so collecting them again finds nothing: once start-up
is over, `freeze_startup_heap` moves them to the permanent generation, which collections skip, and
later full collections walk only what was made since.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> int:
    """Collect start-up's garbage (so none of it is kept for good), then freeze every object left;
    returns how many objects are frozen. Call once, when the server is ready to serve."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
