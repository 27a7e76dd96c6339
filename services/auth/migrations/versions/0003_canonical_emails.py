"""canonical emails: stored addresses rewritten to validation.normalize_email's form

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27

Before this revision an address was stored stripped and lower-cased only, so Unicode spellings of
one mailbox (composed and decomposed accents, full-width or punycode domains) were different
accounts, and their owner could not log in with another spelling. The rule is written out here,
not imported, so this migration keeps doing what it did when the application's rule changes.
An address whose canonical form another account already holds is left as it is and logged: two
people may hold those accounts, and merging them is an operator's decision.
"""

import logging
import unicodedata
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from email_validator import EmailNotValidError, validate_email

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.runtime.migration")

users = sa.table("users", sa.column("id", sa.Uuid()), sa.column("email", sa.String(254)))


def _canonical(email: str) -> str:
    stripped = email.strip()
    if len(stripped) <= 254:
        try:
            return validate_email(stripped, check_deliverability=False).normalized.lower()
        except EmailNotValidError:
            pass
    return unicodedata.normalize("NFC", stripped).lower()


def upgrade() -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.select(users.c.id, users.c.email)).all()
    held = {email for _, email in rows}
    for user_id, email in rows:
        canonical = _canonical(email)
        if canonical == email:
            continue
        if canonical in held:
            log.warning("account %s keeps its email: its canonical form is another account's", user_id)
            continue
        bind.execute(sa.update(users).where(users.c.id == user_id).values(email=canonical))
        held.discard(email)
        held.add(canonical)


def downgrade() -> None:
    # The spellings that were rewritten are not kept; the canonical ones work under 0002 too.
    pass
