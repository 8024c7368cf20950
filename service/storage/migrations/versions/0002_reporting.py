"""Reporting: who closed a session and why, the first agent reply, session events, hourly message counts.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26

Sessions closed before this revision keep close_reason NULL and are never counted as abandoned; their
first_response_at is back-filled from their stored messages, and chat_message_hourly from chat_messages, so
the first-response and message figures cover old data too.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
MYSQL_TABLE = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_unicode_ci"}
CREATED_DAY = "DATE(created_at)"


def upgrade() -> None:
    op.add_column("chat_sessions", sa.Column("first_response_at", sa.DateTime()))
    op.add_column("chat_sessions", sa.Column("closed_by", sa.BigInteger()))
    op.add_column("chat_sessions", sa.Column("close_reason", sa.String(16)))
    op.add_column("chat_sessions", sa.Column("created_day", sa.Date(), sa.Computed(CREATED_DAY, persisted=False)))
    op.create_index("ix_chat_sessions_day_agent", "chat_sessions", ["created_day", "agent_id"])
    op.create_table(
        "chat_message_hourly",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("hour", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("sender_role", sa.String(16), nullable=False),
        sa.Column("sender_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("messages", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("day", "hour", "sender_role", "sender_id"),
        **MYSQL_TABLE,
    )
    op.create_table(
        "chat_session_events",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("session_id", Id, nullable=False),
        sa.Column("event", sa.String(16), nullable=False),
        sa.Column("actor_id", sa.BigInteger()),
        sa.Column("actor_role", sa.String(16)),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.ForeignKeyConstraint(["session_id"], ["chat_sessions.id"], name="fk_chat_session_events_session"),
        **MYSQL_TABLE,
    )
    op.create_index("ix_chat_session_events_session", "chat_session_events", ["session_id", "id"])
    op.create_index("ix_chat_session_events_event_created", "chat_session_events", ["event", "created_at"])
    op.create_index("ix_chat_session_events_actor_created", "chat_session_events", ["actor_id", "created_at"])
    # Existing conversations: their first agent message is their first response.
    op.execute(
        "UPDATE chat_sessions SET first_response_at = ("
        " SELECT MIN(m.created_at) FROM chat_messages m"
        " WHERE m.session_id = chat_sessions.id AND m.sender_role = 'agent')"
        " WHERE first_response_at IS NULL"
    )
    hour = "HOUR(created_at)" if op.get_bind().dialect.name in ("mysql", "mariadb") else (
        "CAST(strftime('%H', created_at) AS INTEGER)"
    )
    sender = "CASE WHEN sender_role = 'agent' THEN sender_id ELSE 0 END"
    op.execute(
        "INSERT INTO chat_message_hourly (day, hour, sender_role, sender_id, messages)"
        f" SELECT DATE(created_at), {hour}, sender_role, {sender}, COUNT(*) FROM chat_messages"
        f" GROUP BY DATE(created_at), {hour}, sender_role, {sender}"
    )


def downgrade() -> None:
    op.drop_table("chat_session_events")
    op.drop_table("chat_message_hourly")
    op.drop_index("ix_chat_sessions_day_agent", table_name="chat_sessions")
    for column in ("created_day", "close_reason", "closed_by", "first_response_at"):
        op.drop_column("chat_sessions", column)
