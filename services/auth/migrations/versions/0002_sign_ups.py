"""sign_ups: accounts created per client address, for the per-IP sign-up limit

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sign_ups",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("client_ip", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sign_ups")),
    )
    op.create_index("ix_sign_ups_client_ip_created_at", "sign_ups", ["client_ip", "created_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_sign_ups_client_ip_created_at", table_name="sign_ups")
    op.drop_table("sign_ups")
