"""A bot reply records whether it reached its chat: the reply is stored final before the front
end sends it, and a process killed in between leaves a reply nobody would ever send. Such a
reply (`delivered` false, a final status) is sent by another process's sweep or by the next
start. Every row stored before this counts as delivered.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-10
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A constant default: both SQLite and PostgreSQL add the column in place.
    op.add_column(
        "messages",
        sa.Column("delivered", sa.Boolean(), nullable=False, server_default=sa.true()),
    )


def downgrade() -> None:
    with op.batch_alter_table("messages", recreate="auto") as batch:
        batch.drop_column("delivered")
