"""Sign-up and log-in field rules, shared by the auth service and the gateway (API 422s and the web UI).

Pure Python: no gRPC, no SQLAlchemy, so the gateway can import it as is. Field names are the API's JSON
names. Every rule gives one clear message per field; the UI can mirror the constants below.

Rules (all text fields are stripped of surrounding whitespace first; control characters are refused):

- ``email``: required, at most 254 characters, a syntactically valid address (``email-validator``, no DNS
  look-up). Stored normalised: the whole address lower-cased, so look-ups are case-insensitive.
- ``password`` (sign-up and password change; OWASP ASVS 5.0 V6.2): required, 12 to 128 characters of
  any kind (no composition rules, ASVS 6.2.5), not one character repeated, not on the common-password
  list (:func:`is_common_password`), and not containing this site's name or the account's email
  address (context-specific words, ASVS 6.2.11). Passwords are never stripped or case-folded: spaces
  are allowed and significant. Log-in does not apply these rules, so accounts made under an older
  policy keep working.
- ``first_name``, ``surname``: required, at most 100 characters, at least one of them a letter.
- ``address1``, ``address2``: optional, at most 200 characters each.
- No text field holds invisible formatting characters (Unicode Cf: zero-width spaces, bidi
  overrides, byte-order marks; the zero-width joiner and non-joiner some scripts spell with are
  allowed) or line and paragraph separators.
- ``city``, ``state``: optional, at most 100 characters each.
- ``zip``: optional; when given a US ZIP code, ``12345`` or ``12345-6789``.
- ``gender``: optional; one of ``female``, ``male``, ``other``, ``prefer_not_to_say`` (or empty).
- ``birth_date``: optional; an ISO 8601 date ``YYYY-MM-DD``, not in the future and at most
  130 years ago.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import string
import unicodedata
from collections.abc import Mapping
from datetime import date

from email_validator import EmailNotValidError, validate_email

EMAIL_MAX_LENGTH = 254
PASSWORD_MIN_LENGTH = 12
PASSWORD_MAX_LENGTH = 128
NAME_MAX_LENGTH = 100
ADDRESS_MAX_LENGTH = 200
PLACE_MAX_LENGTH = 100
ZIP_PATTERN = re.compile(r"^[0-9]{5}(-[0-9]{4})?$")   # ASCII digits: \d takes any script's
GENDERS: tuple[str, ...] = ("female", "male", "other", "prefer_not_to_say")
MAX_AGE_YEARS = 130
# Context-specific words (ASVS 6.2.11) no password may contain, lower-case; the account's own email
# address (and its local part, when 4 characters or more) are added per account.
SITE_WORDS: tuple[str, ...] = ("drtech", "dr.tech", "dr tech", "dr-tech")
# Characters a common password is most often padded with ("password2024!", "!!qwerty123").
_PADDING = string.digits + string.punctuation + " "

SIGN_UP_FIELDS: tuple[str, ...] = (
    "email",
    "password",
    "first_name",
    "surname",
    "address1",
    "address2",
    "city",
    "state",
    "zip",
    "gender",
    "birth_date",
)


class ValidationError(ValueError):
    """One or more fields are invalid; ``violations`` maps each field name to its message."""

    def __init__(self, violations: Mapping[str, str]) -> None:
        self.violations: dict[str, str] = dict(violations)
        summary = "; ".join(f"{field}: {message}" for field, message in self.violations.items())
        super().__init__(f"invalid fields: {summary}")


@dataclasses.dataclass(frozen=True)
class SignUpForm:
    """A sign-up that passed every rule, normalised and ready to store."""

    email: str
    password: str
    first_name: str
    surname: str
    address1: str
    address2: str
    city: str
    state: str
    zip: str
    gender: str
    birth_date: date | None


def normalize_email(email: str) -> str:
    """The stored, comparable form of an address, lower-cased: email_validator's normalized form
    (local part in Unicode NFC, domain IDNA-normalized), so "josé" typed composed or decomposed,
    "ｅｘａｍｐｌｅ.com" and "xn--bcher-kva.de" name the same account as their usual spellings.
    Text that is no valid address (a log-in may send any) is NFC, stripped and lower-cased."""
    stripped = email.strip()
    if len(stripped) <= EMAIL_MAX_LENGTH:
        try:
            return validate_email(stripped, check_deliverability=False).normalized.lower()
        except EmailNotValidError:
            pass
    return unicodedata.normalize("NFC", stripped).lower()


def _has_control_characters(value: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" for ch in value)


# Joiners some scripts spell with (Persian, Indic), among the otherwise invisible format characters.
_JOINERS = ("\u200c", "\u200d")


def _has_invisible_characters(value: str) -> bool:
    return any(unicodedata.category(ch) in ("Cf", "Zl", "Zp") and ch not in _JOINERS for ch in value)


def email_problem(email: str) -> str | None:
    """The message for an invalid e-mail address, or None when it is acceptable."""
    email = email.strip()
    if not email:
        return "Email is required."
    if len(email) > EMAIL_MAX_LENGTH:
        return f"Email must be at most {EMAIL_MAX_LENGTH} characters."
    try:
        validate_email(email, check_deliverability=False)
    except EmailNotValidError:
        return "Enter a valid email address, like name@example.com."
    return None


@functools.cache
def common_passwords() -> frozenset[str]:
    """The common-password list: the 30,000 most frequent passwords that zxcvbn ships
    (``zxcvbn.frequency_lists``, drawn from leaked password corpora), lower-case. Loaded on first use."""
    from zxcvbn.frequency_lists import FREQUENCY_LISTS  # a 30k-entry module: imported only when needed

    return frozenset(FREQUENCY_LISTS["passwords"])


def is_common_password(password: str) -> bool:
    """True when ``password``, compared without regard to case, is on the common-password list, or is
    a listed password of 4 or more characters with only digits, punctuation or spaces added before or
    after it ("qwerty123456", "Sunshine2024!"): the first variations a guessing attacker tries, and
    what lets a list of mostly short passwords still catch long weak ones."""
    lowered = password.lower()
    listed = common_passwords()
    if lowered in listed:
        return True
    core = lowered.strip(_PADDING)
    return len(core) >= 4 and core != lowered and core in listed


def _context_words(email: str) -> list[str]:
    words = list(SITE_WORDS)
    email = email.strip().lower()
    if email:
        words.append(email)
        local = email.partition("@")[0]
        if len(local) >= 4:
            words.append(local)
    return words


def password_problem(password: str, email: str = "") -> str | None:
    """The message for a password that breaks the policy, or None when it is acceptable. ``email`` is
    the account's address, which the password must not contain."""
    if not password:
        return "Password is required."
    if len(password) < PASSWORD_MIN_LENGTH:
        return f"Password must be at least {PASSWORD_MIN_LENGTH} characters."
    if len(password) > PASSWORD_MAX_LENGTH:
        return f"Password must be at most {PASSWORD_MAX_LENGTH} characters."
    if _has_control_characters(password):
        return "Password must not contain control characters."
    if len(set(password)) == 1:
        return "Password must not be one character repeated."
    if is_common_password(password):
        return "This password is too common: it is on a list of often-used and breached passwords."
    lowered = password.lower()
    if any(word in lowered for word in _context_words(email)):
        return "Password must not contain your email address or this site's name."
    return None


def _text_problem(label: str, value: str, *, required: bool, max_length: int) -> str | None:
    if not value:
        return f"{label} is required." if required else None
    if len(value) > max_length:
        return f"{label} must be at most {max_length} characters."
    if _has_control_characters(value):
        return f"{label} must not contain control characters."
    if _has_invisible_characters(value):
        return f"{label} must not contain invisible formatting characters or line separators."
    if required and not any(ch.isalpha() for ch in value):
        return f"{label} must contain at least one letter."
    return None


def zip_problem(value: str) -> str | None:
    if value and not ZIP_PATTERN.fullmatch(value):
        return "ZIP code must be 5 digits, or 5+4 digits like 12345-6789."
    return None


def gender_problem(value: str) -> str | None:
    if value and value not in GENDERS:
        return "Gender must be one of: " + ", ".join(GENDERS) + " (or left empty)."
    return None


def parse_birth_date(value: str, today: date) -> tuple[date | None, str | None]:
    """``(date, None)`` for an acceptable birth date (None when empty), or ``(None, message)``."""
    if not value:
        return None, None
    try:
        # fromisoformat also takes "20000101"; the contract is the dashed form only.
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            raise ValueError(value)
        born = date.fromisoformat(value)
    except ValueError:
        return None, "Birth date must be a real date in the form YYYY-MM-DD."
    if born > today:
        return None, "Birth date cannot be in the future."
    if born < _years_before(today, MAX_AGE_YEARS):
        return None, f"Birth date cannot be more than {MAX_AGE_YEARS} years ago."
    return born, None


def _years_before(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year - years)
    except ValueError:  # 29 February in a year that is not a leap year
        return day.replace(year=day.year - years, day=28)


def validate_new_password(password: str, email: str, field: str = "new_password") -> None:
    """Raise ValidationError naming ``field`` when ``password`` may not become ``email``'s password."""
    problem = password_problem(password, email)
    if problem is not None:
        raise ValidationError({field: problem})


def validate_sign_up(fields: Mapping[str, str | None], today: date | None = None) -> SignUpForm:
    """Check a sign-up against every rule; return it normalised or raise ValidationError with all problems."""
    today = today or date.today()

    def text(name: str) -> str:
        value = fields.get(name)
        return (value or "").strip()

    password = fields.get("password") or ""
    problems: dict[str, str | None] = {
        "email": email_problem(text("email")),
        "password": password_problem(password, text("email")),
        "first_name": _text_problem(
            "First name", text("first_name"), required=True, max_length=NAME_MAX_LENGTH
        ),
        "surname": _text_problem("Surname", text("surname"), required=True, max_length=NAME_MAX_LENGTH),
        "address1": _text_problem("Address", text("address1"), required=False, max_length=ADDRESS_MAX_LENGTH),
        "address2": _text_problem(
            "Address line 2", text("address2"), required=False, max_length=ADDRESS_MAX_LENGTH
        ),
        "city": _text_problem("City", text("city"), required=False, max_length=PLACE_MAX_LENGTH),
        "state": _text_problem("State", text("state"), required=False, max_length=PLACE_MAX_LENGTH),
        "zip": zip_problem(text("zip")),
        "gender": gender_problem(text("gender")),
    }
    birth_date, problems["birth_date"] = parse_birth_date(text("birth_date"), today)
    violations = {field: message for field, message in problems.items() if message is not None}
    if violations:
        raise ValidationError(violations)
    return SignUpForm(
        email=normalize_email(text("email")),
        password=password,
        first_name=text("first_name"),
        surname=text("surname"),
        address1=text("address1"),
        address2=text("address2"),
        city=text("city"),
        state=text("state"),
        zip=text("zip"),
        gender=text("gender"),
        birth_date=birth_date,
    )
