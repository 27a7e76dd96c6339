"""Domain errors of the auth service. ``services.auth.interceptor`` maps each to one gRPC status."""

from __future__ import annotations


# The domain of the google.rpc.ErrorInfo that names an error's account (metadata "account_id").
ERROR_DOMAIN = "auth.drtech"


class AuthError(Exception):
    """Base class; ``str(error)`` is the client-facing message.

    ``account_id``: the account an attempt concerned, when it has one (a failed or throttled log-in on
    an email that has an account). It travels to the gateway only, in the status's google.rpc.ErrorInfo,
    for its audit trail; the gateway never shows it to a client (the reply stays the same either way)."""

    account_id: str | None = None


class EmailTaken(AuthError):
    def __init__(self) -> None:
        super().__init__("An account with this email already exists.")


class BadCredentials(AuthError):
    # One message whether the email is unknown or the password wrong, so replies do not reveal accounts.
    def __init__(self, account_id: str | None = None) -> None:
        super().__init__("Incorrect email or password.")
        self.account_id = account_id


class WrongPassword(AuthError):
    """The current password given to change it is not the account's (the session itself is valid)."""

    field = "current_password"

    def __init__(self) -> None:
        super().__init__("The current password is incorrect.")


class Throttled(AuthError):
    def __init__(self, retry_after_s: float, reason: str = "Too many failed log-in attempts.") -> None:
        self.retry_after_s = max(1.0, retry_after_s)
        minutes = max(1, round(self.retry_after_s / 60))
        unit = "minute" if minutes == 1 else "minutes"
        super().__init__(f"{reason} Try again in about {minutes} {unit}.")


class SignUpsThrottled(Throttled):
    """Too many accounts created from one client address within the sign-up window."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(retry_after_s, "Too many accounts were created from your network.")


class Busy(AuthError):
    """Every argon2 slot stayed taken for the wait: shed the call rather than queue it behind them."""

    def __init__(self) -> None:
        super().__init__("The auth service is busy; try again in a moment.")


class InvalidToken(AuthError):
    """Missing, unknown, revoked or expired access token; the message says which of these it is."""


class UserNotFound(AuthError):
    def __init__(self) -> None:
        super().__init__("No user with this id.")
