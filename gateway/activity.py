"""GET /api/v1/me/activity: the caller's own audit events (gateway/audit.py), newest first, paged as
the history is (GET /api/v1/diagnoses: the same limit and offset rules and errors)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import Field

from gateway import audit
from gateway.accounts import CallerDep
from gateway.context import ContextDep, in_session
from gateway.paging import DEFAULT_PAGE_SIZE, MAX_OFFSET, OptionalQuery

router = APIRouter(prefix="/api/v1")


@router.get("/me/activity")
async def my_activity(
    caller: CallerDep,
    ctx: ContextDep,
    limit: OptionalQuery[Annotated[int, Field(ge=1, le=100)]] = None,
    offset: OptionalQuery[Annotated[int, Field(ge=0, le=MAX_OFFSET)]] = None,
) -> dict[str, Any]:
    """Sign-ups, log-ins (failed ones on the account's email too), log-outs, password changes,
    throttling, and every create, view, image or heatmap fetch, retry and delete of the caller's
    records. Events that concern no account (attempts on unknown emails) are for operators only."""
    limit = DEFAULT_PAGE_SIZE if limit is None else limit
    offset = 0 if offset is None else offset
    rows, total = await in_session(
        ctx, lambda s: audit.list_for_user(s, caller.user.id, limit=limit, offset=offset)
    )
    return {"items": [audit.event_json(row) for row in rows], "total": total, "limit": limit, "offset": offset}
