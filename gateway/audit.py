"""The audit trail: every authentication decision and every access to a diagnosis record, as an
append-only row in the gateway's database and a JSON line on the `drtech.audit` logger.

What a row holds: the event, its outcome, whose account it concerns (None for an attempt on no
account: operators only), which record, when, the client's address (as uvicorn's trusted-proxy
handling resolved it) and its user agent (cut to USER_AGENT_MAX_LENGTH). Never a password, a token,
a cookie, the Authorization header or an image's bytes: nothing here is handed any of them.

Policy when the audit write fails (docs/architecture.md, "Audit trail"):
- an access to a record is not served: its row is written before the answer (view, image, heatmap)
  or in the same transaction as the change (create, retry, delete), and a failed write is 503;
- a log-in that succeeded is undone (its session revoked) and answered 503: access unaudited is
  access refused;
- anything the auth service has already done and cannot be undone (sign-up, log-out, log-out
  everywhere, password change) and every refusal keeps its answer, and the event still leaves as a
  JSON line at ERROR with `"stored": false`, so the log pipeline holds what the table could not.

Rows are never updated or deleted by the gateway, except by the retention purge (purge_expired),
which removes rows older than `audit_retention_days`; the migration's triggers refuse any UPDATE,
and any DELETE of a row younger than RETENTION_FLOOR_DAYS, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from datetime import datetime, timedelta
from typing import Any, Literal

import anyio
from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import BigInteger, DateTime, Index, Integer, String, delete, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from gateway.context import GatewayContext, client_ip
from gateway.errors import ApiError
from gateway.records import Base, insert_rows, is_record_id, utc_now
from gateway.serialization import iso_utc

log = logging.getLogger("drtech.audit")
errors_log = logging.getLogger("gateway.audit")

Event = Literal[
    "sign_up", "log_in", "log_out", "log_out_all", "password_change",
    "diagnosis_create", "diagnosis_view", "diagnosis_image", "diagnosis_heatmap", "diagnosis_retry",
    "diagnosis_delete",
]
# success: done or served; failure: refused (wrong credentials, invalid or conflicting input, a
# gone upload); throttled: refused by a rate limit (429); not_found: no such record of the caller's
# (404, which is also what someone else's record looks like); error: the system could not answer.
Outcome = Literal["success", "failure", "throttled", "not_found", "error"]

USER_AGENT_MAX_LENGTH = 256
# IPv6 text is at most 45 characters; uvicorn may hand a proxy's unparsed X-Forwarded-For entry.
IP_MAX_LENGTH = 64
# The triggers refuse to delete rows younger than this (migration 0002): no retention setting may
# be shorter, and no code path can empty the trail of recent events.
RETENTION_FLOOR_DAYS = 30
UNRECORDED = "The access could not be recorded in the audit trail, so it was not served; try again shortly."


class AuditEvent(Base):
    __tablename__ = "audit_events"

    # BigInteger: the trail of a busy site outgrows 2^31 rows in its years of retention.
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    event: Mapped[str] = mapped_column(String(32))
    outcome: Mapped[str] = mapped_column(String(16))
    user_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    diagnosis_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    ip: Mapped[str] = mapped_column(String(IP_MAX_LENGTH))
    user_agent: Mapped[str] = mapped_column(String(USER_AGENT_MAX_LENGTH))

    __table_args__ = (
        Index("ix_audit_events_user_at", "user_id", "at", "id"),
        Index("ix_audit_events_at", "at"),
    )


def clean_text(value: str, max_length: int) -> str:
    """A header value as it may be stored and shown: control characters (NUL, which PostgreSQL text
    refuses, newlines that would forge log lines, escapes) become U+FFFD, and it is cut to length."""
    return "".join(c if c.isprintable() else "\ufffd" for c in value[:max_length])


def outcome_of(status_code: int) -> Outcome:
    if status_code < 400:
        return "success"
    if status_code == 404:
        return "not_found"
    if status_code == 429:
        return "throttled"
    return "error" if status_code >= 500 else "failure"


@dataclass(frozen=True)
class Entry:
    """One event, as it is stored and logged."""

    event: Event
    outcome: Outcome
    user_id: str | None
    ip: str
    user_agent: str
    diagnosis_id: str | None = None
    at: datetime = field(default_factory=utc_now)

    def fields(self) -> dict[str, Any]:
        # Each field is a str, None or a datetime: a shallow copy is all of it (asdict's deep copy of
        # every value cost ~3% of the gateway's event loop per diagnosis; benchmarks/README.md).
        return dict(vars(self))

    def row(self) -> AuditEvent:
        return AuditEvent(**self.fields())

    def json_line(self, stored: bool) -> str:
        fields = self.fields()
        fields["at"] = self.at.isoformat()
        fields["stored"] = stored
        return json.dumps(fields, ensure_ascii=False, sort_keys=True)


def entry(request: Request, event: Event, outcome: Outcome, user_id: str | None,
          diagnosis_id: str | None = None) -> Entry:
    """The event of `request`, by its client address and user agent. A diagnosis id from a URL is
    kept only when it is a record id: anything else names no record and is not stored."""
    return Entry(
        event=event,
        outcome=outcome,
        user_id=user_id or None,
        ip=clean_text(client_ip(request), IP_MAX_LENGTH),
        user_agent=clean_text(request.headers.get("user-agent", ""), USER_AGENT_MAX_LENGTH),
        diagnosis_id=diagnosis_id if diagnosis_id and is_record_id(diagnosis_id) else None,
    )


def emit(event: Entry, stored: bool = True) -> None:
    """The event's JSON line: INFO once its row is committed, ERROR when the row could not be."""
    log.log(logging.INFO if stored else logging.ERROR, event.json_line(stored))


def _store(ctx: GatewayContext, events: list[Entry]) -> None:
    with ctx.sessions() as session:
        insert_rows(session, [event.row() for event in events])
        session.commit()


async def record(ctx: GatewayContext, event: Entry, *, required: bool) -> bool:
    """Store the event and log it; returns once its row is committed (in one transaction with the
    events recorded at the same moment: gateway/write_batches.py). When that fails: with `required`,
    503 (the caller must not serve what it could not audit); without, False, and the JSON line at ERROR."""
    try:
        await ctx.audit_writes.write(event, partial(_store, ctx))
    except Exception:
        errors_log.exception("could not store the audit event %s/%s", event.event, event.outcome)
        emit(event, stored=False)
        if required:
            raise ApiError(503, UNRECORDED, headers={"Retry-After": "5"}) from None
        return False
    emit(event)
    return True


@asynccontextmanager
async def refusals_recorded(ctx: GatewayContext, request: Request, event: Event, user_id: str | None,
                            diagnosis_id: str | None = None) -> AsyncIterator[None]:
    """Record an ApiError raised in the block as the event's refusal (by its status code), then let it
    go on. Refusals keep their answer when the audit write fails (record's `required=False`)."""
    try:
        yield
    except ApiError as error:
        await record(ctx, entry(request, event, outcome_of(error.status_code), user_id, diagnosis_id),
                     required=False)
        raise


def list_for_user(session: Session, user_id: str, *, limit: int, offset: int) -> tuple[list[AuditEvent], int]:
    """The user's events, newest first, and how many there are in all."""
    where = AuditEvent.user_id == user_id
    total = session.scalar(select(func.count()).select_from(AuditEvent).where(where)) or 0
    rows = session.scalars(
        select(AuditEvent).where(where).order_by(AuditEvent.at.desc(), AuditEvent.id.desc())
        .limit(limit).offset(offset)
    ).all()
    return list(rows), int(total)


def purge_expired(session: Session, retention_days: int, now: datetime | None = None) -> int:
    """Delete the events older than `retention_days` (the one DELETE on this table); how many went."""
    if retention_days < RETENTION_FLOOR_DAYS:
        raise ValueError(f"retention_days must be at least {RETENTION_FLOOR_DAYS}")
    cutoff = (now or utc_now()) - timedelta(days=retention_days)
    removed = session.execute(
        delete(AuditEvent).where(AuditEvent.at < cutoff).execution_options(synchronize_session=False)
    ).rowcount
    session.commit()
    return int(removed or 0)


async def purge_periodically(ctx: GatewayContext) -> None:
    """Run purge_expired at start-up and every `audit_purge_interval_s` until cancelled. Every replica
    runs it; concurrent purges delete the same old rows, which is harmless. A failure is logged and
    tried again next time (the rows only stay a little longer)."""
    settings = ctx.settings
    while True:
        try:
            def purge() -> int:
                with ctx.sessions() as session:
                    return purge_expired(session, settings.audit_retention_days)

            removed = await run_in_threadpool(purge)
            if removed:
                errors_log.info("audit retention: removed %d events older than %d days",
                                removed, settings.audit_retention_days)
        except Exception:
            errors_log.exception("audit retention purge failed; trying again in %.0f s",
                                 settings.audit_purge_interval_s)
        await anyio.sleep(settings.audit_purge_interval_s)


def configure_audit_log() -> None:
    """Give `drtech.audit` its own stderr handler that writes each event's JSON as the whole line
    (no timestamp prefix), so a log shipper parses it as it is; the root handler does not repeat it."""
    if getattr(log, "_drtech_configured", False):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    log._drtech_configured = True  # type: ignore[attr-defined]


def event_json(row: AuditEvent) -> dict[str, Any]:
    """An event as GET /api/v1/me/activity shows it (the user id is the caller's own: not repeated)."""
    item: dict[str, Any] = {
        "event": row.event,
        "at": iso_utc(row.at),
        "ip": row.ip,
        "user_agent": row.user_agent,
        "outcome": row.outcome,
    }
    if row.diagnosis_id:
        item["diagnosis_id"] = row.diagnosis_id
    return item
