"""TABLE_PREFIX: the names of our tables, views and foreign keys in a database we may share with others.

One prefix per process (the server and the CLI each serve one database). The models, the migrations, the
report views and the schema checks all ask here, so a prefix set before the first query applies everywhere.
With the default empty prefix every name is exactly the unprefixed one.
"""

from __future__ import annotations

import re

_prefix = ""


def prefix() -> str:
    return _prefix


def name(base: str) -> str:
    """The name in the database of our table, view or constraint `base` (e.g. chat_sessions)."""
    return f"{_prefix}{base}"


def set_prefix(value: str) -> None:
    """Called by init_storage (or the CLI) before any statement is compiled; see models.apply_table_prefix."""
    global _prefix
    if not re.fullmatch(r"[A-Za-z0-9_]{0,32}", value):
        raise ValueError("TABLE_PREFIX: up to 32 letters, digits or _")
    _prefix = value
