"""Password hashing (argon2id) and session-token hashing."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest
from argon2 import PasswordHasher

from services.auth.credentials import Passwords, new_token, token_hash
from services.auth.errors import Busy
from tests.support import hold_argon2_verifications

# Cheap argon2 cost so the suite stays fast; the algorithm is the same.
FAST = {"time_cost": 1, "memory_kib": 1024, "parallelism": 1}


def test_passwords_are_stored_as_salted_argon2id_hashes() -> None:
    passwords = Passwords(**FAST)
    first, second = passwords.hash("correct horse 1"), passwords.hash("correct horse 1")
    assert first.startswith("$argon2id$")
    assert "correct horse 1" not in first
    assert first != second  # a fresh salt each time


def test_verify_accepts_only_the_right_password() -> None:
    passwords = Passwords(**FAST)
    stored = passwords.hash("correct horse 1")
    assert passwords.verify(stored, "correct horse 1")
    assert not passwords.verify(stored, "correct horse 2")
    assert not passwords.verify("not a hash", "correct horse 1")


def test_the_dummy_verification_is_one_real_argon2_check_at_the_current_cost(monkeypatch) -> None:
    """Log-in with an unknown email spends the time of a real check, so timing does not tell
    which emails have accounts."""
    passwords = Passwords(**FAST)
    checked: list[str] = []
    real_verify = PasswordHasher.verify

    def spy(hasher: PasswordHasher, stored: str, given: str) -> bool:
        checked.append(stored)
        return real_verify(hasher, stored, given)

    monkeypatch.setattr(PasswordHasher, "verify", spy)

    assert passwords.verify_dummy("anything") is None        # no result to leak

    assert len(checked) == 1 and checked[0].startswith("$argon2id$")
    assert not passwords.needs_rehash(checked[0])              # made at the same cost as real hashes


def test_a_hash_made_with_other_parameters_needs_rehashing() -> None:
    old = Passwords(**FAST).hash("correct horse 1")
    stronger = Passwords(time_cost=2, memory_kib=2048, parallelism=1)
    assert stronger.needs_rehash(old)
    assert stronger.verify(old, "correct horse 1")  # old hashes still verify
    assert not stronger.needs_rehash(stronger.hash("correct horse 1"))


def test_a_wrong_password_for_a_cheaper_older_hash_takes_as_long_as_a_current_check(monkeypatch) -> None:
    """Accounts keep their old hash until their next successful log-in: a failed check of a cheaper
    one is padded to the current cost, or its quick answer would tell that the email has an account."""
    old = Passwords(**FAST).hash("correct horse 1")
    current = Passwords(time_cost=2, memory_kib=16384, parallelism=1)
    current.verify_dummy("anything")
    padded: list[float] = []
    monkeypatch.setattr("services.auth.credentials.time.sleep", padded.append)

    assert not current.verify(old, "wrong horse 1")
    assert current.verify(old, "correct horse 1")              # a match is not padded

    assert len(padded) == 1
    assert padded[0] > 0.5 * current._verify_s > 0


def test_a_failed_check_without_an_account_is_padded_as_one_with_an_account(monkeypatch) -> None:
    """A known account's failed check took max(the check, the running average), an unknown one's
    only the check: on average slower, which told which emails have accounts. Both are padded now."""
    passwords = Passwords(**FAST)
    known = passwords.hash("correct horse 1")
    padded: list[float] = []
    monkeypatch.setattr("services.auth.credentials.time.sleep", padded.append)

    passwords._verify_s = 0.05            # as if checks had lately taken 50 ms (a busier moment)
    assert not passwords.verify(known, "wrong horse 1")
    passwords._verify_s = 0.05
    passwords.verify_dummy("wrong horse 1")

    assert len(padded) == 2 and all(0.03 < pause <= 0.05 for pause in padded), padded


def test_tokens_are_random_and_stored_as_their_sha256() -> None:
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100
    token = tokens.pop()
    assert len(token) >= 43  # 32 random bytes, URL-safe base64
    assert token_hash(token) == hashlib.sha256(token.encode()).hexdigest()
    assert token not in token_hash(token)


def test_at_most_max_concurrent_hashes_run_and_a_call_that_cannot_get_a_slot_is_busy(monkeypatch) -> None:
    passwords = Passwords(**FAST, max_concurrent=1, wait_s=0.05)
    admitted_once = Passwords(**FAST, max_concurrent=1, max_admitted=1, wait_s=5)   # made (and timed) first
    stored = passwords.hash("correct horse 1")
    entered, release = hold_argon2_verifications(monkeypatch)
    holder = threading.Thread(target=passwords.verify, args=(stored, "correct horse 1"))
    holder.start()
    assert entered.wait(5)
    with pytest.raises(Busy):
        passwords.hash("correct horse 2")
    with pytest.raises(Busy):
        passwords.verify_dummy("anything")
    monkeypatch.setattr(admitted_once, "_hasher", passwords._hasher)
    other = threading.Thread(target=admitted_once.verify, args=(stored, "correct horse 1"))
    entered.clear()
    other.start()
    assert entered.wait(5)
    started = time.monotonic()
    with pytest.raises(Busy):              # refused at once: no waiting past max_admitted
        admitted_once.hash("correct horse 2")
    assert time.monotonic() - started < 1
    release.set()
    other.join(10)
    holder.join(10)
    assert passwords.hash("correct horse 2").startswith("$argon2id$")   # the slot is free again
