"""Every query the service makes, on SQLAlchemy Core over the Flask-SQLAlchemy engine.

Core rather than the ORM session: handlers run in many greenlets at once, and plain rows returned as
frozen records cannot leak state between them. A FIFO semaphore bounds concurrent database use, because
SQLAlchemy's pool is not fair under gevent (some greenlets starve while others get a connection).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from zoneinfo import ZoneInfo

from gevent.lock import BoundedSemaphore
from sqlalchemy import Connection, Engine, and_, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from .diagnostics import describe_database_error
from .models import CLOSE_REASONS, agents_table, events_table, messages_table, read_states_table, sessions_table
from .records import AgentRecord, MessageRecord, SessionRecord

log = logging.getLogger(__name__)


class StorageError(RuntimeError):
    """The database could not be reached or refused the operation; callers answer 'try again'."""


def _session(row) -> SessionRecord:
    return SessionRecord(
        id=row.id,
        user_id=row.user_id,
        agent_id=row.agent_id,
        status=row.status,
        created_at=row.created_at,
        closed_at=row.closed_at,
    )


def _message(row) -> MessageRecord:
    return MessageRecord(
        id=row.id,
        session_id=row.session_id,
        sender_id=row.sender_id,
        sender_role=row.sender_role,
        content=row.content,
        created_at=row.created_at,
        client_msg_id=row.client_msg_id,
    )


class Storage:
    """The service's one gateway to the database."""

    def __init__(self, engine: Engine, tz: ZoneInfo, concurrency: int = 8, writer_engine: Engine | None = None) -> None:
        self.engine = engine
        self.writer_engine = writer_engine or engine  # where message writers open their own connections
        self._now: tuple[int, datetime] = (-1, datetime.min)
        self.tz = tz
        self._gate = BoundedSemaphore(concurrency)
        # Schema creation still owed (the database was down at start-up); run on the next use, once.
        self.prepare: Callable[[], None] | None = None

    # -- plumbing ---------------------------------------------------------------------------------

    def now(self) -> datetime:
        """Wall-clock time in APP_TIMEZONE, to the second, naive (the legacy column format).

        Computed once per second: every message asks for it.
        """
        second = int(time.time())
        if second != self._now[0]:
            self._now = (second, datetime.fromtimestamp(second, self.tz).replace(tzinfo=None))
        return self._now[1]

    def _prepare_if_owed(self) -> None:
        if self.prepare is not None:
            self.prepare()
            self.prepare = None
            log.info("database reachable again; tables are in place")

    @contextmanager
    def connect(self, write: bool = False) -> Iterator[Connection]:
        """A pooled connection (in a transaction when `write`), with database errors as StorageError."""
        with self._gate:
            try:
                self._prepare_if_owed()
                with self.engine.connect() as conn:
                    if write:
                        with conn.begin():
                            yield conn
                    else:
                        yield conn
            except IntegrityError:
                raise
            except SQLAlchemyError as exc:
                reason = describe_database_error(exc)
                log.warning("database error: %s", reason, exc_info=log.isEnabledFor(logging.DEBUG))
                raise StorageError(reason) from exc

    def open_connection(self) -> Connection:
        """A connection kept by one long-lived user (a message writer) instead of checked out per use.

        It comes from `writer_engine` and skips the gate; the caller closes it after an error. Database errors
        come back as StorageError.
        """
        try:
            self._prepare_if_owed()
            return self.writer_engine.connect()
        except SQLAlchemyError as exc:
            reason = describe_database_error(exc)
            log.warning("database error: %s", reason)
            raise StorageError(reason) from exc

    def ping(self) -> None:
        """Read one of the service's tables: a reachable server without our schema is not ready either."""
        with self.connect() as conn:
            conn.execute(select(sessions_table.c.id).limit(1)).first()

    # -- agents -----------------------------------------------------------------------------------

    def is_agent(self, user_id: int) -> bool:
        with self.connect() as conn:
            row = conn.execute(select(agents_table.c.user_id).where(agents_table.c.user_id == user_id)).first()
        return row is not None

    def add_agent(self, user_id: int, display_name: str | None = None) -> tuple[AgentRecord, bool]:
        """Register an agent; (record, created). Adding again updates the display name only."""
        with self.connect(write=True) as conn:
            row = conn.execute(select(agents_table).where(agents_table.c.user_id == user_id)).first()
            if row is not None:
                if display_name is not None and display_name != row.display_name:
                    conn.execute(
                        update(agents_table).where(agents_table.c.user_id == user_id).values(display_name=display_name)
                    )
                return AgentRecord(user_id, display_name or row.display_name, row.created_at), False
            created_at = self.now()
            conn.execute(insert(agents_table).values(user_id=user_id, display_name=display_name, created_at=created_at))
        return AgentRecord(user_id, display_name, created_at), True

    def remove_agent(self, user_id: int) -> bool:
        with self.connect(write=True) as conn:
            return conn.execute(delete(agents_table).where(agents_table.c.user_id == user_id)).rowcount > 0

    def list_agents(self) -> list[AgentRecord]:
        with self.connect() as conn:
            rows = conn.execute(select(agents_table).order_by(agents_table.c.user_id)).all()
        return [AgentRecord(r.user_id, r.display_name, r.created_at) for r in rows]

    # -- sessions ---------------------------------------------------------------------------------

    def get_session(self, session_id: int) -> SessionRecord | None:
        with self.connect() as conn:
            row = conn.execute(select(sessions_table).where(sessions_table.c.id == session_id)).first()
        return _session(row) if row is not None else None

    def open_session(self, user_id: int) -> tuple[SessionRecord, bool]:
        """The customer's open session, creating it if there is none; (session, created).

        The unique key on (user_id, open_flag) makes this safe against concurrent calls on any worker.
        """
        for _attempt in range(3):
            existing = self._open_session_of(user_id)
            if existing is not None:
                return existing, False
            try:
                with self.connect(write=True) as conn:
                    now = self.now()
                    result = conn.execute(
                        insert(sessions_table).values(user_id=user_id, status="active", open_flag=1, created_at=now)
                    )
                    session_id = result.inserted_primary_key[0]
                    self._record_event(conn, session_id, "opened", user_id, "customer", now)
            except IntegrityError:
                continue
            created = self.get_session(session_id)
            assert created is not None
            return created, True
        raise StorageError("could not create session")

    def _open_session_of(self, user_id: int) -> SessionRecord | None:
        with self.connect() as conn:
            row = conn.execute(
                select(sessions_table).where(
                    and_(sessions_table.c.user_id == user_id, sessions_table.c.open_flag == 1)
                )
            ).first()
        return _session(row) if row is not None else None

    def list_sessions(
        self, status: str = "active", user_id: int | None = None, limit: int = 100, before_id: int | None = None
    ) -> list[SessionRecord]:
        """Newest first; `user_id` narrows to one customer's sessions."""
        query = select(sessions_table)
        if status != "all":
            query = query.where(sessions_table.c.status == status)
        if user_id is not None:
            query = query.where(sessions_table.c.user_id == user_id)
        if before_id is not None:
            query = query.where(sessions_table.c.id < before_id)
        query = query.order_by(sessions_table.c.id.desc()).limit(limit)
        with self.connect() as conn:
            return [_session(r) for r in conn.execute(query).all()]

    def assign_agent(self, session_id: int, agent_id: int) -> bool:
        """Make `agent_id` the session's agent if it has none yet; True when this call assigned it."""
        with self.connect(write=True) as conn:
            now = self.now()
            result = conn.execute(
                update(sessions_table)
                .where(and_(sessions_table.c.id == session_id, sessions_table.c.agent_id.is_(None)))
                .values(agent_id=agent_id, assigned_at=func.coalesce(sessions_table.c.assigned_at, now))
            )
            assigned = result.rowcount > 0
            if assigned:
                self._record_event(conn, session_id, "assigned", agent_id, "agent", now)
        return assigned

    def close_session(
        self, session_id: int, closed_by: int | None, reason: str = "backend"
    ) -> tuple[SessionRecord | None, bool]:
        """Close an open session; (session after the call, whether this call closed it).

        `closed_by` is the user who closed it (None for the backend or the idle sweeper), `reason` one of
        CLOSE_REASONS: customer, agent, backend, idle.
        """
        if reason not in CLOSE_REASONS:
            raise ValueError(f"close reason must be one of {CLOSE_REASONS}")
        with self.connect(write=True) as conn:
            now = self.now()
            result = conn.execute(
                update(sessions_table)
                .where(and_(sessions_table.c.id == session_id, sessions_table.c.status == "active"))
                .values(status="closed", open_flag=None, closed_at=now, closed_by=closed_by, close_reason=reason)
            )
            closed = result.rowcount > 0
            if closed:
                role = "system" if reason == "idle" else reason
                self._record_event(conn, session_id, "closed", closed_by, role, now)
        return self.get_session(session_id), closed

    @staticmethod
    def _record_event(
        conn: Connection, session_id: int, event: str, actor_id: int | None, actor_role: str | None, at: datetime
    ) -> None:
        """Append to chat_session_events inside the caller's transaction (it commits with the change)."""
        conn.execute(
            insert(events_table).values(
                session_id=session_id, event=event, actor_id=actor_id, actor_role=actor_role, created_at=at
            )
        )

    # -- messages ---------------------------------------------------------------------------------

    def list_messages(self, session_id: int, after_id: int = 0, limit: int = 50) -> list[MessageRecord]:
        """Oldest first, strictly after `after_id` (a cursor that never skips or repeats)."""
        query = (
            select(messages_table)
            .where(and_(messages_table.c.session_id == session_id, messages_table.c.id > after_id))
            .order_by(messages_table.c.id)
            .limit(limit)
        )
        with self.connect() as conn:
            return [_message(r) for r in conn.execute(query).all()]

    def list_message_ids(self, session_id: int, after_id: int, limit: int) -> list[int]:
        """The ids `list_messages` would return, without the rows (a replay reads these first, then pages)."""
        column = messages_table.c.id
        query = (
            select(column)
            .where(and_(messages_table.c.session_id == session_id, column > after_id))
            .order_by(column)
            .limit(limit)
        )
        with self.connect() as conn:
            return list(conn.execute(query).scalars())

    def messages_by_ids(self, session_id: int, ids: list[int]) -> list[MessageRecord]:
        """The session's messages with these ids, oldest first (ids of other sessions are ignored)."""
        if not ids:
            return []
        query = (
            select(messages_table)
            .where(and_(messages_table.c.session_id == session_id, messages_table.c.id.in_(ids)))
            .order_by(messages_table.c.id)
        )
        with self.connect() as conn:
            return [_message(r) for r in conn.execute(query).all()]

    def list_messages_before(self, session_id: int, before_id: int, after_id: int = 0,
                             limit: int = 50) -> list[MessageRecord]:
        """The `limit` newest messages with after_id < id < before_id, oldest first (scrolling back)."""
        query = (
            select(messages_table)
            .where(
                and_(
                    messages_table.c.session_id == session_id,
                    messages_table.c.id > after_id,
                    messages_table.c.id < before_id,
                )
            )
            .order_by(messages_table.c.id.desc())
            .limit(limit)
        )
        with self.connect() as conn:
            return [_message(r) for r in reversed(conn.execute(query).all())]


    def messages_for_catch_up(
        self, session_id: int, after_id: int, created_since: float | None, limit: int
    ) -> list[MessageRecord]:
        """Oldest first, after `after_id`, and when `created_since` (a unix time) is given, created then or later.

        For the fan-out's catch-up after a lost subscription (realtime/catchup.py); created_at has whole
        seconds, so the bound is rounded down.
        """
        condition = and_(messages_table.c.session_id == session_id, messages_table.c.id > after_id)
        if created_since is not None:
            since = datetime.fromtimestamp(int(created_since), self.tz).replace(tzinfo=None)
            condition = and_(condition, messages_table.c.created_at >= since)
        query = select(messages_table).where(condition).order_by(messages_table.c.id).limit(limit)
        with self.connect() as conn:
            return [_message(r) for r in conn.execute(query).all()]

    def find_client_message(self, session_id: int, sender_id: int, client_msg_id: str) -> MessageRecord | None:
        with self.connect() as conn:
            row = conn.execute(
                select(messages_table).where(
                    and_(
                        messages_table.c.session_id == session_id,
                        messages_table.c.sender_id == sender_id,
                        messages_table.c.client_msg_id == client_msg_id,
                    )
                )
            ).first()
        return _message(row) if row is not None else None

    def count_messages(self, session_id: int) -> int:
        with self.connect() as conn:
            return conn.execute(
                select(func.count()).select_from(messages_table).where(messages_table.c.session_id == session_id)
            ).scalar_one()

    # -- read state -------------------------------------------------------------------------------

    def message_in_session(self, session_id: int, message_id: int) -> bool:
        with self.connect() as conn:
            row = conn.execute(
                select(messages_table.c.id).where(
                    and_(messages_table.c.id == message_id, messages_table.c.session_id == session_id)
                )
            ).first()
        return row is not None

    def read_pointer(self, session_id: int, user_id: int) -> int | None:
        table = read_states_table
        with self.connect() as conn:
            return conn.execute(
                select(table.c.last_read_message_id).where(
                    and_(table.c.session_id == session_id, table.c.user_id == user_id)
                )
            ).scalar()

    def mark_read(self, session_id: int, user_id: int, message_id: int) -> tuple[int, bool]:
        """Move the user's read pointer up to `message_id`; (pointer after the call, whether this call moved it).

        Monotonic in SQL on every database: the UPDATE matches only a pointer below `message_id`, so it sets
        max(old, new); the first pointer is an INSERT made unique by the primary key. A racer that loses the
        INSERT, or sees a smaller pointer appear, goes round again, so concurrent workers never lose a move.
        """
        table = read_states_table
        key = and_(table.c.session_id == session_id, table.c.user_id == user_id)
        for _attempt in range(5):
            with self.connect(write=True) as conn:
                moved = conn.execute(
                    update(table)
                    .where(and_(key, table.c.last_read_message_id < message_id))
                    .values(last_read_message_id=message_id, updated_at=self.now())
                ).rowcount
            if moved:
                return message_id, True
            current = self.read_pointer(session_id, user_id)
            if current is not None and current >= message_id:
                return current, False
            if current is None:
                try:
                    with self.connect(write=True) as conn:
                        conn.execute(
                            insert(table).values(
                                session_id=session_id,
                                user_id=user_id,
                                last_read_message_id=message_id,
                                updated_at=self.now(),
                            )
                        )
                except IntegrityError:
                    continue
                return message_id, True
        raise StorageError("read pointer kept changing")

    def unread_counts(self, user_id: int, session_ids: list[int]) -> dict[int, int]:
        """Per session: messages after the user's read pointer that someone else sent. One query.

        The count is a subquery per session whose bounds are constants (session id, pointer), so each is a
        range scan of the (session_id, id) index from the pointer on, not a scan of the whole history.
        MariaDB otherwise prefers walking every entry of the session in the covering client_msg_id key
        (measured: 8.8 ms vs 3.0 ms for 2 unread among 40,000), hence the hint; SQLite picks the range itself.
        """
        if not session_ids:
            return {}
        s, m, r = sessions_table, messages_table, read_states_table
        pointer = func.coalesce(r.c.last_read_message_id, 0)
        hint = "FORCE INDEX (ix_chat_messages_session_id)"
        unread = (
            select(func.count())
            .select_from(m)
            .where(and_(m.c.session_id == s.c.id, m.c.id > pointer, m.c.sender_id != user_id))
            .with_hint(m, hint, "mysql")
            .with_hint(m, hint, "mariadb")
            .scalar_subquery()
        )
        query = (
            select(s.c.id, unread)
            .select_from(s.outerjoin(r, and_(r.c.session_id == s.c.id, r.c.user_id == user_id)))
            .where(s.c.id.in_(session_ids))
        )
        with self.connect() as conn:
            return {row[0]: int(row[1]) for row in conn.execute(query).all()}
