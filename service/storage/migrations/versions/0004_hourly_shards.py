"""Hourly message counts in shards: each message writer adds to rows of its own.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26

With one counter row per hour and role, every writer of every worker and host locked the same row in each
batch and waited for the others' commits. Rows now also carry `shard` (the writer's), and readers sum them:
the views and reports already add rows up per day, hour, role and agent, so their figures do not change.
Existing counts become shard 0.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from service.storage.migrations import steps
from service.storage.naming import name as t  # TABLE_PREFIX

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# What a downgrade below this revision loses (shown before `db downgrade` asks for confirmation).
LOSES = ""  # the hourly counts are summed into one row per hour, role and agent: no figure is lost

MYSQL_TABLE = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_unicode_ci"}
KEY = ("day", "hour", "sender_role", "sender_id")


def _create(name: str, sharded: bool) -> None:
    columns = [
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("hour", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("sender_role", sa.String(16), nullable=False),
        sa.Column("sender_id", sa.BigInteger(), autoincrement=False, nullable=False),
    ]
    if sharded:
        columns.append(sa.Column("shard", sa.SmallInteger(), autoincrement=False, nullable=False,
                                 server_default="0"))
    columns.append(sa.Column("messages", sa.Integer(), nullable=False))
    key = (*KEY, "shard") if sharded else KEY
    steps.create_table(name, *columns, sa.PrimaryKeyConstraint(*key), **MYSQL_TABLE)


def _replace(sharded: bool) -> None:
    """Build the other shape beside the table, copy the counts over (summed), and swap it in. Each step can
    be run again after a failure part-way (MySQL commits DDL at once): a finished swap is skipped, a copy
    left over is rebuilt, and a swap stopped between DROP and RENAME is completed."""
    key = ", ".join(KEY)
    hourly, following = t("chat_message_hourly"), t("chat_message_hourly_next")
    if not steps.has_table(hourly) and steps.has_table(following):
        op.rename_table(following, hourly)
        return
    if steps.has_column(hourly, "shard") == sharded:
        steps.drop_table(following)
        return
    steps.drop_table(following)
    _create(following, sharded)
    op.execute(
        f"INSERT INTO {following} ({key}, messages)"
        f" SELECT {key}, SUM(messages) FROM {hourly} GROUP BY {key}"
    )
    op.drop_table(hourly)
    op.rename_table(following, hourly)


def upgrade() -> None:
    _replace(sharded=True)


def downgrade() -> None:
    _replace(sharded=False)
