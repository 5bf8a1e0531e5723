"""Username bindings: an @username in the access lists belongs to the first account seen with it.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "username_bindings",
        sa.Column("username", sa.Text(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("bound_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("username", name=op.f("pk_username_bindings")),
    )
    op.create_index("ix_username_bindings_user_id", "username_bindings", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_username_bindings_user_id", table_name="username_bindings")
    op.drop_table("username_bindings")
