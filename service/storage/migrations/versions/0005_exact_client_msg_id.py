"""client_msg_id compared byte for byte on MySQL/MariaDB.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03

Under utf8mb4_unicode_ci the unique key (session_id, sender_id, client_msg_id) took "Key-AbC", "key-abc",
"key-abc " and "kéy-abc" for one key: the later messages were answered `duplicate` and never stored. The
column gets the server's NO PAD binary collation (MariaDB utf8mb4_nopad_bin, MySQL 8 utf8mb4_0900_bin): bytes
compared, trailing spaces count. SQLite already compares TEXT exactly: nothing to do there.

Downgrading turns it back into VARCHAR(64) utf8mb4_unicode_ci; it fails (and changes nothing: InnoDB rebuilds
the table in one statement) if one sender's keys in one session are then equal, e.g. "a" and "A".
"""

from __future__ import annotations

from alembic import op

from service.storage.naming import name as t  # TABLE_PREFIX

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# What a downgrade below this revision loses (shown before `db downgrade` asks for confirmation).
LOSES = ""  # no row is dropped; keys differing only in case, accents or spaces collide again


def _mysql() -> bool:
    return op.get_bind().dialect.name in ("mysql", "mariadb")


def upgrade() -> None:
    if _mysql():  # one ALTER: InnoDB applies it whole or not at all, and running it again changes nothing
        collation = "utf8mb4_nopad_bin" if op.get_bind().dialect.is_mariadb else "utf8mb4_0900_bin"
        op.execute(f"ALTER TABLE {t('chat_messages')} MODIFY client_msg_id VARCHAR(64)"
                   f" CHARACTER SET utf8mb4 COLLATE {collation} NULL")


def downgrade() -> None:
    if _mysql():
        op.execute(f"ALTER TABLE {t('chat_messages')} MODIFY client_msg_id VARCHAR(64)"
                   " CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci NULL")
