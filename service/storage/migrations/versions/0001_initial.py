"""The schema of the first release (agents, chat_sessions, chat_messages), frozen as it shipped.

Revision ID: 0001
Revises:
Create Date: 2026-11-26

A database created by that release's `create_all` (no alembic_version table) is at this revision:
`python -m service db upgrade` stamps it 0001 before migrating further.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from service.storage.migrations import steps
from service.storage.naming import name as t  # TABLE_PREFIX

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# What a downgrade below this revision loses (shown before `db downgrade` asks for confirmation).
LOSES = "every table of the service and all its rows (sessions, messages, agents)"

# Frozen copies of the model types of that release (never import models here: they move on).
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
LongText = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")
MYSQL_TABLE = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_unicode_ci"}


def upgrade() -> None:
    steps.create_table(
        t("agents"),
        sa.Column("user_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("display_name", sa.String(100)),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("user_id"),
        **MYSQL_TABLE,
    )
    steps.create_table(
        t("chat_sessions"),
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("agent_id", sa.BigInteger()),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("open_flag", sa.SmallInteger()),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("closed_at", sa.DateTime()),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("user_id", "open_flag", name="uq_chat_sessions_open_per_user"),
        **MYSQL_TABLE,
    )
    steps.create_index("ix_chat_sessions_status_id", t("chat_sessions"), ["status", "id"])
    steps.create_index("ix_chat_sessions_agent_status", t("chat_sessions"), ["agent_id", "status"])
    steps.create_index("ix_chat_sessions_created_at", t("chat_sessions"), ["created_at"])
    steps.create_table(
        t("chat_messages"),
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("session_id", Id, nullable=False),
        sa.Column("sender_id", sa.BigInteger(), nullable=False),
        sa.Column("sender_role", sa.String(16), nullable=False),
        sa.Column("content", LongText, nullable=False),
        sa.Column("client_msg_id", sa.String(64)),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.ForeignKeyConstraint(["session_id"], [t("chat_sessions") + ".id"], name=t("fk_chat_messages_session")),
        sa.UniqueConstraint("session_id", "sender_id", "client_msg_id", name="uq_chat_messages_client_msg"),
        **MYSQL_TABLE,
    )
    steps.create_index("ix_chat_messages_session_id", t("chat_messages"), ["session_id", "id"])
    steps.create_index("ix_chat_messages_created_at", t("chat_messages"), ["created_at"])
    steps.create_index("ix_chat_messages_sender_created", t("chat_messages"), ["sender_id", "created_at"])


def downgrade() -> None:
    steps.drop_table(t("chat_messages"))
    steps.drop_table(t("chat_sessions"))
    steps.drop_table(t("agents"))
