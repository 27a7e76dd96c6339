"""The `limit` and `offset` query parameters of the paged lists (GET /api/v1/diagnoses and
GET /api/v1/me/activity): the same defaults, bounds and errors for both."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from fastapi import Query
from pydantic import BeforeValidator

T = TypeVar("T")
# Far past any history, and within the 64-bit integer SQLite and PostgreSQL take for OFFSET.
MAX_OFFSET = 1_000_000_000
DEFAULT_PAGE_SIZE = 20


def _empty_is_absent(value: Any) -> Any:
    return None if value == "" else value


# A query parameter that may be left out, or sent empty: API.md writes the list's query as
# `?limit=&offset=&exam_type=`, and an empty value there means "not given".
OptionalQuery = Annotated[T | None, BeforeValidator(_empty_is_absent), Query()]
