"""Group commit for chat messages: many senders, few writers, one multi-row INSERT per transaction.

The same transaction adds the batch to the hourly message counts (one upsert) and, when the batch holds agent
messages, sets first_response_at of sessions not yet answered (one UPDATE): reports never scan messages.

A sender's greenlet submits its message and waits for the stored record, so one sender never has two
messages in flight and its order is kept. Writers drain the queue in FIFO order, store up to WRITER_BATCH
rows in one transaction and hand each sender its id. When the database refuses a batch because of a row (a
duplicate client_msg_id, a value it cannot store, one the driver cannot even send), nothing of it was stored:
it is written again in halves until the refused row is alone, so one bad row costs nobody else their message.
A batch whose outcome is unknown (the connection died in flight, maybe after the COMMIT) is never written
again: its senders hear it failed.

Each writer keeps a connection of its own: a batch costs the INSERT, the upsert and the COMMIT round trips
and nothing else (a pooled connection adds a ping at checkout and a ROLLBACK at checkin, as many round trips
again). Each writer also counts into its own shard of the hourly counts, so writers of every worker and host
never wait on one another's counter rows.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime

import gevent
from gevent.event import AsyncResult
from gevent.queue import Empty, Queue
from sqlalchemy import Connection, and_, case, insert, update
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, SQLAlchemyError

from .models import message_hourly_table, messages_table, sessions_table
from .queries import Storage, StorageError
from .records import MessageRecord, NewMessage

log = logging.getLogger(__name__)

ANSWERED_CACHE_SIZE = 100_000
HOURLY_SHARDS = 1024  # a writer's shard is its MySQL connection id modulo this
IDLE_PING_SECONDS = 1.0  # a writer's connection idle longer than this is pinged before the next batch
ROWS_PER_STATEMENT = 500  # bound parameters per INSERT stay under SQLite's limit (6 per row)
BATCH_ATTEMPTS = 3  # a batch the database rolled back by itself (deadlock, lock wait timeout) is written again
ROLLED_BACK_ERRORS = (1213, 1205)  # MySQL: deadlock found, lock wait timeout exceeded
# MySQL server errors that do not say the statement was refused: shutdown, query or connection killed
# (a COMMIT interrupted so may have been applied). Client errors (2000-2999: connection lost) neither.
UNCERTAIN_ERRORS = (1053, 1317, 1927, 4031)
# What a driver raises when it cannot turn a value into SQL (a lone surrogate has no UTF-8): before sending.
UNSENDABLE = (UnicodeError, ValueError, TypeError, OverflowError)
MESSAGE_COLUMNS = ("session_id", "sender_id", "sender_role", "content", "client_msg_id", "created_at")


def first_agent_reply(messages: list[NewMessage]) -> dict[int, datetime]:
    """session id -> time of its earliest agent message in this batch."""
    first: dict[int, datetime] = {}
    for m in messages:
        if m.sender_role == "agent" and (m.session_id not in first or m.created_at < first[m.session_id]):
            first[m.session_id] = m.created_at
    return first


def first_response_update(first: dict[int, datetime]):
    """One UPDATE for the whole batch: set first_response_at where it is still NULL (the first reply wins)."""
    column = sessions_table.c.first_response_at
    if len(first) == 1:
        ((session_id, at),) = first.items()
        value = at
    else:
        value = case(first, value=sessions_table.c.id)
    return (
        update(sessions_table)
        .where(and_(sessions_table.c.id.in_(list(first)), column.is_(None)))
        .values(first_response_at=value)
    )


def hourly_counts(messages, shard: int = 0) -> list[dict]:
    """The batch's rows of chat_message_hourly (agents by id, customers as 0) in `shard`, in key order
    (writers sharing a shard lock its rows in one order)."""
    counts = Counter(
        (m.created_at.date(), m.created_at.hour, m.sender_role, m.sender_id if m.sender_role == "agent" else 0)
        for m in messages
    )
    return [
        {"day": day, "hour": hour, "sender_role": role, "sender_id": sender, "shard": shard, "messages": n}
        for (day, hour, role, sender), n in sorted(counts.items())
    ]


def hourly_upsert(dialect_name: str):
    """INSERT that adds rows to chat_message_hourly; run it with a list of rows (one executemany, compiled once:
    PyMySQL sends one multi-row INSERT ... ON DUPLICATE KEY UPDATE, SQLite ON CONFLICT DO UPDATE)."""
    table = message_hourly_table
    if dialect_name == "sqlite":
        statement = sqlite.insert(table)
        return statement.on_conflict_do_update(
            index_elements=[c.name for c in table.primary_key],
            set_={"messages": table.c.messages + statement.excluded.messages},
        )
    statement = mysql.insert(table)
    return statement.on_duplicate_key_update(messages=table.c.messages + statement.inserted.messages)


class MessageInsert:
    """The hot statement as driver SQL: one multi-row `INSERT ... RETURNING id` per chunk of the batch.

    SQLAlchemy's insertmanyvalues builds the same statement, at several times the CPU per row. Ids come back
    sorted: an autoincrement key is assigned in VALUES order within one statement (MariaDB, SQLite).
    """

    def __init__(self, dialect) -> None:
        self.dbapi_error = dialect.loaded_dbapi.Error
        mark = "?" if dialect.paramstyle == "qmark" else "%s"
        self.head = f"INSERT INTO {messages_table.name} ({', '.join(MESSAGE_COLUMNS)}) VALUES "
        self.row = "(" + ", ".join([mark] * len(MESSAGE_COLUMNS)) + ")"
        # Timestamps go as text: SQLite keeps DATETIME in SQLAlchemy's text format, and MySQL parses
        # "YYYY-MM-DD HH:MM:SS" (PyMySQL escapes a datetime at 5x the cost of a string).
        self.to_db = messages_table.c.created_at.type.bind_processor(dialect) or (lambda value: value.isoformat(" "))

    def chunks(self, messages: list[NewMessage]) -> Iterator[tuple[str, list, int]]:
        """(statement, parameters, rows) for each chunk of at most ROWS_PER_STATEMENT messages."""
        stamps: dict[datetime, str] = {}  # a batch spans a second or two: each converted once
        for start in range(0, len(messages), ROWS_PER_STATEMENT):
            chunk = messages[start:start + ROWS_PER_STATEMENT]
            params: list = []
            for m in chunk:
                at = stamps.get(m.created_at)
                if at is None:
                    at = stamps[m.created_at] = self.to_db(m.created_at)
                params += (m.session_id, m.sender_id, m.sender_role, m.content, m.client_msg_id, at)
            yield self.head + ", ".join([self.row] * len(chunk)) + " RETURNING id", params, len(chunk)

    def __call__(self, dbapi_connection, messages: list[NewMessage]) -> list[int]:
        ids: list[int] = []
        cursor = dbapi_connection.cursor()
        try:
            for statement, params, rows in self.chunks(messages):
                try:
                    cursor.execute(statement, params)
                except self.dbapi_error as exc:  # as SQLAlchemy would raise it (IntegrityError, OperationalError...)
                    raise DBAPIError.instance(statement, params, exc, self.dbapi_error) from exc
                returned = sorted(row[0] for row in cursor.fetchall())
                if len(returned) != rows:
                    raise StorageError(f"INSERT returned {len(returned)} ids for {rows} rows")
                ids += returned
        finally:
            cursor.close()
        return ids


class OneTripBatch:
    """MariaDB: the whole batch as one multi-statement query, so it costs one round trip instead of four.

    `INSERT ... RETURNING id` (per chunk), the first-response UPDATE when due, the hourly-count upsert and
    `COMMIT`. The server stops at the first failing statement, so the COMMIT only runs when everything before
    it succeeded; the caller rolls back otherwise. Every value is a bound parameter escaped by the driver.
    """

    def __init__(self, dialect) -> None:
        self.insert = MessageInsert(dialect)
        self.dbapi_error = self.insert.dbapi_error

    def __call__(self, dbapi_connection, messages: list[NewMessage], first_reply: dict[int, datetime],
                 counts: list[dict]) -> list[int]:
        statements: list[str] = []
        params: list = []
        for statement, chunk_params, _rows in self.insert.chunks(messages):
            statements.append(statement)
            params += chunk_params
        chunks = len(statements)
        if first_reply:
            cases = " ".join(["WHEN %s THEN %s"] * len(first_reply))
            ids = ", ".join(["%s"] * len(first_reply))
            statements.append(f"UPDATE {sessions_table.name} SET first_response_at = CASE id {cases} END"
                              f" WHERE id IN ({ids}) AND first_response_at IS NULL")
            for session_id, at in first_reply.items():
                params += (session_id, at)
            params += first_reply.keys()
        statements.append(
            f"INSERT INTO {message_hourly_table.name} (day, hour, sender_role, sender_id, shard, messages) VALUES "
            + ", ".join(["(%s, %s, %s, %s, %s, %s)"] * len(counts))
            + " ON DUPLICATE KEY UPDATE messages = messages + VALUES(messages)"
        )
        for c in counts:
            params += (c["day"], c["hour"], c["sender_role"], c["sender_id"], c["shard"], c["messages"])
        statements.append("COMMIT")
        query = ";\n".join(statements)
        ids_out: list[int] = []
        cursor = dbapi_connection.cursor()
        try:
            try:
                cursor.execute(query, params)
                for n in range(len(statements)):
                    if n:
                        cursor.nextset()  # raises the error of a statement that failed
                    if n < chunks:
                        ids_out += sorted(row[0] for row in cursor.fetchall())
            except self.dbapi_error as exc:
                self._rollback(dbapi_connection)
                raise DBAPIError.instance(query, params, exc, self.dbapi_error) from exc
            except UNSENDABLE:  # the driver could not build the query: nothing was sent
                self._rollback(dbapi_connection)
                raise
        finally:
            cursor.close()
        if len(ids_out) != len(messages):
            raise StorageError(f"INSERT returned {len(ids_out)} ids for {len(messages)} rows")
        return ids_out

    def _rollback(self, dbapi_connection) -> None:
        try:
            dbapi_connection.rollback()
        except self.dbapi_error:
            pass  # the connection is gone; the caller drops it

    @staticmethod
    def available(dbapi_connection) -> bool:
        """A MariaDB connection that accepts several statements per query."""
        from pymysql.constants import CLIENT

        flags = getattr(dbapi_connection, "client_flag", 0)
        server = getattr(dbapi_connection, "server_version", "") or ""
        return bool(flags & CLIENT.MULTI_STATEMENTS) and "MariaDB" in server


def refused_by_database(exc: SQLAlchemyError) -> bool:
    """The database refused a statement and said so (nothing of the transaction is committed, the connection
    is fine): a constraint or a value it cannot store; on MySQL any server error but the uncertain ones.

    An OperationalError of SQLite (locked, disk I/O) is about the database, not a row: not refused."""
    code = getattr(getattr(exc, "orig", None), "args", (None,))[0]
    if isinstance(code, int):  # MySQL/MariaDB: the server's error number
        return code >= 1000 and not 2000 <= code < 3000 and code not in UNCERTAIN_ERRORS
    return isinstance(exc, DBAPIError) and not isinstance(exc, OperationalError)


class BatchRefused(StorageError):
    """The database refused a statement of the batch, or the driver could not send one of its values: the
    transaction is rolled back, nothing of it is stored, and the connection is fine. One row is the likely
    cause, so the batch is written again in halves (see MessageWriter._write)."""


class RolledBack(StorageError):
    """The database chose this transaction as a deadlock victim (or its lock wait timed out) and rolled it
    back whole: nothing of it was stored, so writing the batch again is safe."""


class DuplicateMessage(Exception):
    """The sender already stored a message with this client_msg_id in this session."""

    def __init__(self, original: MessageRecord | None) -> None:
        super().__init__("duplicate client_msg_id")
        self.original = original


@dataclass(slots=True)
class _Pending:
    message: NewMessage
    result: AsyncResult = field(default_factory=AsyncResult)
    enqueued: float = field(default_factory=time.monotonic)


class WriterConnection:
    """One writer's own connection: opened on first use, pinged after idling, dropped after any error.

    Its hourly-count shard comes from the MySQL connection id, unique among the server's open connections.
    """

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.conn: Connection | None = None
        self.shard = 0
        self.one_trip = False  # the connection takes a whole batch in one query (OneTripBatch)
        self._used = 0.0

    @contextmanager
    def transaction(self, commit: bool = True) -> Iterator[Connection]:
        """A transaction on this writer's connection; database errors other than constraints as StorageError.

        `commit=False`: the caller commits or rolls back itself (OneTripBatch sends its own COMMIT).
        """
        conn = self.ready()
        try:
            if commit:
                with conn.begin():
                    yield conn
            else:
                yield conn
        except IntegrityError:
            raise  # rolled back; the connection is fine
        except SQLAlchemyError as exc:
            code = getattr(getattr(exc, "orig", None), "args", (None,))[0]
            if code in ROLLED_BACK_ERRORS:
                raise RolledBack(exc.__class__.__name__) from exc  # the connection is fine
            if refused_by_database(exc):
                raise BatchRefused(exc.__class__.__name__) from exc  # rolled back; the connection is fine
            log.warning("database error: %s", exc.__class__.__name__)
            self.drop()
            raise StorageError(exc.__class__.__name__) from exc
        except UNSENDABLE as exc:  # raised while binding, before the statement was sent; rolled back
            raise BatchRefused(exc.__class__.__name__) from exc
        except BaseException:
            self.drop()  # killed or failed mid-statement: the connection's state is unknown
            raise
        finally:
            self._used = time.monotonic()

    def ready(self) -> Connection:
        """The open connection, pinged first when it idled past IDLE_PING_SECONDS; its shard and `one_trip` are
        known from here on. StorageError when the database cannot be reached."""
        conn = self.conn
        if conn is not None and time.monotonic() - self._used > IDLE_PING_SECONDS:
            try:
                conn.dialect.do_ping(conn.connection.dbapi_connection)
            except Exception:  # a server restart or a dropped idle connection: open a new one
                self.drop()
                conn = None
        if conn is None:
            conn = self.storage.open_connection()
            try:
                if conn.dialect.name == "mysql":
                    (connection_id,) = conn.exec_driver_sql("SELECT CONNECTION_ID()").one()
                    self.shard = int(connection_id) % HOURLY_SHARDS
                conn.commit()
                self.one_trip = OneTripBatch.available(conn.connection.dbapi_connection)
            except SQLAlchemyError as exc:
                conn.invalidate()
                conn.close()
                raise StorageError(exc.__class__.__name__) from exc
            self.conn = conn
        self._used = time.monotonic()
        return conn

    def drop(self) -> None:
        """Close the connection for good (the pool opens a new one); the next batch reconnects."""
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.invalidate()
                conn.close()
            except Exception:  # pragma: no cover - closing a broken connection
                pass

    def close(self) -> None:
        """Give the connection back to the pool (graceful stop, nothing in flight)."""
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # pragma: no cover
                pass


class MessageWriter:
    """Stores messages for every greenlet of one worker; start it after the fork (it spawns greenlets)."""

    def __init__(self, storage: Storage, batch_size: int = 200, concurrency: int = 2, timeout: float = 15.0) -> None:
        self.storage = storage
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.timeout = timeout
        self._queue: Queue[_Pending] = Queue()
        self._writers: list[gevent.Greenlet] = []
        self._connections: list[WriterConnection] = []
        self._busy = 0  # batches being written now
        dialect = storage.engine.dialect
        self._returning = bool(
            getattr(dialect, "insert_executemany_returning_sort_by_parameter_order", False)
        )
        self._insert_rows = MessageInsert(dialect)
        self._one_trip = OneTripBatch(dialect) if dialect.name == "mysql" else None
        self.observe = None  # optional callable(seconds, rows) for metrics
        # Sessions this worker knows to be answered: their agent messages need no first-response UPDATE.
        self._answered: set[int] = set()
        self._hourly = hourly_upsert(dialect.name)

    def _ensure_started(self) -> None:
        if not self._writers:
            self._connections = [WriterConnection(self.storage) for _ in range(self.concurrency)]
            self._writers = [gevent.spawn(self._run, link) for link in self._connections]

    def store(self, message: NewMessage) -> MessageRecord:
        """Store one message and return it with its id; raises StorageError or DuplicateMessage."""
        self._ensure_started()
        pending = _Pending(message)
        self._queue.put(pending)
        # Always answered, without a timer per message: a batch is bounded by the driver's read timeout, a
        # message queued longer than `timeout` is refused unwritten, and stop() answers what it leaves.
        return pending.result.get()

    def pending(self) -> int:
        return self._queue.qsize()

    def stop(self, timeout: float | None = None) -> None:
        """Finish what is queued and the batches being written, then stop the writers (graceful shutdown).

        A store() after this starts the writers again, so a late caller still gets an answer.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while (self._queue.qsize() or self._busy) and time.monotonic() < deadline:
            gevent.sleep(0.005)
        gevent.killall(self._writers)
        for link in self._connections:
            link.close()
        self._writers = []
        self._connections = []
        while self._queue.qsize():  # not written before the deadline: its sender must still hear
            self._queue.get_nowait().result.set_exception(StorageError("server stopping"))

    def _run(self, link: WriterConnection) -> None:
        while True:
            batch = self._next_batch()
            if not batch:
                continue
            self._busy += 1
            try:
                self._write(link, batch)
            except BaseException as exc:  # never let a writer die silently: every sender must get an answer
                for pending in batch:
                    if not pending.result.ready():
                        pending.result.set_exception(StorageError(type(exc).__name__))
                if not isinstance(exc, Exception):
                    raise  # killed (stop): its batch has been answered
                log.exception("message writer failed")
            finally:
                self._busy -= 1

    def _next_batch(self) -> list[_Pending]:
        """Up to batch_size queued messages, oldest first; those queued past `timeout` are refused unwritten."""
        batch = [self._queue.get()]
        while len(batch) < self.batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except Empty:
                break
        oldest_allowed = time.monotonic() - self.timeout
        if batch[0].enqueued >= oldest_allowed:
            return batch
        expired = [p for p in batch if p.enqueued < oldest_allowed]
        for pending in expired:
            pending.result.set_exception(StorageError("timed out waiting for the database"))
        return batch[len(expired):]  # FIFO: the expired ones are the oldest, at the front

    def _write(self, link: WriterConnection, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        messages = [p.message for p in batch]
        try:
            for attempt in range(1, BATCH_ATTEMPTS + 1):
                try:
                    ids = self._insert(link, messages)
                    break
                except RolledBack:
                    if attempt == BATCH_ATTEMPTS:
                        raise
                    log.info("batch rolled back by the database (deadlock); writing it again")
        except (IntegrityError, BatchRefused) as exc:
            if len(batch) == 1:
                self._fail(batch[0], exc)
                return
            # A row was refused (a repeated client_msg_id, a value the database or the driver cannot take) and
            # nothing was stored: write the halves again, first half first (FIFO), until the row is alone. A
            # sender has one message in flight, so its order is kept; each half does its own bookkeeping.
            middle = len(batch) // 2
            self._write(link, batch[:middle])
            self._write(link, batch[middle:])
            return
        except StorageError as exc:
            # Not stored (the database is down or refused the batch): each sender hears so and may resend.
            # Never retried here: a COMMIT that failed in flight may have been applied.
            for pending in batch:
                pending.result.set_exception(exc)
            return
        if self.observe is not None:
            self.observe(time.perf_counter() - started, len(batch))
        for pending, message_id in zip(batch, ids, strict=True):
            pending.result.set(pending.message.stored(message_id))

    def _fail(self, pending: _Pending, exc: Exception) -> None:
        if isinstance(exc, IntegrityError) and pending.message.client_msg_id is not None:
            m = pending.message
            try:
                original = self.storage.find_client_message(m.session_id, m.sender_id, m.client_msg_id)
            except StorageError as lookup_exc:
                pending.result.set_exception(lookup_exc)
                return
            if original is not None:
                pending.result.set_exception(DuplicateMessage(original))
                return
        if isinstance(exc, BatchRefused | IntegrityError):
            # Expected for a bad row: one line, no traceback; its neighbours were stored without it.
            reason = str(exc) if isinstance(exc, BatchRefused) else type(exc).__name__  # never the SQL or values
            log.warning("message refused by the database: %s", reason, extra={"session_id": pending.message.session_id})
        if not isinstance(exc, StorageError):
            exc = StorageError(type(exc).__name__)
        pending.result.set_exception(exc)

    def _insert(self, link: WriterConnection, messages: list[NewMessage]) -> list[int]:
        """Insert in one transaction; ids in the order given. Agent replies also mark first responses."""
        first_reply = {k: v for k, v in first_agent_reply(messages).items() if k not in self._answered}
        link.ready()  # (re)connects first: the shard, and whether the batch can go as one query, depend on it
        one_trip = self._one_trip if link.one_trip else None
        with link.transaction(commit=one_trip is None) as conn:  # one trip: the query carries its own COMMIT
            counts = hourly_counts(messages, link.shard)
            if one_trip is not None:
                ids = one_trip(conn.connection.dbapi_connection, messages, first_reply, counts)
            else:
                if self._returning:
                    ids = self._insert_rows(conn.connection.dbapi_connection, messages)
                else:
                    # No RETURNING (MySQL): still one transaction and one commit for the whole batch.
                    ids = [conn.execute(insert(messages_table), m.as_row()).inserted_primary_key[0]
                           for m in messages]
                if first_reply:
                    conn.execute(first_response_update(first_reply))
                # Last, so the hour's counter rows stay locked only for the commit.
                conn.execute(self._hourly, counts)
        self._remember_answered(first_reply)
        return ids

    def _remember_answered(self, first_reply: dict[int, datetime]) -> None:
        if first_reply:
            if len(self._answered) > ANSWERED_CACHE_SIZE:
                self._answered.clear()
            self._answered.update(first_reply)  # committed: every one of them has its first response now
