"""Accounts and sessions: the auth service's behaviour, independent of gRPC.

Every method opens its own database transaction, so one ``Accounts`` serves all server threads.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from services.auth.credentials import Passwords, new_token, token_hash
from services.auth.errors import (
    BadCredentials,
    Busy,
    EmailTaken,
    InvalidToken,
    SignUpsThrottled,
    Throttled,
    UserNotFound,
    WrongPassword,
)
from services.auth.models import AuthSession, LoginFailure, SignUp, User, utc_now
from services.auth.validation import (
    EMAIL_MAX_LENGTH,
    PASSWORD_MAX_LENGTH,
    ValidationError,
    normalize_email,
    validate_new_password,
    validate_sign_up,
)

log = logging.getLogger(__name__)

CLIENT_IP_MAX_LENGTH = 64
# A session's last use is written at most once per this share of the idle timeout (and at least once
# a minute), not on every call: a session may end up to that much before its full idle time (never
# after it), and a busy session costs one small UPDATE a minute instead of one per request.
TOUCH_SHARE_OF_IDLE = 30
TOUCH_AT_LEAST_EVERY = timedelta(minutes=1)


@dataclass(frozen=True)
class ThrottlePolicy:
    window: timedelta
    max_failures_per_email: int
    max_failures_per_ip: int
    # Accounts one client address may create per sign_up_window (a flood of sign-ups fills the
    # database and spends argon2 on nobody); approximate under concurrent sign-ups from one address.
    sign_up_window: timedelta = timedelta(hours=1)
    max_sign_ups_per_ip: int = 20


@dataclass(frozen=True)
class LoggedIn:
    access_token: str  # the only time the plain token exists outside the client
    expires_at: datetime
    user: User


# RFC 6052's well-known NAT64 prefix: the IPv4 client is the address's last 32 bits.
_NAT64_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")


def _clean_ip(client_ip: str) -> str:
    return throttle_key_of_ip(client_ip.replace("\x00", "").strip())[:CLIENT_IP_MAX_LENGTH]


def _words(duration: timedelta) -> str:
    """'30 minutes', '1 minute', '45 seconds': a duration as a message says it."""
    seconds = duration.total_seconds()
    amount, unit = (seconds / 60, "minute") if seconds >= 60 else (seconds, "second")
    return f"{amount:.3g} {unit}" + ("" if amount == 1 else "s")


def throttle_key_of_ip(address: str) -> str:
    """What log-in failures are counted under for a client address: an IPv4 address as itself (also
    when written IPv4-mapped, ::ffff:a.b.c.d, or translated by NAT64, 64:ff9b::a.b.c.d), an IPv6
    address as its /64 (one LAN: a client holding a /64 could otherwise try from a new address each
    time; a subscriber given a /56 or /48 still has many /64s). Anything that is not an address is
    kept as given."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        if ip in _NAT64_PREFIX:
            return str(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        return str(ipaddress.IPv6Network((int(ip), 64), strict=False))
    return str(ip)


class Accounts:
    def __init__(
        self,
        session_factory: sessionmaker[Session],
        passwords: Passwords,
        session_ttl: timedelta,
        throttle: ThrottlePolicy,
        session_idle: timedelta = timedelta(minutes=30),
    ) -> None:
        self._sessions = session_factory
        self._passwords = passwords
        self._session_ttl = session_ttl
        self._session_idle = session_idle
        self._touch_every = min(TOUCH_AT_LEAST_EVERY, session_idle / TOUCH_SHARE_OF_IDLE)
        self._throttle = throttle

    def sign_up(self, fields: dict[str, str], client_ip: str = "") -> User:
        """Create an account. Raises ValidationError (per-field messages), EmailTaken, or
        SignUpsThrottled when `client_ip` created max_sign_ups_per_ip accounts within the window."""
        form = validate_sign_up(fields)
        client_ip = _clean_ip(client_ip)
        now = utc_now()
        with self._sessions.begin() as db:
            if client_ip:
                self._check_sign_ups(db, client_ip, now)
            if db.scalar(select(User.id).where(User.email == form.email)) is not None:
                raise EmailTaken()
        user = User(
            email=form.email,
            password_hash=self._passwords.hash(form.password),
            first_name=form.first_name,
            surname=form.surname,
            address1=form.address1,
            address2=form.address2,
            city=form.city,
            state=form.state,
            zip=form.zip,
            gender=form.gender,
            birth_date=form.birth_date,
            created_at=utc_now(),
        )
        try:
            with self._sessions.begin() as db:
                db.add(user)
                if client_ip:
                    db.add(SignUp(client_ip=client_ip, created_at=now))
                    # Sign-ups older than the window no longer count: drop them so the table stays small.
                    db.execute(delete(SignUp).where(SignUp.created_at < now - self._throttle.sign_up_window))
        except IntegrityError as error:  # someone signed up with the same email in between
            raise EmailTaken() from error
        log.info("signed up user %s", user.id)
        return user

    def log_in(self, email: str, password: str, client_ip: str = "") -> LoggedIn:
        """Start a session. Raises Throttled, or BadCredentials (unknown email and bad password alike)."""
        # PostgreSQL text cannot hold NUL: such an email is no account's (sign-up refuses control
        # characters), so it becomes one that cannot match, and is throttled like any other.
        email = normalize_email(email).replace("\x00", "\ufffd")[:EMAIL_MAX_LENGTH]
        client_ip = _clean_ip(client_ip)
        now = utc_now()
        try:
            attempt_id = self._start_attempt(email, client_ip, now)
        except Throttled as throttled:
            with self._sessions.begin() as db:   # whose account was throttled, for the audit trail
                found = db.scalar(select(User.id).where(User.email == email))
            throttled.account_id = None if found is None else str(found)
            raise

        with self._sessions.begin() as db:
            user = db.scalar(select(User).where(User.email == email))
        # The slow argon2 work happens outside any transaction, so it holds no connection or lock.
        try:
            if len(password) > PASSWORD_MAX_LENGTH:
                matches = False  # no account has one (the policy caps it); do not spend argon2 on megabytes
            elif user is None:
                self._passwords.verify_dummy(password)  # as slow as a real check: timing reveals no accounts
                matches = False
            else:
                matches = self._passwords.verify(user.password_hash, password)
        except Busy:
            self._forget_attempt(attempt_id)   # no password was tried: this attempt is no failure
            raise
        if user is None or not matches:
            self._keep_failure(now)
            raise BadCredentials(account_id=None if user is None else str(user.id))

        new_hash = None
        if self._passwords.needs_rehash(user.password_hash):
            with contextlib.suppress(Busy):   # the upgrade waits for a quieter log-in
                new_hash = self._passwords.hash(password)
        token = new_token()
        expires_at = now + self._session_ttl
        with self._sessions.begin() as db:
            # The password was checked against the hash read before argon2 ran, outside any transaction;
            # a password change may have committed since. The session is only opened while the account
            # still has the checked hash, which this update asserts (and a rehash writes only over it):
            # the row's lock puts this log-in wholly before a concurrent change, whose revocation then
            # ends its session, or wholly after, where the old password no longer opens one.
            unchanged = db.execute(
                update(User)
                .where(User.id == user.id, User.password_hash == user.password_hash)
                .values(password_hash=new_hash or user.password_hash)
            ).rowcount
            if unchanged != 1:
                raise BadCredentials(account_id=str(user.id))
            if new_hash is not None:
                user.password_hash = new_hash
            # A successful log-in clears this account's failures (not the IP's), its own attempt included.
            db.execute(delete(LoginFailure).where(LoginFailure.email == email))
            # ...and forgets its sessions that can no longer be used, so the table does not grow forever.
            db.execute(
                delete(AuthSession).where(
                    AuthSession.user_id == user.id,
                    or_(
                        AuthSession.expires_at <= now,
                        AuthSession.last_used_at <= now - self._session_idle,
                        AuthSession.revoked_at.is_not(None),
                    ),
                )
            )
            db.add(
                AuthSession(
                    user_id=user.id,
                    token_hash=token_hash(token),
                    created_at=now,
                    expires_at=expires_at,
                    last_used_at=now,
                )
            )
        return LoggedIn(access_token=token, expires_at=expires_at, user=user)

    def _start_attempt(self, email: str, client_ip: str, now: datetime) -> int:
        """Record a password attempt against ``email`` (as a failure, until it succeeds), then check
        the throttle; raises Throttled (the attempt forgotten). Written before the check, so parallel
        guesses see each other: of N at once, at most the limit get to try a password."""
        attempt = LoginFailure(email=email, client_ip=client_ip, created_at=now)
        with self._sessions.begin() as db:
            db.add(attempt)
            db.flush()
            attempt_id = attempt.id
        try:
            self._check_throttle(email, client_ip, now, attempt_id)
        except Throttled:
            self._forget_attempt(attempt_id)
            raise
        return attempt_id

    def _forget_attempt(self, attempt_id: int) -> None:
        with self._sessions.begin() as db:
            db.execute(delete(LoginFailure).where(LoginFailure.id == attempt_id))

    def _keep_failure(self, now: datetime) -> None:
        """The attempt's row stays: it is this failure. Failures older than the window no longer
        count; drop them so the table stays small."""
        with self._sessions.begin() as db:
            db.execute(delete(LoginFailure).where(LoginFailure.created_at < now - self._throttle.window))

    def _check_sign_ups(self, db: Session, client_ip: str, now: datetime) -> None:
        limit = self._throttle.max_sign_ups_per_ip
        recent = db.scalars(
            select(SignUp.created_at)
            .where(SignUp.client_ip == client_ip, SignUp.created_at >= now - self._throttle.sign_up_window)
            .order_by(SignUp.created_at.desc())
            .limit(limit)
        ).all()
        if len(recent) >= limit:
            log.warning("sign-up throttled: %d recent accounts from one client address", len(recent))
            # Open again once the oldest of the `limit` most recent sign-ups leaves the window.
            reopens = recent[-1] + self._throttle.sign_up_window
            raise SignUpsThrottled(retry_after_s=(reopens - now).total_seconds())

    def _check_throttle(self, email: str, client_ip: str, now: datetime, attempt_id: int) -> None:
        """Throttled when the email or the IP already has `limit` failures (or attempts in flight)
        in the window, not counting this attempt."""
        since = now - self._throttle.window
        checks = [("email", LoginFailure.email == email, self._throttle.max_failures_per_email)]
        if client_ip:
            checks.append(
                ("client IP", LoginFailure.client_ip == client_ip, self._throttle.max_failures_per_ip)
            )
        with self._sessions.begin() as db:
            for what, condition, limit in checks:
                recent = db.scalars(
                    select(LoginFailure.created_at)
                    .where(condition, LoginFailure.created_at >= since, LoginFailure.id != attempt_id)
                    .order_by(LoginFailure.created_at.desc())
                    .limit(limit)
                ).all()
                if len(recent) >= limit:
                    log.warning("log-in throttled: %d recent failures for the %s", len(recent), what)
                    # Blocked until the oldest of the `limit` most recent failures leaves the window.
                    raise Throttled(retry_after_s=(recent[-1] + self._throttle.window - now).total_seconds())

    def _live_session(self, access_token: str) -> tuple[AuthSession, User, datetime]:
        """The session a token names and its user, with the time of the check. Raises InvalidToken
        when the token is missing, unknown, revoked, past its lifetime or idle for too long."""
        if not access_token:
            raise InvalidToken("Access token is missing.")
        now = utc_now()
        with self._sessions.begin() as db:
            row = db.execute(
                select(AuthSession, User)
                .join(User, AuthSession.user_id == User.id)
                .where(AuthSession.token_hash == token_hash(access_token))
            ).one_or_none()
        if row is None or row.AuthSession.revoked_at is not None:
            raise InvalidToken("Access token is invalid or has been revoked.")
        if row.AuthSession.expires_at <= now:
            raise InvalidToken("Session has expired; log in again.")
        if row.AuthSession.last_used_at + self._session_idle <= now:
            raise InvalidToken(f"Session ended after {_words(self._session_idle)} without use; log in again.")
        return row.AuthSession, row.User, now

    def authenticate(self, access_token: str) -> tuple[User, timedelta]:
        """The user a live token belongs to, keeping the session alive, and how long until the session
        ends unless it is used again (its lifetime, or its idle timeout from its last recorded use).
        Raises InvalidToken."""
        session, user, now = self._live_session(access_token)
        last_used = session.last_used_at
        if now - session.last_used_at >= self._touch_every:
            last_used = now
            # Its own short transaction (a read that turns into a write can fail at once on SQLite);
            # the condition makes concurrent calls of one session write once.
            with self._sessions.begin() as db:
                db.execute(
                    update(AuthSession)
                    .where(AuthSession.id == session.id, AuthSession.last_used_at < now - self._touch_every)
                    .values(last_used_at=now)
                )
        return user, min(session.expires_at, last_used + self._session_idle) - now

    def change_password(
        self, access_token: str, current_password: str, new_password: str, client_ip: str = ""
    ) -> int:
        """Set a new password for the token's user and end every other session of theirs (this one
        stays); returns how many ended. Raises InvalidToken, ValidationError (``new_password``),
        Throttled, WrongPassword or Busy. A wrong current password counts as a failed log-in for the
        account (the same throttle): a stolen session cannot be used to guess the password faster
        than log-in can."""
        session, user, now = self._live_session(access_token)
        validate_new_password(new_password, user.email)
        attempt_id = self._start_attempt(user.email, _clean_ip(client_ip), now)
        try:
            matches = len(current_password) <= PASSWORD_MAX_LENGTH and self._passwords.verify(
                user.password_hash, current_password
            )
            new_hash = self._passwords.hash(new_password) if matches else ""
        except Busy:
            self._forget_attempt(attempt_id)
            raise
        if not matches:
            self._keep_failure(now)
            raise WrongPassword()
        with self._sessions.begin() as db:
            # The session may have ended (log-out elsewhere) while argon2 ran: then nothing changes.
            still_live = db.scalar(
                select(AuthSession.id).where(AuthSession.id == session.id, AuthSession.revoked_at.is_(None))
            )
            if still_live is None:
                raise InvalidToken("Access token is invalid or has been revoked.")
            db.execute(update(User).where(User.id == user.id).values(password_hash=new_hash))
            ended = db.execute(
                update(AuthSession)
                .where(
                    AuthSession.user_id == user.id,
                    AuthSession.id != session.id,
                    AuthSession.revoked_at.is_(None),
                )
                .values(revoked_at=utc_now())
            ).rowcount
            # As a log-in does: the account's failures (this attempt's row among them) are cleared.
            db.execute(delete(LoginFailure).where(LoginFailure.email == user.email))
        log.info("user %s changed their password; %d other sessions ended", user.id, ended)
        return ended

    def log_out_all(self, access_token: str) -> int:
        """End every session of the token's user, this one included; returns how many were live.
        Raises InvalidToken."""
        _, user, _ = self._live_session(access_token)
        with self._sessions.begin() as db:
            ended = db.execute(
                update(AuthSession)
                .where(AuthSession.user_id == user.id, AuthSession.revoked_at.is_(None))
                .values(revoked_at=utc_now())
            ).rowcount
        log.info("user %s logged out everywhere: %d sessions ended", user.id, ended)
        return ended

    def log_out(self, access_token: str) -> str | None:
        """Revoke the token at once; the id of the user whose session this call ended, None when it
        ended none. Unknown or already revoked tokens are fine (idempotent)."""
        if not access_token:
            return None
        with self._sessions.begin() as db:
            ended = db.execute(
                update(AuthSession)
                .where(AuthSession.token_hash == token_hash(access_token), AuthSession.revoked_at.is_(None))
                .values(revoked_at=utc_now())
                .returning(AuthSession.user_id)
            ).scalar_one_or_none()
        return None if ended is None else str(ended)

    def get_user(self, user_id: str) -> User:
        """Raises ValidationError for a malformed id, UserNotFound for an unknown one."""
        try:
            key = uuid.UUID(user_id)
        except ValueError:
            raise ValidationError({"id": "User id must be a UUID."}) from None
        with self._sessions.begin() as db:
            user = db.get(User, key)
        if user is None:
            raise UserNotFound()
        return user
