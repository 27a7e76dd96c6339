"""The gateway's records on a real database: SQLite, and PostgreSQL when DRTECH_TEST_POSTGRES_URL is set."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Integer, String, inspect, literal, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from gateway import records
from gateway.audit import AuditEvent
from gateway.database import create_database_engine, migrate, session_factory
from gateway.operations import database_state
from gateway.records import Diagnosis
from services.auth.database import make_engine


def record(user_id: str, exam_type: str, image: str, minutes: int) -> Diagnosis:
    return Diagnosis(
        user_id=user_id,
        exam_type=exam_type,
        requested_exam_type=exam_type,
        status="completed",
        label="NORMAL",
        label_display="Normal",
        confidence=0.9,
        probabilities={"NORMAL": 0.9, "ABNORMAL": 0.1},
        model_name="bone",
        model_version="1",
        extra={"kl_grade": 1},
        explain=False,
        image_sha256=image,
        media_type="image/png",
        created_at=records.utc_now() + timedelta(minutes=minutes),
    )


def test_migrations_create_the_schema_and_are_idempotent(database_url: str) -> None:
    engine = create_database_engine(database_url)
    try:
        migrate(engine)
        migrate(engine)
        inspector = inspect(engine)
        assert {"diagnoses", "gateway_alembic_version"} <= set(inspector.get_table_names())
        columns = {column["name"] for column in inspector.get_columns("diagnoses")}
        assert {
            "id",
            "user_id",
            "exam_type",
            "status",
            "detail",
            "label",
            "label_display",
            "confidence",
            "probabilities",
            "model_name",
            "model_version",
            "extra",
            "heatmap_sha256",
            "image_sha256",
            "media_type",
            "created_at",
        } <= columns
    finally:
        engine.dispose()


def test_a_migration_that_fails_halfway_leaves_the_database_as_it_was(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As for the auth service: an interrupted first start must not strand half a schema."""
    from alembic.operations import Operations

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    engine = create_database_engine(database_url)
    try:
        with monkeypatch.context() as patch:
            patch.setattr(Operations, "create_index", interrupted)
            with pytest.raises(KeyboardInterrupt):
                migrate(engine)
        assert "diagnoses" not in inspect(engine).get_table_names()
        migrate(engine)
        assert {"diagnoses", "gateway_alembic_version"} <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_records_list_newest_first_per_user_and_track_shared_images(database_url: str) -> None:
    engine = create_database_engine(database_url)
    try:
        migrate(engine)
        sessions = session_factory(engine)
        with sessions() as session:
            old = record("alice", "bone_xray", "a" * 64, 0)
            new = record("alice", "chest_xray", "a" * 64, 5)
            records.add_all(session, [old, new, record("bob", "bone_xray", "b" * 64, 1)])

            rows, total = records.list_owned(session, "alice", limit=10, offset=0)
            assert total == 2 and [r.id for r in rows] == [new.id, old.id]
            assert rows[1].probabilities == {"NORMAL": 0.9, "ABNORMAL": 0.1} and rows[1].extra == {
                "kl_grade": 1
            }
            rows, total = records.list_owned(session, "alice", limit=10, offset=0, exam_type="bone_xray")
            assert total == 1 and rows[0].id == old.id
            assert records.get_owned(session, old.id, "bob") is None
            assert records.get_owned(session, old.id, "alice") is not None

            session.delete(session.get(Diagnosis, old.id))
            session.commit()
            assert records.image_in_use(session, "a" * 64)
            session.delete(session.get(Diagnosis, new.id))
            session.commit()
            assert not records.image_in_use(session, "a" * 64)
    finally:
        engine.dispose()


def test_an_id_that_is_no_record_id_is_missing_without_a_database_error(database_url: str) -> None:
    """Ids come from URLs: PostgreSQL raises on text with a NUL in it, which must not become a 500."""
    engine = create_database_engine(database_url)
    try:
        migrate(engine)
        with session_factory(engine)() as session:
            kept = record("alice", "bone_xray", "a" * 64, 0)
            records.add_all(session, [kept])
            for bad in ("\x00", f"{kept.id}\x00", "not-a-uuid", kept.id.upper(), ""):
                assert records.get_owned(session, bad, "alice") is None, bad
            assert records.get_owned(session, kept.id, "alice") is not None
    finally:
        engine.dispose()


def test_the_readiness_check_says_ok_for_a_live_database_and_unreachable_for_a_closed_one(
    database_url: str,
) -> None:
    live = create_database_engine(database_url)
    # Nothing listens on port 9: connecting is refused at once.
    closed = create_database_engine("postgresql+psycopg://postgres@127.0.0.1:9/nowhere")
    try:
        assert database_state(live) == "ok"
        assert database_state(closed) == "unreachable (OperationalError)"
    finally:
        live.dispose()
        closed.dispose()


def test_inserted_records_hold_what_their_rows_hold_and_their_events_get_ids(database_url: str) -> None:
    """add_all inserts without the unit of work: each record's defaults are filled in on the object
    too, so the record answered is the record read back; audit events get the database's ids."""
    engine = create_database_engine(database_url)
    try:
        migrate(engine)
        sessions = session_factory(engine)
        first = Diagnosis(user_id="alice", exam_type="skin_lesion", requested_exam_type="auto", status="failed",
                          image_sha256="a" * 64, media_type="image/jpeg")
        second = record("bob", "bone_xray", "b" * 64, 1)
        events = [AuditEvent(at=records.utc_now(), event="diagnosis_create", outcome="success", user_id=user,
                             ip="127.0.0.1", user_agent="test") for user in ("alice", "bob")]
        with sessions() as session:
            records.add_all(session, [first, second], also=events)
        assert first.id and first.explain is False and first.probabilities == {} and first.extra == {}
        assert first.created_at is not None and first.updated_at is not None
        with sessions() as session:
            for made in (first, second):
                stored = session.get(Diagnosis, made.id)
                for column in Diagnosis.__table__.columns:
                    held, read = getattr(made, column.key), getattr(stored, column.key)
                    if column.key in ("created_at", "updated_at"):   # SQLite hands back naive UTC
                        held, read = held.replace(tzinfo=None), read.replace(tzinfo=None)
                    assert held == read, column.key
            ids = session.scalars(select(AuditEvent.id).order_by(AuditEvent.id)).all()
            assert len(ids) == 2 and all(isinstance(value, int) for value in ids)
    finally:
        engine.dispose()


class _Other(DeclarativeBase):
    pass


class _Row(_Other):
    """A table with every kind of default insert_rows meets: the database's key, a Python callable,
    a default computed in SQL, and a server default."""

    __tablename__ = "insert_rows_spec"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tag: Mapped[str] = mapped_column(String(16), default=lambda: "python")
    counted: Mapped[int] = mapped_column(Integer, default=literal(6) + literal(1))
    kind: Mapped[str] = mapped_column(String(16), server_default="server")


def test_insert_rows_leaves_keys_and_defaults_computed_in_sql_to_the_database(database_url: str) -> None:
    engine = create_database_engine(database_url)
    try:
        _Other.metadata.create_all(engine)
        given, defaulted = _Row(tag="given", counted=1, kind="given"), _Row()
        with session_factory(engine)() as session:
            records.insert_rows(session, [given, defaulted])
            session.commit()
        assert defaulted.tag == "python" and defaulted.id is None
        with session_factory(engine)() as session:
            rows = session.execute(select(_Row.tag, _Row.counted, _Row.kind).order_by(_Row.id)).all()
        assert [tuple(row) for row in rows] == [("given", 1, "given"), ("python", 7, "server")]
    finally:
        _Other.metadata.drop_all(engine)
        engine.dispose()


def test_a_retry_saves_only_onto_a_record_that_still_exists_and_is_still_failed(database_url: str) -> None:
    """A delete, or another retry, that lands while the model runs wins: the retry's results are not
    written (a merge would have brought the deleted record back)."""
    engine = create_database_engine(database_url)
    try:
        migrate(engine)
        sessions = session_factory(engine)
        with sessions() as session:
            failed = record("alice", "chest_xray", "c" * 64, 0)
            failed.status, failed.label, failed.probabilities = "failed", None, {}
            records.add_all(session, [failed])
            retried = records.get_owned(session, failed.id, "alice")
            session.expunge(retried)
        retried.status, retried.label, retried.confidence = "completed", "PNEUMONIA", 0.8

        with sessions() as session:
            saved = records.save_retry(session, retried)
            assert saved is not None and saved.status == "completed" and saved.label == "PNEUMONIA"
            assert saved.image_sha256 == "c" * 64 and saved.user_id == "alice"
        with sessions() as session:
            assert records.save_retry(session, retried) is None   # a second retry finds it completed

        with sessions() as session:
            gone = record("alice", "chest_xray", "d" * 64, 1)
            gone.status = "failed"
            records.add_all(session, [gone])   # inserted, not kept in the session
            gone_id = gone.id
            session.delete(session.get(Diagnosis, gone_id))
            session.commit()
        gone.status = "completed"
        with sessions() as session:
            assert records.save_retry(session, gone) is None
            assert session.get(Diagnosis, gone_id) is None
    finally:
        engine.dispose()


def test_a_delete_returns_the_blobs_the_row_names_as_it_goes(database_url: str) -> None:
    """A retry may add a heatmap after the deleting request first read the record: the delete must
    forget that heatmap too, or it stays on disk named by no record."""
    engine = create_database_engine(database_url)
    try:
        migrate(engine)
        sessions = session_factory(engine)
        with sessions() as deleting:
            failed = record("alice", "chest_xray", "e" * 64, 0)
            failed.status = "failed"
            records.add_all(deleting, [failed])
            assert deleting.get(Diagnosis, failed.id).heatmap_sha256 is None    # what the deleter has read
            with sessions() as retrying:
                retried = records.get_owned(retrying, failed.id, "alice")
                retrying.expunge(retried)
                retried.status, retried.heatmap_sha256 = "completed", "f" * 64
                assert records.save_retry(retrying, retried) is not None

            assert records.delete(deleting, failed.id) == ("e" * 64, "f" * 64)
            assert records.delete(deleting, failed.id) is None           # already gone
        with sessions() as session:
            assert session.get(Diagnosis, failed.id) is None
    finally:
        engine.dispose()


@pytest.mark.parametrize("factory", [create_database_engine, make_engine], ids=["gateway", "auth"])
def test_a_plain_postgresql_url_connects_with_psycopg_3_in_both_services(factory) -> None:
    # SQLAlchemy reads postgresql:// as psycopg2, which the project does not install.
    engine = factory("postgresql://postgres@127.0.0.1:9/nowhere")
    try:
        assert engine.url.drivername == "postgresql+psycopg"
        assert engine.dialect.driver == "psycopg"
    finally:
        engine.dispose()
