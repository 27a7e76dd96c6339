"""audit_events table, append-only

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

Triggers refuse every UPDATE of a row, and every DELETE of a row younger than 30 days (TRUNCATE
too, on PostgreSQL): only the retention purge (gateway.audit.purge_expired) removes rows, and
only old ones. 30 is gateway.audit.RETENTION_FLOOR_DAYS, written out here: a migration must keep
doing what it did when it ran, whatever the code says later.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_REFUSED = "audit_events is append-only: rows are never updated, and only rows older than 30 days are deleted"

_SQLITE_TRIGGERS = [
    f"""CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
        BEGIN SELECT RAISE(ABORT, '{_REFUSED}'); END""",
    # Stored times are UTC text 'YYYY-MM-DD HH:MM:SS.ffffff', which sorts as datetime()'s text does.
    f"""CREATE TRIGGER audit_events_no_early_delete BEFORE DELETE ON audit_events
        WHEN OLD.at > datetime('now', '-30 days')
        BEGIN SELECT RAISE(ABORT, '{_REFUSED}'); END""",
]

_POSTGRES_TRIGGERS = [
    f"""CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF TG_OP = 'DELETE' THEN
            IF OLD.at < now() - interval '30 days' THEN
              RETURN OLD;
            END IF;
          END IF;
          RAISE EXCEPTION '{_REFUSED} (% refused)', TG_OP USING ERRCODE = 'insufficient_privilege';
        END $$""",
    """CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
       FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()""",
    """CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
       FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only()""",
]


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
                  autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=True),
        sa.Column("diagnosis_id", sa.String(36), nullable=True),
        sa.Column("ip", sa.String(64), nullable=False),
        sa.Column("user_agent", sa.String(256), nullable=False),
    )
    op.create_index("ix_audit_events_user_at", "audit_events", ["user_id", "at", "id"])
    op.create_index("ix_audit_events_at", "audit_events", ["at"])
    dialect = op.get_bind().dialect.name
    for statement in {"sqlite": _SQLITE_TRIGGERS, "postgresql": _POSTGRES_TRIGGERS}.get(dialect, []):
        op.execute(statement)


def downgrade() -> None:
    op.drop_table("audit_events")   # its triggers go with it
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS audit_events_append_only()")
