"""The gateway's cache of verified sessions (gateway/session_cache.py): how long a verdict is kept,
what forgets it, and that it holds no token."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from gateway.session_cache import SessionCache, session_ends_in_s, verified_user
from protos.drtech.v1 import auth_pb2
from services.auth.session_metadata import SESSION_ENDS_IN_MS
from tests.support import FinishedCall

ADA = auth_pb2.User(id="user-1", email="ada@example.org")
GRACE = auth_pb2.User(id="user-2", email="grace@example.org")
HOUR = 3600.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def cache_of(clock: Clock, ttl_s: float = 5.0, max_entries: int = 100) -> SessionCache:
    return SessionCache(ttl_s, max_entries, clock=clock)


def test_a_verdict_is_kept_for_the_ttl_and_not_a_moment_longer(clock: Clock) -> None:
    cache = cache_of(clock)
    cache.put("token-a", ADA, HOUR, cache.generation)
    clock.now += 4.99
    assert cache.get("token-a") == ADA
    clock.now += 0.01
    assert cache.get("token-a") is None
    assert len(cache) == 0


def test_a_verdict_never_outlives_half_of_what_the_session_has_left(clock: Clock) -> None:
    """The session ends in 4 s (its lifetime, or its idle timeout): kept 2 s, so an active session
    is checked again, and kept alive by the auth service, while it is still live."""
    cache = cache_of(clock, ttl_s=30)
    cache.put("token-a", ADA, 4.0, cache.generation)
    clock.now += 1.99
    assert cache.get("token-a") == ADA
    clock.now += 0.01
    assert cache.get("token-a") is None


def test_a_session_about_to_end_or_a_ttl_of_zero_is_not_cached(clock: Clock) -> None:
    ending = cache_of(clock)
    ending.put("token-a", ADA, 0.0, ending.generation)
    off = cache_of(clock, ttl_s=0)
    off.put("token-a", ADA, HOUR, off.generation)
    assert ending.get("token-a") is None and off.get("token-a") is None


def test_log_out_forgets_the_token_and_only_it(clock: Clock) -> None:
    cache = cache_of(clock)
    for token, user in [("token-a", ADA), ("token-b", ADA), ("token-c", GRACE)]:
        cache.put(token, user, HOUR, cache.generation)
    cache.forget_token("token-a")
    assert cache.get("token-a") is None
    assert cache.get("token-b") == ADA and cache.get("token-c") == GRACE


def test_ending_an_accounts_sessions_forgets_every_one_of_them(clock: Clock) -> None:
    cache = cache_of(clock)
    for token, user in [("token-a", ADA), ("token-b", ADA), ("token-c", GRACE)]:
        cache.put(token, user, HOUR, cache.generation)
    cache.forget_user(ADA.id)
    assert cache.get("token-a") is None and cache.get("token-b") is None
    assert cache.get("token-c") == GRACE


def test_a_verification_under_way_during_a_log_out_is_not_kept(clock: Clock) -> None:
    """It may have seen the session live just before the log-out ended it."""
    cache = cache_of(clock)
    started_at = cache.generation
    cache.forget_token("token-a")
    cache.put("token-a", ADA, HOUR, started_at)
    assert cache.get("token-a") is None
    cache.put("token-a", ADA, HOUR, cache.generation)   # one that began after it is kept
    assert cache.get("token-a") == ADA


def test_the_cache_is_bounded_and_the_oldest_entry_goes_first(clock: Clock) -> None:
    cache = cache_of(clock, max_entries=2)
    for token in ["token-a", "token-b", "token-c"]:
        cache.put(token, ADA, HOUR, cache.generation)
    assert len(cache) == 2
    assert cache.get("token-a") is None
    assert cache.get("token-b") == ADA and cache.get("token-c") == ADA


def test_the_cache_holds_a_hash_of_each_token_never_the_token(clock: Clock) -> None:
    cache = cache_of(clock)
    cache.put("secret-token-value", ADA, HOUR, cache.generation)
    assert all(b"secret-token-value" not in key for key in cache._entries)
    assert all(len(key) == 32 for key in cache._entries)


def test_the_session_end_is_read_from_the_trailing_metadata() -> None:
    assert session_ends_in_s(grpc.aio.Metadata((SESSION_ENDS_IN_MS, "90500"))) == 90.5
    # An auth service that does not say, or says nonsense: nothing is cached.
    assert session_ends_in_s(grpc.aio.Metadata()) == 0.0
    assert session_ends_in_s(None) == 0.0
    assert session_ends_in_s(grpc.aio.Metadata((SESSION_ENDS_IN_MS, "soon"))) == 0.0
    assert session_ends_in_s(grpc.aio.Metadata((SESSION_ENDS_IN_MS, "-5"))) == 0.0


class CountingAuth:
    """Authenticate for one live token, counting the calls."""

    def __init__(self, ends_in_ms: str = "600000") -> None:
        self.calls = 0
        self.ends_in_ms = ends_in_ms

    def Authenticate(self, request: auth_pb2.AuthenticateRequest, timeout: float) -> FinishedCall:
        self.calls += 1
        if request.access_token != "live":
            error = grpc.aio.AioRpcError(grpc.StatusCode.UNAUTHENTICATED, grpc.aio.Metadata(),
                                         grpc.aio.Metadata(), "revoked")
            return FinishedCall(error=error)
        return FinishedCall(ADA, grpc.aio.Metadata((SESSION_ENDS_IN_MS, self.ends_in_ms)))


def test_verified_user_asks_the_auth_service_once_per_ttl(clock: Clock) -> None:
    auth, cache = CountingAuth(), cache_of(clock)

    async def twice() -> list[auth_pb2.User]:
        return [await verified_user(auth, cache, "live", 1.0), await verified_user(auth, cache, "live", 1.0)]

    assert asyncio.run(twice()) == [ADA, ADA]
    assert auth.calls == 1
    clock.now += 5.0
    assert asyncio.run(verified_user(auth, cache, "live", 1.0)) == ADA
    assert auth.calls == 2


def test_a_refused_token_is_asked_about_every_time(clock: Clock) -> None:
    auth, cache = CountingAuth(), cache_of(clock)
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError):
            asyncio.run(verified_user(auth, cache, "revoked", 1.0))
    assert auth.calls == 2 and len(cache) == 0
