"""Group commit for chat messages: many senders, few writers, one multi-row INSERT per transaction.

The same transaction adds the batch to the hourly message counts (one upsert) and, when the batch holds agent
messages, sets first_response_at of sessions not yet answered (one UPDATE): reports never scan messages.

A sender's greenlet submits its message and waits for the stored record, so one sender never has two
messages in flight and its order is kept. Writers drain the queue in FIFO order, store up to WRITER_BATCH
rows in one transaction and hand each sender its id. When a batch fails (a duplicate client_msg_id, a bad
row), the rows are retried one by one so one bad row costs nobody else their message.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

import gevent
from gevent.event import AsyncResult
from gevent.queue import Empty, Queue
from sqlalchemy import and_, case, insert, update
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from .models import message_hourly_table, messages_table, sessions_table
from .queries import Storage, StorageError
from .records import MessageRecord, NewMessage

log = logging.getLogger(__name__)

ANSWERED_CACHE_SIZE = 100_000


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


def hourly_counts(messages) -> list[dict]:
    """The batch's rows of chat_message_hourly (agents by id, customers as 0), in key order (concurrent writers
    lock rows in one order)."""
    counts = Counter(
        (m.created_at.date(), m.created_at.hour, m.sender_role, m.sender_id if m.sender_role == "agent" else 0)
        for m in messages
    )
    return [
        {"day": day, "hour": hour, "sender_role": role, "sender_id": sender, "messages": n}
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


class MessageWriter:
    """Stores messages for every greenlet of one worker; start it after the fork (it spawns greenlets)."""

    def __init__(self, storage: Storage, batch_size: int = 200, concurrency: int = 2, timeout: float = 15.0) -> None:
        self.storage = storage
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.timeout = timeout
        self._queue: Queue[_Pending] = Queue()
        self._writers: list[gevent.Greenlet] = []
        self._busy = 0  # batches being written now
        dialect = storage.engine.dialect
        self._returning = bool(
            getattr(dialect, "insert_executemany_returning_sort_by_parameter_order", False)
        )
        self.observe = None  # optional callable(seconds, rows) for metrics
        # Sessions this worker knows to be answered: their agent messages need no first-response UPDATE.
        self._answered: set[int] = set()
        self._hourly = hourly_upsert(dialect.name)

    def _ensure_started(self) -> None:
        if not self._writers:
            self._writers = [gevent.spawn(self._run) for _ in range(self.concurrency)]

    def store(self, message: NewMessage) -> MessageRecord:
        """Store one message and return it with its id; raises StorageError or DuplicateMessage."""
        self._ensure_started()
        pending = _Pending(message)
        self._queue.put(pending)
        try:
            return pending.result.get(timeout=self.timeout)
        except gevent.Timeout:
            raise StorageError("timed out waiting for the database") from None

    def pending(self) -> int:
        return self._queue.qsize()

    def stop(self, timeout: float | None = None) -> None:
        """Finish what is queued and the batches being written, then stop the writers (graceful shutdown).

        A store() after this starts the writers again, so a late caller still gets an answer.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while (self._queue.qsize() or self._busy) and time.monotonic() < deadline:
            gevent.sleep(0.005)
        for writer in self._writers:
            writer.kill(block=False)
        self._writers = []

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self.batch_size:
                try:
                    batch.append(self._queue.get_nowait())
                except Empty:
                    break
            self._busy += 1
            try:
                self._write(batch)
            except Exception as exc:  # never let a writer die: every sender must get an answer
                log.exception("message writer failed")
                for pending in batch:
                    if not pending.result.ready():
                        pending.result.set_exception(StorageError(type(exc).__name__))
            finally:
                self._busy -= 1

    def _write(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        try:
            ids = self._insert([p.message for p in batch])
        except (IntegrityError, StorageError, SQLAlchemyError) as exc:
            if len(batch) == 1:
                self._fail(batch[0], exc)
                return
            for pending in batch:
                try:
                    (message_id,) = self._insert([pending.message])
                except (IntegrityError, StorageError, SQLAlchemyError) as row_exc:
                    self._fail(pending, row_exc)
                else:
                    pending.result.set(pending.message.stored(message_id))
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
        if not isinstance(exc, StorageError):
            log.warning("message not stored: %s", type(exc).__name__)
            exc = StorageError(type(exc).__name__)
        pending.result.set_exception(exc)

    def _insert(self, messages: list[NewMessage]) -> list[int]:
        """Insert in one transaction; ids in the order given. Agent replies also mark first responses."""
        rows = [m.as_row() for m in messages]
        with self.storage.connect(write=True) as conn:
            if len(rows) == 1:
                ids = [conn.execute(insert(messages_table), rows[0]).inserted_primary_key[0]]
            elif self._returning:
                result = conn.execute(
                    insert(messages_table).returning(messages_table.c.id, sort_by_parameter_order=True), rows
                )
                ids = [row[0] for row in result]
            else:
                # No RETURNING (MySQL): still one transaction and one commit for the whole batch.
                ids = [conn.execute(insert(messages_table), row).inserted_primary_key[0] for row in rows]
            first_reply = {k: v for k, v in first_agent_reply(messages).items() if k not in self._answered}
            if first_reply:
                conn.execute(first_response_update(first_reply))
            # Last, so the hour's shared customer row stays locked only for the commit.
            conn.execute(self._hourly, hourly_counts(messages))
        if first_reply:
            if len(self._answered) > ANSWERED_CACHE_SIZE:
                self._answered.clear()
            self._answered.update(first_reply)  # committed: every one of them has its first response now
        return ids
