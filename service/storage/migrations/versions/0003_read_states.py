"""Read state: how far each user has read each session (the `read` message and unread counts).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa

from service.storage.migrations import steps
from service.storage.naming import name as t  # TABLE_PREFIX

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# What a downgrade below this revision loses (shown before `db downgrade` asks for confirmation).
LOSES = "every user's read state (chat_read_states)"

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
MYSQL_TABLE = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_unicode_ci"}


def upgrade() -> None:
    steps.create_table(
        t("chat_read_states"),
        sa.Column("session_id", Id, autoincrement=False, nullable=False),
        sa.Column("user_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("last_read_message_id", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["session_id"], [t("chat_sessions") + ".id"], name=t("fk_chat_read_states_session")),
        sa.PrimaryKeyConstraint("session_id", "user_id"),
        **MYSQL_TABLE,
    )


def downgrade() -> None:
    steps.drop_table(t("chat_read_states"))
