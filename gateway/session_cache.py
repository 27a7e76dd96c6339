"""Sessions the auth service verified a moment ago, so that a busy client's requests do not each
cost an Authenticate round trip (its CPU in the gateway and the auth service, and a database read).

A verdict is kept for at most `DRTECH_GATEWAY_AUTH_CACHE_SECONDS` (0: no cache), and never longer
than half the time the auth service says the session has left (its lifetime, or its idle timeout):
a cached hit does not keep the session alive, so an active session is checked again, and kept
alive, well before its idle timeout could end it. Entries are keyed by the token's SHA-256, never
the token itself, and there are at most `DRTECH_GATEWAY_AUTH_CACHE_ENTRIES` of them (the oldest
goes first).

Revocation: a log-out, a log-out everywhere or a password change made through this gateway forgets
the session (or every session of the account) at once, so the next request through this gateway
is refused. One made through another gateway replica, or straight at the auth service, takes
effect here within the TTL: that is the staleness bound across replicas.

A verification that was under way while something was forgotten is not kept: it may predate the
revocation (see `generation`).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from protos.drtech.v1 import auth_pb2, auth_pb2_grpc
from services.auth.session_metadata import SESSION_ENDS_IN_MS


@dataclass(frozen=True)
class _Verified:
    user: auth_pb2.User
    until: float    # on the cache's clock


class SessionCache:
    """Verified sessions by token hash, each until its own deadline. Not thread-safe: it lives on
    the gateway's event loop."""

    def __init__(self, ttl_s: float, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[bytes, _Verified] = OrderedDict()
        # Bumped by every forget: a verification started before it is not kept (`put`).
        self.generation = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str) -> auth_pb2.User | None:
        """The token's user while its verdict holds; None when there is none, or it has run out."""
        key = _key(token)
        found = self._entries.get(key)
        if found is None:
            return None
        if self._clock() >= found.until:
            del self._entries[key]
            return None
        return found.user

    def put(self, token: str, user: auth_pb2.User, session_ends_in_s: float, generation: int) -> None:
        """Keep a verdict the auth service gave when the cache was at `generation`, for min(TTL, half
        of `session_ends_in_s`); nothing when something was forgotten since, or the cache is off."""
        keep_s = min(self.ttl_s, session_ends_in_s / 2)
        if generation != self.generation or keep_s <= 0 or self.max_entries <= 0:
            return
        key = _key(token)
        self._entries.pop(key, None)
        while len(self._entries) >= self.max_entries:
            self._entries.popitem(last=False)
        self._entries[key] = _Verified(user, self._clock() + keep_s)

    def forget_token(self, token: str) -> None:
        """The session was logged out."""
        self.generation += 1
        self._entries.pop(_key(token), None)

    def forget_user(self, user_id: str) -> None:
        """Sessions of the account were ended (log-out everywhere, a password change)."""
        self.generation += 1
        for key in [key for key, found in self._entries.items() if found.user.id == user_id]:
            del self._entries[key]


def _key(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def session_ends_in_s(trailing_metadata: grpc.aio.Metadata | None) -> float:
    """What Authenticate's trailing metadata says of the session's end, in seconds; 0 (nothing to
    cache) when it says nothing (an auth service from before it did)."""
    value = (trailing_metadata or {}).get(SESSION_ENDS_IN_MS)
    try:
        return max(0.0, int(value) / 1000) if value is not None else 0.0
    except ValueError:
        return 0.0


async def verified_user(auth: auth_pb2_grpc.AuthServiceStub, cache: SessionCache, token: str,
                        timeout_s: float) -> auth_pb2.User:
    """The token's user, from the cache or from the auth service's Authenticate (then cached).
    Raises the call's grpc.aio.AioRpcError (UNAUTHENTICATED for a dead session)."""
    cached = cache.get(token)
    if cached is not None:
        return cached
    generation = cache.generation
    call = auth.Authenticate(auth_pb2.AuthenticateRequest(access_token=token), timeout=timeout_s)
    user = await call
    cache.put(token, user, session_ends_in_s(await call.trailing_metadata()), generation)
    return user
