"""Diagnosis records: the gateway's own tables (nobody else reads or writes them).

The schema is created and upgraded by Alembic (gateway/migrations) at start-up; these classes
must match the latest migration.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (JSON, Boolean, DateTime, Float, Index, String, Table, Text, func, insert, select,
                        update)
from sqlalchemy import delete as delete_rows
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

STATUS_COMPLETED = "completed"
STATUS_FAILED = "failed"


class Base(DeclarativeBase):
    pass


def utc_now() -> datetime:
    return datetime.now(UTC)


class Diagnosis(Base):
    __tablename__ = "diagnoses"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=lambda: str(uuid.uuid4()))
    user_id: Mapped[str] = mapped_column(String(64))
    # The type the gateway used (for `auto`, the one it chose) and what the client asked for.
    exam_type: Mapped[str] = mapped_column(String(32))
    requested_exam_type: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    label: Mapped[str | None] = mapped_column(String(64), nullable=True)
    label_display: Mapped[str | None] = mapped_column(String(200), nullable=True)
    confidence: Mapped[float | None] = mapped_column(Float, nullable=True)
    probabilities: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    model_name: Mapped[str | None] = mapped_column(String(100), nullable=True)
    model_version: Mapped[str | None] = mapped_column(String(100), nullable=True)
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    explain: Mapped[bool] = mapped_column(Boolean, default=False)
    heatmap_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    heatmap_method: Mapped[str | None] = mapped_column(String(64), nullable=True)
    image_sha256: Mapped[str] = mapped_column(String(64))
    media_type: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now, onupdate=utc_now)

    __table_args__ = (
        Index("ix_diagnoses_user_created", "user_id", "created_at"),
        Index("ix_diagnoses_image_sha256", "image_sha256"),
        Index("ix_diagnoses_heatmap_sha256", "heatmap_sha256"),
    )


def add_all(session: Session, new: Sequence[Diagnosis], also: Sequence[Base] = ()) -> None:
    """Insert and commit the records in `new`, and `also` (their audit events), in one transaction:
    diagnoses finished together share a commit (gateway/write_batches.py). Each record is then as
    the database holds it (insert_rows filled in the defaults): reading it back would be a second
    query for nothing."""
    insert_rows(session, [*new, *also])
    session.commit()


def insert_rows(session: Session, items: Sequence[Base]) -> None:
    """INSERT `items`, new ORM objects, with one executemany per table (and set of columns given),
    without adding them to the session: the unit of work's bookkeeping (session.add_all and its
    flush) cost twice the CPU for rows that are only ever inserted here (benchmarks/README.md).
    A column left None that has a Python-side default gets it, on the object too, so each object
    holds what its row holds; a primary key left None is the database's (autoincrement), as is a
    default computed in SQL, and the object does not learn them."""
    batches: dict[tuple[Table, tuple[str, ...]], list[dict[str, Any]]] = {}
    for item in items:
        row = _row(item)
        batches.setdefault((item.__table__, tuple(row)), []).append(row)
    for (table, _), rows in batches.items():
        session.execute(insert(table), rows)


def _row(item: Base) -> dict[str, Any]:
    row: dict[str, Any] = {}
    given = vars(item)   # the values set on it (getattr through the ORM's descriptors is slower)
    for column in item.__table__.columns:
        value = given.get(column.key)
        default = column.default
        if value is None and default is not None and (default.is_callable or default.is_scalar):
            value = default.arg(None) if default.is_callable else default.arg
            setattr(item, column.key, value)
        if value is None and (column.primary_key or default is not None or column.server_default is not None):
            continue   # the database's key, or a default computed in SQL: the INSERT leaves it out
        row[column.key] = value
    return row


# What a model run fills in (run_model); the rest of a record never changes after it is created.
RESULT_COLUMNS = ("status", "detail", "label", "label_display", "confidence", "probabilities", "model_name",
                  "model_version", "extra", "heatmap_sha256", "heatmap_method")


def save_retry(session: Session, record: Diagnosis, also: Sequence[Base] = ()) -> Diagnosis | None:
    """Write a retried run's results onto the stored record, only if it still exists and is still
    failed (one conditional UPDATE, so a delete or a concurrent retry that came first wins); None
    when it did not. `also`: rows committed in the same transaction when it did (its audit event)."""
    values = {name: getattr(record, name) for name in RESULT_COLUMNS}
    changed = session.execute(
        update(Diagnosis)
        .where(Diagnosis.id == record.id, Diagnosis.status == STATUS_FAILED)
        .values(**values, updated_at=utc_now())
        .execution_options(synchronize_session=False)
    ).rowcount
    if changed:
        insert_rows(session, also)
    session.commit()
    return session.get(Diagnosis, record.id) if changed else None


def delete(session: Session, record_id: str, also: Sequence[Base] = ()) -> tuple[str, str | None] | None:
    """Delete the record; (image_sha256, heatmap_sha256) as the row held them when it went (one
    DELETE ... RETURNING, so a retry that added a heatmap a moment before is not missed), or None
    when it was already gone. `also`: rows committed in the same transaction when it went (its
    audit event)."""
    deleted = session.execute(
        delete_rows(Diagnosis)
        .where(Diagnosis.id == record_id)
        .returning(Diagnosis.image_sha256, Diagnosis.heatmap_sha256)
        .execution_options(synchronize_session=False)
    ).first()
    if deleted is not None:
        insert_rows(session, also)
    session.commit()
    return None if deleted is None else (deleted.image_sha256, deleted.heatmap_sha256)


def is_record_id(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


def get_owned(session: Session, diagnosis_id: str, user_id: str) -> Diagnosis | None:
    """The record, only if it belongs to `user_id` (someone else's id looks exactly like a missing one).
    An id that is not a record id (ours are canonical UUID strings) is missing without asking the
    database: PostgreSQL refuses text with a NUL in it outright."""
    if not is_record_id(diagnosis_id):
        return None
    record = session.get(Diagnosis, diagnosis_id)
    return record if record is not None and record.user_id == user_id else None


def list_owned(
    session: Session, user_id: str, *, limit: int, offset: int, exam_type: str | None = None
) -> tuple[list[Diagnosis], int]:
    """The user's records, newest first, and how many there are in all (with the same filter)."""
    where = [Diagnosis.user_id == user_id]
    if exam_type:
        where.append(Diagnosis.exam_type == exam_type)
    total = session.scalar(select(func.count()).select_from(Diagnosis).where(*where)) or 0
    rows = session.scalars(
        select(Diagnosis)
        .where(*where)
        .order_by(Diagnosis.created_at.desc(), Diagnosis.id.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    return list(rows), int(total)


def image_in_use(session: Session, digest: str) -> bool:
    return session.scalar(select(func.count()).where(Diagnosis.image_sha256 == digest)) != 0


def heatmap_in_use(session: Session, digest: str) -> bool:
    return session.scalar(select(func.count()).where(Diagnosis.heatmap_sha256 == digest)) != 0
