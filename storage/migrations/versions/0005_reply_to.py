"""Each bot reply records the user message it answers, so that the transcript the model sees
puts every reply right after its question even when the user sent several messages before
the first reply was stored. Rows stored before this keep NULL (their place is their id).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # SQLite cannot add a named foreign key to a table: batch mode copies the table there;
    # PostgreSQL adds the column and the constraint in place.
    with op.batch_alter_table("messages", recreate="auto") as batch:
        batch.add_column(sa.Column("reply_to", sa.BigInteger(), nullable=True))
        batch.create_foreign_key(
            op.f("fk_messages_reply_to_messages"),
            "messages",
            ["reply_to"],
            ["id"],
            ondelete="CASCADE",
        )
    op.create_index("ix_messages_reply_to", "messages", ["reply_to"])


def downgrade() -> None:
    op.drop_index("ix_messages_reply_to", table_name="messages")
    with op.batch_alter_table("messages", recreate="auto") as batch:
        batch.drop_constraint(op.f("fk_messages_reply_to_messages"), type_="foreignkey")
        batch.drop_column("reply_to")
