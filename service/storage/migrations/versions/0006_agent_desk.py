"""The agent desk: agent status and capacity, assignment times, idle warnings, agent load samples.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03

Agents get `status` (online / away / offline, one per agent for the whole deployment), `capacity` (NULL =
AGENT_CAPACITY) and `last_assigned_at` (routing's "longest idle"). Sessions get `assigned_at` (the first
assignment: time in queue = assigned_at - created_at) and `idle_warned_at` (the idle sweeper warns once per
idle stretch). `chat_agent_load` holds one sample per agent and minute (per-agent load over time).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from service.storage.migrations import steps
from service.storage.naming import name as t  # TABLE_PREFIX

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# What a downgrade below this revision loses (shown before `db downgrade` asks for confirmation).
LOSES = "agents' status and capacity, sessions' assignment times, the agent load samples (chat_agent_load)"

MYSQL_TABLE = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_unicode_ci"}


def upgrade() -> None:
    steps.add_column(t("agents"), sa.Column("status", sa.String(16), nullable=False, server_default="offline"))
    steps.add_column(t("agents"), sa.Column("capacity", sa.Integer()))
    steps.add_column(t("agents"), sa.Column("last_assigned_at", sa.DateTime()))
    steps.add_column(t("chat_sessions"), sa.Column("assigned_at", sa.DateTime()))
    steps.add_column(t("chat_sessions"), sa.Column("idle_warned_at", sa.DateTime()))
    op.execute(f"UPDATE {t('chat_sessions')} SET assigned_at = created_at"
               " WHERE agent_id IS NOT NULL AND assigned_at IS NULL")
    steps.create_table(
        t("chat_agent_load"),
        sa.Column("sampled_at", sa.DateTime(), nullable=False),
        sa.Column("agent_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("load", sa.Integer(), nullable=False),
        sa.Column("capacity", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("sampled_at", "agent_id"),
        **MYSQL_TABLE,
    )
    steps.create_index("ix_chat_agent_load_agent_sampled", t("chat_agent_load"), ["agent_id", "sampled_at"])


def downgrade() -> None:
    steps.drop_index("ix_chat_agent_load_agent_sampled", t("chat_agent_load"))
    steps.drop_table(t("chat_agent_load"))
    for column in ("idle_warned_at", "assigned_at"):
        steps.drop_column(t("chat_sessions"), column)
    for column in ("last_assigned_at", "capacity", "status"):
        steps.drop_column(t("agents"), column)
