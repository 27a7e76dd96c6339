"""The trailing metadata of a successful Authenticate: how long its verdict stays true.

`SESSION_ENDS_IN_MS`: milliseconds until the session ends unless it is used again (its lifetime, or
its idle timeout counted from its last recorded use), revocation aside. A duration, not a time: the
gateway's clock need not agree with the auth service's. The gateway caches a verdict no longer than
part of it (gateway/session_cache.py); a client that ignores it loses nothing.
"""

from __future__ import annotations

SESSION_ENDS_IN_MS = "drtech-session-ends-in-ms"
