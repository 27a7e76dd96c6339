"""Password hashing (argon2id) and session tokens (random, stored only as their SHA-256)."""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from services.auth.errors import Busy


class Passwords:
    """argon2id hashing with a fixed cost, and a dummy hash so unknown accounts cost the same time.

    The auth service's worker threads are shared with token checks and health checks, which a burst
    of log-ins must not queue behind (each hash is ~0.2 s of CPU and 64 MiB), nor may the pod's
    memory grow with the number of threads. So at most ``max_concurrent`` hashes run at once, and at
    most ``max_admitted`` calls are inside at all, hashing or waiting up to ``wait_s`` for a slot;
    a call beyond either limit raises Busy at once (None: no limit).
    """

    def __init__(self, time_cost: int = 3, memory_kib: int = 65536, parallelism: int = 4,
                 max_concurrent: int | None = None, max_admitted: int | None = None,
                 wait_s: float = 0.5) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism, type=Type.ID
        )
        self._slots = threading.BoundedSemaphore(max_concurrent) if max_concurrent else None
        self._admitted = threading.BoundedSemaphore(max_admitted) if max_admitted else None
        self._wait_s = wait_s
        # Verified against when the email is unknown, so the reply takes as long as for a real account.
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))
        # How long a verification with the current parameters takes, from a first one (the hash
        # above was the cold, slower start), kept up to date by the dummy verifications. Every failed
        # check, of an account's hash or of the dummy, is padded to it: both then take
        # max(the check, this), and a failure's speed does not tell whether the email has an account.
        started = time.perf_counter()
        with contextlib.suppress(VerifyMismatchError):
            self._hasher.verify(self._dummy_hash, "")
        self._verify_s = time.perf_counter() - started

    @contextmanager
    def _slot(self) -> Iterator[None]:
        # Not blocking: a waiting call holds a worker thread too.
        if self._admitted is not None and not self._admitted.acquire(blocking=False):
            raise Busy()
        try:
            if self._slots is not None and not self._slots.acquire(timeout=self._wait_s):
                raise Busy()
            try:
                yield
            finally:
                if self._slots is not None:
                    self._slots.release()
        finally:
            if self._admitted is not None:
                self._admitted.release()

    def hash(self, password: str) -> str:
        with self._slot():
            return self._hasher.hash(password)

    def verify(self, stored_hash: str, password: str) -> bool:
        """True when ``password`` matches ``stored_hash``; False on a mismatch or an unreadable hash.
        Raises Busy when no hashing slot frees up in time."""
        with self._slot():
            started = time.perf_counter()
            try:
                return self._hasher.verify(stored_hash, password)
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                # Inside the slot: the padding is admitted and limited like the hashing it stands for.
                time.sleep(max(0.0, self._verify_s - (time.perf_counter() - started)))
                return False

    def verify_dummy(self, password: str) -> None:
        """Spend the time of one failed verification without any account (padded as verify pads a
        failure); the outcome is always 'no'."""
        with self._slot():
            started = time.perf_counter()
            with contextlib.suppress(VerifyMismatchError, VerificationError, InvalidHashError):
                self._hasher.verify(self._dummy_hash, password)
            took = time.perf_counter() - started
            padded_to = self._verify_s
            self._verify_s = 0.8 * self._verify_s + 0.2 * took
            time.sleep(max(0.0, padded_to - took))

    def needs_rehash(self, stored_hash: str) -> bool:
        """True when ``stored_hash`` was made with other parameters than the current ones."""
        return self._hasher.check_needs_rehash(stored_hash)


def new_token() -> str:
    """A fresh session token (256 random bits, URL-safe); shown to the client once."""
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """What the database keeps of a token: its SHA-256, hex. A fast hash suffices for 256 random bits."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()
