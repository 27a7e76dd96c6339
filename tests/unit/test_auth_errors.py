"""How auth domain errors become gRPC statuses (services.auth.interceptor.error_status)."""

from __future__ import annotations

from google.rpc import code_pb2, error_details_pb2
from sqlalchemy.exc import OperationalError

from services.auth.errors import ERROR_DOMAIN, BadCredentials, EmailTaken, InvalidToken, Throttled, UserNotFound
from services.auth.interceptor import error_status
from services.auth.validation import ValidationError


def test_invalid_fields_carry_one_bad_request_violation_per_field() -> None:
    status = error_status(ValidationError({"email": "Email is required.", "zip": "Bad ZIP."}))
    assert status.code == code_pb2.INVALID_ARGUMENT
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("email", "Email is required."),
        ("zip", "Bad ZIP."),
    ]


def test_each_domain_error_has_its_code_and_message() -> None:
    assert (error_status(EmailTaken()).code, error_status(EmailTaken()).message) == (
        code_pb2.ALREADY_EXISTS,
        "An account with this email already exists.",
    )
    assert error_status(BadCredentials()).code == code_pb2.UNAUTHENTICATED
    assert error_status(InvalidToken("Access token is missing.")).message == "Access token is missing."
    assert error_status(UserNotFound()).code == code_pb2.NOT_FOUND


def test_throttling_says_when_to_retry() -> None:
    status = error_status(Throttled(retry_after_s=90))
    assert status.code == code_pb2.RESOURCE_EXHAUSTED
    assert status.message == "Too many failed log-in attempts. Try again in about 2 minutes."
    retry = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(retry)
    assert retry.retry_delay.seconds == 90


def test_a_database_outage_is_unavailable_and_surprises_leak_nothing() -> None:
    outage = OperationalError("SELECT 1", {}, Exception("connection refused to 10.0.0.5"))
    assert error_status(outage).code == code_pb2.UNAVAILABLE
    assert "10.0.0.5" not in error_status(outage).message
    surprise = error_status(KeyError("secret internals"))
    assert (surprise.code, surprise.message) == (code_pb2.INTERNAL, "Internal error in the auth service.")


def test_a_short_wait_still_reads_as_a_minute() -> None:
    assert str(Throttled(retry_after_s=10)) == "Too many failed log-in attempts. Try again in about 1 minute."


def test_a_refusal_on_an_account_names_it_in_error_info_and_the_message_stays_the_same() -> None:
    """For the gateway's audit trail only: the client-facing message does not change."""
    known, unknown = error_status(BadCredentials(account_id="u-1")), error_status(BadCredentials())
    assert (known.code, known.message) == (unknown.code, unknown.message)
    info = error_details_pb2.ErrorInfo()
    assert known.details[-1].Unpack(info)
    assert (info.domain, dict(info.metadata)) == (ERROR_DOMAIN, {"account_id": "u-1"})
    assert not unknown.details
    throttled = Throttled(retry_after_s=60)
    throttled.account_id = "u-2"
    details = error_status(throttled).details
    assert [d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in details] == [True, False]
    assert details[1].Unpack(info) and info.metadata["account_id"] == "u-2"
