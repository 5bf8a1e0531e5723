"""Several bot processes on one database: updates handled once, Telegram messages stored once
per chat, stop requests between processes, and which conversation each engine slot served.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SURROGATE_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "processed_updates",
        sa.Column("update_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("seen_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("update_id", name=op.f("pk_processed_updates")),
    )
    op.create_index("ix_processed_updates_seen_at", "processed_updates", ["seen_at"])
    op.create_table(
        "received_messages",
        sa.Column("chat_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("telegram_message_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("message_id", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name=op.f("fk_received_messages_message_id_messages"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "chat_id", "telegram_message_id", name=op.f("pk_received_messages")
        ),
    )
    op.create_index("ix_received_messages_message_id", "received_messages", ["message_id"])
    op.create_table(
        "stop_requests",
        sa.Column("id", SURROGATE_ID, nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("chat_id", sa.BigInteger(), nullable=False),
        sa.Column("up_to_message_id", sa.BigInteger(), nullable=False),
        sa.Column("requested_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stop_requests")),
    )
    op.create_table(
        "engine_slots",
        sa.Column("server", sa.Text(), nullable=False),
        sa.Column("slot", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("owner", sa.Text(), nullable=True),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("server", "slot", name=op.f("pk_engine_slots")),
    )
    op.create_index("ix_engine_slots_owner", "engine_slots", ["owner"])


def downgrade() -> None:
    op.drop_index("ix_engine_slots_owner", table_name="engine_slots")
    op.drop_table("engine_slots")
    op.drop_table("stop_requests")
    op.drop_index("ix_received_messages_message_id", table_name="received_messages")
    op.drop_table("received_messages")
    op.drop_index("ix_processed_updates_seen_at", table_name="processed_updates")
    op.drop_table("processed_updates")
