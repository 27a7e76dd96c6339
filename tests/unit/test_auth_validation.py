"""Sign-up rules (services.auth.validation): each field's rule and the message the gateway and UI show."""

from __future__ import annotations

from datetime import date

import pytest

from services.auth.validation import (
    GENDERS,
    SIGN_UP_FIELDS,
    ValidationError,
    common_passwords,
    is_common_password,
    normalize_email,
    password_problem,
    validate_new_password,
    validate_sign_up,
)

TODAY = date(2026, 11, 26)


def valid_fields(**overrides: str) -> dict[str, str]:
    fields = {
        "email": "Ada.Lovelace@Example.com",
        "password": "analytical engine",
        "first_name": "Ada",
        "surname": "Lovelace",
        "address1": "12 St James's Square",
        "address2": "",
        "city": "London",
        "state": "",
        "zip": "10001",
        "gender": "female",
        "birth_date": "1990-12-10",
    }
    fields.update(overrides)
    return fields


def violations(**overrides: str) -> dict[str, str]:
    with pytest.raises(ValidationError) as caught:
        validate_sign_up(valid_fields(**overrides), today=TODAY)
    return caught.value.violations


def test_a_valid_sign_up_is_normalised() -> None:
    form = validate_sign_up(valid_fields(first_name="  Ada ", zip="10001-1234"), today=TODAY)
    assert form.email == "ada.lovelace@example.com"
    assert form.first_name == "Ada"
    assert form.zip == "10001-1234"
    assert form.birth_date == date(1990, 12, 10)


def test_only_the_required_fields_are_needed() -> None:
    form = validate_sign_up(
        {"email": "a@example.com", "password": "secret engine", "first_name": "A", "surname": "B"},
        today=TODAY,
    )
    assert (form.address1, form.zip, form.gender, form.birth_date) == ("", "", "", None)


def test_every_problem_is_reported_at_once_under_the_api_field_names() -> None:
    problems = violations(
        email="", password="", first_name="", surname="", zip="x", gender="x", birth_date="x"
    )
    assert set(problems) == {"email", "password", "first_name", "surname", "zip", "gender", "birth_date"}
    assert set(problems) <= set(SIGN_UP_FIELDS)


@pytest.mark.parametrize(
    ("email", "message"),
    [
        ("", "Email is required."),
        ("   ", "Email is required."),
        ("not-an-email", "Enter a valid email address, like name@example.com."),
        ("a@b", "Enter a valid email address, like name@example.com."),
        ("two@@example.com", "Enter a valid email address, like name@example.com."),
        ("a" * 250 + "@example.com", "Email must be at most 254 characters."),
    ],
)
def test_email_rules(email: str, message: str) -> None:
    assert violations(email=email)["email"] == message


def test_email_is_compared_lower_case() -> None:
    assert normalize_email("  Ada@EXAMPLE.com ") == "ada@example.com"


@pytest.mark.parametrize(("typed", "stored"), [
    ("jose\u0301@example.com", "jos\u00e9@example.com"),       # a decomposed accent: composed (NFC)
    ("Jos\u00e9@Example.COM", "jos\u00e9@example.com"),
    ("ann@\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.com", "ann@example.com"),   # full-width domain
    ("jose@xn--bcher-kva.de", "jose@b\u00fccher.de"),          # punycode and Unicode: one domain
    ("jose@B\u00dcCHER.de", "jose@b\u00fccher.de"),
])
def test_every_spelling_of_one_address_is_stored_and_compared_as_one(typed: str, stored: str) -> None:
    assert normalize_email(typed) == stored


def test_text_that_is_no_address_is_still_normalised_for_log_in_throttling() -> None:
    assert normalize_email("  NOT-AN-e\u0301MAIL ") == "not-an-\u00e9mail"
    assert normalize_email("x" * 10_000) == "x" * 10_000


TOO_COMMON = "This password is too common: it is on a list of often-used and breached passwords."
CONTEXT = "Password must not contain your email address or this site's name."


@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("", "Password is required."),
        ("abcdefgh123", "Password must be at least 12 characters."),
        ("a1" * 64 + "x", "Password must be at most 128 characters."),
        ("abcd\x00efgh1234", "Password must not contain control characters."),
        ("aaaaaaaaaaaa", "Password must not be one character repeated."),
        ("1qaz2wsx3edc", TOO_COMMON),                  # on the list as it is
        ("QWERTYUIOP12", TOO_COMMON),                  # the list is compared without regard to case
        ("Password2024!", TOO_COMMON),                 # a listed password padded with digits/symbols
        ("!!sunshine1234", TOO_COMMON),
        ("ada.lovelace@example.com", CONTEXT),         # the account's own address
        ("I am ADA.LOVELACE!", CONTEXT),               # or its local part, in any case
        ("my drtech password", CONTEXT),               # or this site's name
    ],
)
def test_password_rules(password: str, message: str) -> None:
    assert violations(password=password)["password"] == message


@pytest.mark.parametrize("password", [
    "twelve chars",                 # exactly 12, letters only: no composition rules (ASVS 6.2.5)
    "123456789012345678901234",     # digits only, if not a listed one
    "correct horse battery staple",
    "x" * 127 + "y",                # 128, the longest
    "Ünïcödé pässwörd ✓",           # any characters
    "password manager generated: Zq8#vT!2",   # a listed word inside a longer password is fine
])
def test_passwords_of_any_composition_are_accepted(password: str) -> None:
    assert password_problem(password, "ada.lovelace@example.com") is None


def test_the_common_password_list_is_zxcvbns_30000_and_holds_the_usual_suspects() -> None:
    listed = common_passwords()
    assert len(listed) == 30_000
    assert {"123456", "password", "qwerty", "iloveyou", "1q2w3e4r5t6y"} <= listed
    assert is_common_password("PaSsWoRd") and not is_common_password("seven horses and a cart")
    # Padding is only stripped around a listed core of 4 or more characters.
    assert not is_common_password("ab123456789012")


def test_a_short_email_local_part_is_no_context_word() -> None:
    assert password_problem("a quiet bookshop", "bo@example.com") is None   # "bo" is too short to ban
    assert password_problem("my email is bo@example.com", "bo@example.com") == CONTEXT


def test_a_new_password_is_refused_under_the_field_it_was_sent_in() -> None:
    with pytest.raises(ValidationError) as caught:
        validate_new_password("short", "ada@example.com")
    assert caught.value.violations == {"new_password": "Password must be at least 12 characters."}
    validate_new_password("analytical engine", "ada@example.com")


def test_password_spaces_are_kept() -> None:
    assert validate_sign_up(valid_fields(password=" pass word 12 "), today=TODAY).password == " pass word 12 "


@pytest.mark.parametrize(("field", "label"), [("first_name", "First name"), ("surname", "Surname")])
def test_names_are_required_and_bounded(field: str, label: str) -> None:
    assert violations(**{field: " "})[field] == f"{label} is required."
    assert violations(**{field: "x" * 101})[field] == f"{label} must be at most 100 characters."
    assert violations(**{field: "A\nB"})[field] == f"{label} must not contain control characters."


@pytest.mark.parametrize(("field", "label"), [("first_name", "First name"), ("surname", "Surname")])
@pytest.mark.parametrize("invisible", ["\u200b", "\u2060", "\ufeff", "Ada\u202eecalevol", "Ada\u2028B"])
def test_names_of_invisible_or_direction_changing_characters_are_refused(
    field: str, label: str, invisible: str
) -> None:
    """Zero-width spaces, word joiners, byte-order marks, bidi overrides, line separators: a name a
    list would show as blank, or as other letters than it holds."""
    assert violations(**{field: invisible})[field] == (
        f"{label} must not contain invisible formatting characters or line separators.")


def test_a_required_name_needs_a_letter_and_scripts_that_spell_with_joiners_are_kept() -> None:
    assert violations(first_name="-")["first_name"] == "First name must contain at least one letter."
    form = validate_sign_up(valid_fields(first_name="\u0645\u06cc\u200c\u0631\u0636\u0627"), today=TODAY)
    assert form.first_name == "\u0645\u06cc\u200c\u0631\u0636\u0627"   # Persian, with a zero-width non-joiner


def test_a_zip_code_is_ascii_digits() -> None:
    arabic_indic, full_width = "\u0661\u0662\u0663\u0664\u0665", "\uff11\uff12\uff13\uff14\uff15"
    assert violations(zip=arabic_indic)["zip"].startswith("ZIP code must be")
    assert violations(zip=full_width)["zip"].startswith("ZIP code must be")


@pytest.mark.parametrize(
    ("field", "label", "limit"),
    [
        ("address1", "Address", 200),
        ("address2", "Address line 2", 200),
        ("city", "City", 100),
        ("state", "State", 100),
    ],
)
def test_optional_text_is_bounded(field: str, label: str, limit: int) -> None:
    validate_sign_up(valid_fields(**{field: "x" * limit}), today=TODAY)
    assert violations(**{field: "x" * (limit + 1)})[field] == f"{label} must be at most {limit} characters."


@pytest.mark.parametrize("zip_code", ["1234", "123456", "ABCDE", "12345-", "12345-678", "12345 6789"])
def test_zip_must_be_a_us_zip_code(zip_code: str) -> None:
    assert violations(zip=zip_code)["zip"] == "ZIP code must be 5 digits, or 5+4 digits like 12345-6789."


def test_gender_must_be_one_of_the_allowed_values() -> None:
    for gender in (*GENDERS, ""):
        validate_sign_up(valid_fields(gender=gender), today=TODAY)
    assert violations(gender="Female")["gender"] == (
        "Gender must be one of: female, male, other, prefer_not_to_say (or left empty)."
    )


@pytest.mark.parametrize(
    ("birth_date", "message"),
    [
        ("1990-02-30", "Birth date must be a real date in the form YYYY-MM-DD."),
        ("19900210", "Birth date must be a real date in the form YYYY-MM-DD."),
        ("10/02/1990", "Birth date must be a real date in the form YYYY-MM-DD."),
        ("2026-11-27", "Birth date cannot be in the future."),
        ("1896-11-25", "Birth date cannot be more than 130 years ago."),
    ],
)
def test_birth_date_rules(birth_date: str, message: str) -> None:
    assert violations(birth_date=birth_date)["birth_date"] == message


def test_birth_date_bounds_are_inclusive() -> None:
    assert validate_sign_up(valid_fields(birth_date="2026-11-26"), today=TODAY).birth_date == TODAY
    assert validate_sign_up(valid_fields(birth_date="1896-11-26"), today=TODAY).birth_date == date(
        1896, 11, 26
    )
