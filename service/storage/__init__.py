"""Storage: models, queries, the batched message writer, and the engine settings for each database."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from ..config import Settings
from .models import apply_table_prefix, db
from .queries import Storage, StorageError
from .records import AgentRecord, MessageRecord, NewMessage, SessionRecord
from .schema import SchemaError, prepare_for_serving
from .writer import DuplicateMessage, MessageWriter

__all__ = [
    "AgentRecord",
    "DuplicateMessage",
    "MessageRecord",
    "MessageWriter",
    "NewMessage",
    "SchemaError",
    "SessionRecord",
    "Storage",
    "StorageError",
    "db",
    "engine_options",
    "init_storage",
    "prepare_for_serving",
]

log = logging.getLogger(__name__)

POOL_SIZE = 10
MYSQL_CONNECT_ARGS = {"connect_timeout": 5, "read_timeout": 15, "write_timeout": 15, "charset": "utf8mb4"}


def engine_options(settings: Settings) -> dict[str, Any]:
    """Pool and driver options: short timeouts so a dead database fails fast instead of hanging senders."""
    if settings.is_sqlite:
        return {"connect_args": {"check_same_thread": False, "timeout": 15}}
    return {
        "pool_size": POOL_SIZE,
        "max_overflow": 0,
        "pool_timeout": 10,
        "pool_pre_ping": True,
        "pool_recycle": 1800,
        "connect_args": MYSQL_CONNECT_ARGS,
    }


def writer_engine(settings: Settings, engine: Engine) -> Engine:
    """The message writers' connections (MySQL/MariaDB): one each, kept open, allowed several statements per
    query so that a batch is one round trip (see storage/writer.py); every value in them is escaped by the
    driver. On SQLite the writers share the service's engine."""
    if settings.is_sqlite:
        return engine
    from pymysql.constants import CLIENT

    flags = CLIENT.FOUND_ROWS | CLIENT.MULTI_STATEMENTS  # FOUND_ROWS: what SQLAlchemy itself asks for
    return create_engine(engine.url, poolclass=NullPool, connect_args={**MYSQL_CONNECT_ARGS, "client_flag": flags})


def _tune_sqlite(dbapi_connection, _record) -> None:
    """WAL lets readers run beside the writer; NORMAL sync is durable across process crashes."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=15000")
    cursor.close()


def init_storage(app: Flask, settings: Settings, create_tables: bool = True) -> Storage:
    """Bind Flask-SQLAlchemy to the app and return the Storage gateway.

    With `create_tables`, an empty database gets the whole schema and one at an older revision is refused
    (SchemaError: run `python -m service db upgrade`); see storage/schema.py.
    """
    apply_table_prefix(settings.table_prefix)
    if settings.is_sqlite:
        path = settings.database_url.removeprefix("sqlite:///")
        if path and ":memory:" not in path:
            from pathlib import Path

            Path(path).parent.mkdir(parents=True, exist_ok=True)
    app.config["SQLALCHEMY_DATABASE_URI"] = settings.database_url
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = engine_options(settings)
    db.init_app(app)
    with app.app_context():
        engine = db.engine
    if settings.is_sqlite:
        event.listen(engine, "connect", _tune_sqlite)
    storage = Storage(engine, settings.tz, concurrency=POOL_SIZE, writer_engine=writer_engine(settings, engine))
    if create_tables:
        try:
            prepare_for_serving(engine)
        except OperationalError as exc:
            # The server must start (and answer /healthz, /readyz 503) while the database is down: the schema
            # is checked and created on the first database use that finds it up.
            log.error("database unreachable at start-up (%s); the schema is prepared when it answers",
                      str(exc.orig or exc)[:200])
            storage.prepare = lambda: prepare_for_serving(engine)
    return storage
