"""Replaced replies: a regenerated answer keeps the old one stored as 'replaced', which the
model never sees again.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD = "status IN ('complete', 'partial', 'failed', 'pending')"
NEW = "status IN ('complete', 'partial', 'failed', 'pending', 'replaced')"


def _status_check(condition: str) -> None:
    # SQLite cannot alter a CHECK constraint: batch mode copies the table there; PostgreSQL
    # alters it in place.
    with op.batch_alter_table("messages", recreate="auto") as batch:
        batch.drop_constraint(op.f("ck_messages_status"), type_="check")
        batch.create_check_constraint(op.f("ck_messages_status"), condition)


def upgrade() -> None:
    _status_check(NEW)


def downgrade() -> None:
    op.execute("UPDATE messages SET status = 'complete' WHERE status = 'replaced'")
    _status_check(OLD)
