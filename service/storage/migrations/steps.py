"""Idempotent migration steps: MySQL/MariaDB commit every DDL statement on their own, so a revision that
fails half-way (a missing privilege, a full disk) has done some of its steps and not recorded itself. Each
step here checks first and skips what is already done, so running the same `db upgrade` (or downgrade) again
finishes the revision instead of failing on `Duplicate column` or `Unknown table`."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op


def _inspector() -> sa.Inspector:
    return sa.inspect(op.get_bind())


def has_table(name: str) -> bool:
    return _inspector().has_table(name)


def has_column(table: str, column: str) -> bool:
    return has_table(table) and column in {c["name"] for c in _inspector().get_columns(table)}


def has_index(table: str, index: str) -> bool:
    return has_table(table) and index in {i["name"] for i in _inspector().get_indexes(table)}


def create_table(name: str, *items: Any, **kwargs: Any) -> bool:
    """CREATE TABLE unless it exists; True when created."""
    if has_table(name):
        return False
    op.create_table(name, *items, **kwargs)
    return True


def drop_table(name: str) -> None:
    if has_table(name):
        op.drop_table(name)


def add_column(table: str, column: sa.Column) -> None:
    if not has_column(table, column.name):
        op.add_column(table, column)


def drop_column(table: str, column: str) -> None:
    if has_column(table, column):
        op.drop_column(table, column)


def create_index(name: str, table: str, columns: list[str]) -> None:
    if not has_index(table, name):
        op.create_index(name, table, columns)


def drop_index(name: str, table: str) -> None:
    if has_index(table, name):
        op.drop_index(name, table_name=table)


def is_empty(table: str) -> bool:
    return op.get_bind().execute(sa.text(f"SELECT 1 FROM {table} LIMIT 1")).first() is None


def progress(label: str, total: int):
    """The progress reporter the CLI passed in (service.storage.progress), or a silent one."""
    from service.storage.progress import Progress

    factory = op.get_context().config.attributes.get("progress") if op.get_context().config else None
    return (factory or Progress.silent)(label, total)
