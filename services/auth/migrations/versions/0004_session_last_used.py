"""sessions.last_used_at: when a session was last used, for the idle timeout

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07

Sessions that exist when this runs count as used when they were created: one idle for longer than
the timeout already has ended, as it would have under the new rule.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

sessions = sa.table(
    "sessions",
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("last_used_at", sa.DateTime(timezone=True)),
)


def upgrade() -> None:
    # Added nullable, filled, then made NOT NULL: existing rows need a value first (batch mode
    # rebuilds the table on SQLite, which cannot alter a column in place).
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))
    op.execute(sessions.update().values(last_used_at=sessions.c.created_at))
    with op.batch_alter_table("sessions") as batch:
        batch.alter_column("last_used_at", existing_type=sa.DateTime(timezone=True), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("last_used_at")
