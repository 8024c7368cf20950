"""Group commit for chat messages: many senders, few writers, one multi-row INSERT per transaction.

A sender's greenlet submits its message and waits for the stored record, so one sender never has two
messages in flight and its order is kept. Writers drain the queue in FIFO order, store up to WRITER_BATCH
rows in one transaction and hand each sender its id. When a batch fails (a duplicate client_msg_id, a bad
row), the rows are retried one by one so one bad row costs nobody else their message.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import gevent
from gevent.event import AsyncResult
from gevent.queue import Empty, Queue
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from .models import messages_table
from .queries import Storage, StorageError
from .records import MessageRecord, NewMessage

log = logging.getLogger(__name__)


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
        dialect = storage.engine.dialect
        self._returning = bool(
            getattr(dialect, "insert_executemany_returning_sort_by_parameter_order", False)
        )
        self.observe = None  # optional callable(seconds, rows) for metrics

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

    def stop(self) -> None:
        """Finish what is queued, then stop the writers (graceful shutdown)."""
        deadline = time.monotonic() + self.timeout
        while self._queue.qsize() and time.monotonic() < deadline:
            gevent.sleep(0.01)
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
            try:
                self._write(batch)
            except Exception as exc:  # never let a writer die: every sender must get an answer
                log.exception("message writer failed")
                for pending in batch:
                    if not pending.result.ready():
                        pending.result.set_exception(StorageError(type(exc).__name__))

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
        """Insert in one transaction; ids in the order given."""
        rows = [m.as_row() for m in messages]
        with self.storage.connect(write=True) as conn:
            if len(rows) == 1:
                return [conn.execute(insert(messages_table), rows[0]).inserted_primary_key[0]]
            if self._returning:
                result = conn.execute(
                    insert(messages_table).returning(messages_table.c.id, sort_by_parameter_order=True), rows
                )
                return [row[0] for row in result]
            # No RETURNING (MySQL): still one transaction and one commit for the whole batch.
            return [conn.execute(insert(messages_table), row).inserted_primary_key[0] for row in rows]
