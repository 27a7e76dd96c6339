"""diagnoses table

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "diagnoses",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("exam_type", sa.String(32), nullable=False),
        sa.Column("requested_exam_type", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("label", sa.String(64), nullable=True),
        sa.Column("label_display", sa.String(200), nullable=True),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("probabilities", sa.JSON(), nullable=False),
        sa.Column("model_name", sa.String(100), nullable=True),
        sa.Column("model_version", sa.String(100), nullable=True),
        sa.Column("extra", sa.JSON(), nullable=False),
        sa.Column("explain", sa.Boolean(), nullable=False),
        sa.Column("heatmap_sha256", sa.String(64), nullable=True),
        sa.Column("heatmap_method", sa.String(64), nullable=True),
        sa.Column("image_sha256", sa.String(64), nullable=False),
        sa.Column("media_type", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_diagnoses_user_created", "diagnoses", ["user_id", "created_at"])
    op.create_index("ix_diagnoses_image_sha256", "diagnoses", ["image_sha256"])
    op.create_index("ix_diagnoses_heatmap_sha256", "diagnoses", ["heatmap_sha256"])


def downgrade() -> None:
    op.drop_table("diagnoses")
