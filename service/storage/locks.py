"""The desk's leader lock: exactly one process of a deployment routes, sends queue positions and sweeps.

The leader is whoever holds a lock that its holder's death releases: MySQL/MariaDB `GET_LOCK` on a
connection of its own (the server frees it when that connection goes), or an exclusive `flock` beside the
SQLite file (the kernel frees it when the process goes). Either way it passes on by itself.
"""

from __future__ import annotations

import fcntl
import logging
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

from . import naming

log = logging.getLogger(__name__)


class LeaderLock(Protocol):
    def acquire(self) -> bool:
        """True while this process holds the lock (acquiring it if free); cheap to call every tick."""
        ...

    def release(self) -> None: ...


class MySQLLeaderLock:
    """`GET_LOCK(name, 0)` on a connection kept for it: the server frees the lock when that connection dies."""

    def __init__(self, engine: Engine, name: str) -> None:
        self.engine = engine
        self.name = name[:64]
        self._conn: Connection | None = None

    def acquire(self) -> bool:
        try:
            if self._conn is None:
                self._conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            conn = self._conn
            held = conn.execute(text("SELECT IS_USED_LOCK(:n) = CONNECTION_ID()"), {"n": self.name}).scalar()
            if held:
                return True
            return bool(conn.execute(text("SELECT GET_LOCK(:n, 0)"), {"n": self.name}).scalar())
        except SQLAlchemyError as exc:
            log.warning("desk: leader lock unavailable: %s", exc.__class__.__name__)
            self._drop()
            return False

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.invalidate()
                self._conn.close()
            except SQLAlchemyError:
                pass
            self._conn = None

    def release(self) -> None:
        if self._conn is not None:
            try:
                self._conn.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": self.name})
            except SQLAlchemyError:
                pass
            self._drop()


class FileLeaderLock:
    """An exclusive, non-blocking `flock` beside the SQLite file: the kernel frees it when the process dies."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._file: Any = None

    def acquire(self) -> bool:
        if self.path is None:
            return True  # an in-memory database lives in one process
        if self._file is not None:
            return True
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._file = handle
        return True

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def leader_lock(engine: Engine, writer_engine: Engine) -> LeaderLock:
    """The lock for this database and TABLE_PREFIX: one leader per deployment, whatever shares the server."""
    if engine.dialect.name in ("mysql", "mariadb"):
        return MySQLLeaderLock(writer_engine, f"chat_desk_leader:{engine.url.database}:{naming.prefix()}")
    database = engine.url.database
    if not database or database == ":memory:":
        return FileLeaderLock(None)
    return FileLeaderLock(f"{database}.{naming.prefix()}desk-lock")
