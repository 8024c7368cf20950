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

from service.storage.migrations import steps
from service.storage.naming import name as t  # TABLE_PREFIX

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# What a downgrade below this revision loses (shown before `db downgrade` asks for confirmation).
LOSES = "the reporting data: first_response_at, closed_by, close_reason, chat_session_events, chat_message_hourly"

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
MYSQL_TABLE = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_unicode_ci"}
CREATED_DAY = "DATE(created_at)"


def upgrade() -> None:
    steps.add_column(t("chat_sessions"), sa.Column("first_response_at", sa.DateTime()))
    steps.add_column(t("chat_sessions"), sa.Column("closed_by", sa.BigInteger()))
    steps.add_column(t("chat_sessions"), sa.Column("close_reason", sa.String(16)))
    steps.add_column(t("chat_sessions"), sa.Column("created_day", sa.Date(), sa.Computed(CREATED_DAY, persisted=False)))
    steps.create_index("ix_chat_sessions_day_agent", t("chat_sessions"), ["created_day", "agent_id"])
    steps.create_table(
        t("chat_message_hourly"),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("hour", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("sender_role", sa.String(16), nullable=False),
        sa.Column("sender_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("messages", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("day", "hour", "sender_role", "sender_id"),
        **MYSQL_TABLE,
    )
    steps.create_table(
        t("chat_session_events"),
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("session_id", Id, nullable=False),
        sa.Column("event", sa.String(16), nullable=False),
        sa.Column("actor_id", sa.BigInteger()),
        sa.Column("actor_role", sa.String(16)),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.ForeignKeyConstraint(["session_id"], [t("chat_sessions") + ".id"], name=t("fk_chat_session_events_session")),
        **MYSQL_TABLE,
    )
    steps.create_index("ix_chat_session_events_session", t("chat_session_events"), ["session_id", "id"])
    steps.create_index("ix_chat_session_events_event_created", t("chat_session_events"), ["event", "created_at"])
    steps.create_index("ix_chat_session_events_actor_created", t("chat_session_events"), ["actor_id", "created_at"])
    _backfill()


BACKFILL_CHUNK = 20_000  # sessions per UPDATE: progress to show, and no lock held for minutes


def _backfill() -> None:
    """Existing conversations: their first agent message is their first response; the hourly counts of every
    stored message. Both are safe to run again (NULLs only; counts only into an empty table)."""
    bind = op.get_bind()
    sessions, messages = t("chat_sessions"), t("chat_messages")
    low, high = bind.execute(sa.text(f"SELECT MIN(id), MAX(id) FROM {sessions}")).one()
    if low is not None:
        total = bind.execute(sa.text(f"SELECT COUNT(*) FROM {sessions}")).scalar() or 0
        progress = steps.progress("back-filling first responses (sessions)", total)
        for first in range(low, high + 1, BACKFILL_CHUNK):
            last = first + BACKFILL_CHUNK - 1
            bind.execute(sa.text(
                f"UPDATE {sessions} SET first_response_at = ("
                f" SELECT MIN(m.created_at) FROM {messages} m"
                f" WHERE m.session_id = {sessions}.id AND m.sender_role = 'agent')"
                f" WHERE first_response_at IS NULL AND id BETWEEN :first AND :last"), {"first": first, "last": last})
            progress.advance(bind.execute(sa.text(
                f"SELECT COUNT(*) FROM {sessions} WHERE id BETWEEN :first AND :last"),
                {"first": first, "last": last}).scalar() or 0)
        progress.done()
    hourly = t("chat_message_hourly")
    if not steps.is_empty(hourly):
        return
    hour = "HOUR(created_at)" if bind.dialect.name in ("mysql", "mariadb") else (
        "CAST(strftime('%H', created_at) AS INTEGER)"
    )
    sender = "CASE WHEN sender_role = 'agent' THEN sender_id ELSE 0 END"
    total = bind.execute(sa.text(f"SELECT COUNT(*) FROM {messages}")).scalar() or 0
    if not total:
        return
    progress = steps.progress("back-filling hourly message counts (messages)", total)
    op.execute(
        f"INSERT INTO {hourly} (day, hour, sender_role, sender_id, messages)"
        f" SELECT DATE(created_at), {hour}, sender_role, {sender}, COUNT(*) FROM {messages}"
        f" GROUP BY DATE(created_at), {hour}, sender_role, {sender}"
    )
    progress.advance(total)
    progress.done()


def downgrade() -> None:
    steps.drop_table(t("chat_session_events"))
    steps.drop_table(t("chat_message_hourly"))
    steps.drop_index("ix_chat_sessions_day_agent", t("chat_sessions"))
    for column in ("created_day", "close_reason", "closed_by", "first_response_at"):
        steps.drop_column(t("chat_sessions"), column)
