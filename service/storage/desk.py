"""The agent desk's queries: agent status and capacity, the queue, and atomic assignment and transfer.

Assignment is atomic on every database, across workers and hosts: one transaction first locks the agent's
row (an UPDATE of it: a row lock on MySQL/MariaDB, the write lock on SQLite), then counts the agent's open
sessions, and only then takes the session with an UPDATE that matches it only while it is still waiting
(`agent_id IS NULL`, or the transferring agent's). Two routers that pick the same agent wait for each other
on the row, so the second one counts the first one's session; two that pick the same session cannot both
match it. A refusal rolls the whole transaction back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from sqlalchemy import Connection, and_, func, insert, select, update

from .models import AGENT_STATUSES, agent_load_table, agents_table, messages_table, sessions_table
from .queries import Storage, StorageError
from .records import SessionRecord

log = logging.getLogger(__name__)

DEADLOCK_ATTEMPTS = 3


class Outcome(Enum):
    """What an assignment or transfer attempt did."""

    ASSIGNED = "assigned"
    ALREADY_ASSIGNED = "already_assigned"  # another agent has the session
    OVER_CAPACITY = "over_capacity"
    NOT_WAITING = "not_waiting"  # closed, gone, or (transfer) no longer the transferring agent's
    NO_AGENT = "no_agent"  # not in the agents table


@dataclass(frozen=True, slots=True)
class DeskAgent:
    user_id: int
    display_name: str | None
    status: str
    capacity: int
    load: int
    last_assigned_at: datetime | None

    def to_wire(self) -> dict:
        return {"user_id": self.user_id, "display_name": self.display_name, "status": self.status,
                "capacity": self.capacity, "load": self.load}


@dataclass(frozen=True, slots=True)
class Waiting:
    """A session in the queue: open, no agent."""

    session_id: int
    user_id: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class IdleSession:
    session_id: int
    user_id: int
    agent_id: int | None
    last_activity: datetime
    warned_at: datetime | None
    has_messages: bool
    created_at: datetime


class DeskStorage:
    """The desk's gateway to the database; every call is one short transaction through Storage.connect."""

    def __init__(self, storage: Storage, default_capacity: int) -> None:
        self.storage = storage
        self.default_capacity = default_capacity

    def now(self) -> datetime:
        return self.storage.now()

    # -- agents -----------------------------------------------------------------------------------

    def agents(self, user_ids: list[int] | None = None) -> list[DeskAgent]:
        """Every agent (or those of `user_ids`) with status, capacity and load (open sessions carried)."""
        a, s = agents_table.c, sessions_table.c
        query = select(a.user_id, a.display_name, a.status, a.capacity, a.last_assigned_at).order_by(a.user_id)
        if user_ids is not None:
            if not user_ids:
                return []
            query = query.where(a.user_id.in_(user_ids))
        loads = select(s.agent_id, func.count()).where(and_(s.status == "active", s.agent_id.is_not(None)))
        with self.storage.connect() as conn:
            rows = conn.execute(query).all()
            ids = [r.user_id for r in rows]
            counts = dict(conn.execute(loads.where(s.agent_id.in_(ids)).group_by(s.agent_id)).all()) if ids else {}
        return [DeskAgent(r.user_id, r.display_name, r.status,
                          self.default_capacity if r.capacity is None else r.capacity,
                          int(counts.get(r.user_id, 0)), r.last_assigned_at) for r in rows]

    def agent(self, user_id: int) -> DeskAgent | None:
        found = self.agents([user_id])
        return found[0] if found else None

    def set_status(self, user_id: int, status: str, only_from: tuple[str, ...] | None = None) -> bool:
        """Set the agent's status; with `only_from`, only when it is one of those now. True when it changed."""
        assert status in AGENT_STATUSES
        a = agents_table.c
        condition = and_(a.user_id == user_id, a.status != status)
        if only_from is not None:
            condition = and_(condition, a.status.in_(only_from))
        with self.storage.connect(write=True) as conn:
            return conn.execute(update(agents_table).where(condition).values(status=status)).rowcount > 0

    def set_capacity(self, user_id: int, capacity: int) -> bool:
        with self.storage.connect(write=True) as conn:
            result = conn.execute(
                update(agents_table).where(agents_table.c.user_id == user_id).values(capacity=capacity)
            )
            return result.rowcount > 0 or self._exists(conn, user_id)

    @staticmethod
    def _exists(conn: Connection, user_id: int) -> bool:
        return conn.execute(select(agents_table.c.user_id).where(agents_table.c.user_id == user_id)).first() is not None

    def agents_with_status(self, statuses: tuple[str, ...]) -> list[int]:
        a = agents_table.c
        with self.storage.connect() as conn:
            return [r[0] for r in conn.execute(select(a.user_id).where(a.status.in_(statuses))).all()]

    # -- the queue --------------------------------------------------------------------------------

    def queue(self, limit: int = 10_000) -> list[Waiting]:
        """Open sessions with no agent, oldest first (a session put back keeps its place: ahead of newer ones)."""
        s = sessions_table.c
        query = (select(s.id, s.user_id, s.created_at)
                 .where(and_(s.agent_id.is_(None), s.status == "active")).order_by(s.id).limit(limit))
        with self.storage.connect() as conn:
            return [Waiting(r.id, r.user_id, r.created_at) for r in conn.execute(query).all()]

    def queue_position(self, session_id: int) -> int | None:
        """The session's place in `queue()` (1 = next), or None when it is not waiting."""
        s = sessions_table.c
        waiting = and_(s.agent_id.is_(None), s.status == "active")
        query = select(func.count()).where(and_(waiting, s.id <= session_id))
        with self.storage.connect() as conn:
            mine = conn.execute(select(s.id).where(and_(waiting, s.id == session_id))).first()
            return int(conn.execute(query).scalar_one()) if mine is not None else None

    def previous_agent(self, user_id: int, before_session: int) -> int | None:
        """The agent of the customer's latest earlier session, if any."""
        s = sessions_table.c
        query = (select(s.agent_id).where(and_(s.user_id == user_id, s.id < before_session, s.agent_id.is_not(None)))
                 .order_by(s.id.desc()).limit(1))
        with self.storage.connect() as conn:
            return conn.execute(query).scalar()

    # -- assignment -------------------------------------------------------------------------------

    def _lock_agent(self, conn: Connection, agent_id: int, now: datetime) -> int | None:
        """Lock the agent's row for this transaction; its effective capacity, or None when not an agent."""
        a = agents_table.c
        # An UPDATE, not SELECT ... FOR UPDATE: the same row lock on MySQL/MariaDB, and on SQLite it takes
        # the database's write lock first, so the count below cannot be a stale snapshot there either.
        locked = conn.execute(update(agents_table).where(a.user_id == agent_id).values(last_assigned_at=now))
        if locked.rowcount == 0:
            return None
        capacity = conn.execute(select(a.capacity).where(a.user_id == agent_id)).scalar()
        return self.default_capacity if capacity is None else int(capacity)

    @staticmethod
    def _load(conn: Connection, agent_id: int) -> int:
        s = sessions_table.c
        return int(conn.execute(
            select(func.count()).select_from(sessions_table).where(and_(s.agent_id == agent_id, s.status == "active"))
        ).scalar_one())

    def assign(self, session_id: int, agent_id: int, actor_role: str = "agent") -> Outcome:
        """Give a waiting session to `agent_id` if the agent has room (atomic; see the module docstring)."""
        return self._retry(self._assign, session_id, agent_id, actor_role)

    def transfer(self, session_id: int, from_agent: int | None, to_agent: int) -> Outcome:
        """Move an open session from its agent (`from_agent`; None = whoever has it) to `to_agent`, atomically."""
        return self._retry(self._transfer, session_id, from_agent, to_agent)

    @staticmethod
    def _retry(func: Callable[..., Outcome], *args: Any) -> Outcome:
        """Run a transaction again when MySQL/MariaDB chose it as a deadlock victim (it was rolled back whole)."""
        for attempt in range(DEADLOCK_ATTEMPTS):
            try:
                return func(*args)
            except StorageError as exc:
                code = getattr(getattr(exc.__cause__, "orig", None), "args", (None,))[0]
                if code not in (1205, 1213) or attempt == DEADLOCK_ATTEMPTS - 1:
                    raise
                log.info("desk: transaction retried after MySQL error %s", code)
        raise AssertionError("unreachable")

    def _assign(self, session_id: int, agent_id: int, actor_role: str) -> Outcome:
        s = sessions_table.c
        with self._transaction() as conn:
            now = self.now()
            capacity = self._lock_agent(conn, agent_id, now)
            if capacity is None:
                return self._refuse(conn, Outcome.NO_AGENT)
            if self._load(conn, agent_id) >= capacity:
                return self._refuse(conn, self._why_not(conn, session_id, agent_id) or Outcome.OVER_CAPACITY)
            taken = conn.execute(
                update(sessions_table)
                .where(and_(s.id == session_id, s.agent_id.is_(None), s.status == "active"))
                .values(agent_id=agent_id, assigned_at=func.coalesce(s.assigned_at, now), idle_warned_at=None)
            ).rowcount
            if not taken:
                return self._refuse(conn, self._why_not(conn, session_id, agent_id) or Outcome.NOT_WAITING)
            Storage._record_event(conn, session_id, "assigned", agent_id, actor_role, now)
        return Outcome.ASSIGNED

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """One transaction; READ COMMITTED on MySQL/MariaDB, so the load counted after the agent's row lock
        is what the previous holder of that lock committed, whatever the server's default isolation."""
        with self.storage.connect() as conn:
            if conn.dialect.name in ("mysql", "mariadb"):
                conn = conn.execution_options(isolation_level="READ COMMITTED")
            with conn.begin():
                yield conn

    @staticmethod
    def _refuse(conn: Connection, outcome: Outcome) -> Outcome:
        """Roll the transaction back (the agent row's touch included); the last statement of its block."""
        transaction = conn.get_transaction()
        if transaction is not None:
            transaction.rollback()
        return outcome

    @staticmethod
    def _why_not(conn: Connection, session_id: int, agent_id: int) -> Outcome | None:
        """Why a session cannot be taken (None when it still could): gone/closed, or another agent's."""
        s = sessions_table.c
        row = conn.execute(select(s.agent_id, s.status).where(s.id == session_id)).first()
        if row is None or row.status != "active":
            return Outcome.NOT_WAITING
        if row.agent_id is not None:
            return Outcome.ASSIGNED if row.agent_id == agent_id else Outcome.ALREADY_ASSIGNED
        return None

    def _transfer(self, session_id: int, from_agent: int | None, to_agent: int) -> Outcome:
        s = sessions_table.c
        with self._transaction() as conn:
            now = self.now()
            capacity = self._lock_agent(conn, to_agent, now)
            if capacity is None:
                return self._refuse(conn, Outcome.NO_AGENT)
            if self._load(conn, to_agent) >= capacity:
                return self._refuse(conn, Outcome.OVER_CAPACITY)
            current = s.agent_id.is_not(None) if from_agent is None else s.agent_id == from_agent
            moved = conn.execute(
                update(sessions_table)
                .where(and_(s.id == session_id, current, s.agent_id != to_agent, s.status == "active"))
                .values(agent_id=to_agent, assigned_at=func.coalesce(s.assigned_at, now), idle_warned_at=None)
            ).rowcount
            if not moved:
                return self._refuse(conn, Outcome.NOT_WAITING)
            Storage._record_event(conn, session_id, "transferred", from_agent, "agent", now)
            Storage._record_event(conn, session_id, "assigned", to_agent, "agent", now)
        return Outcome.ASSIGNED

    def requeue_unanswered(self, agent_id: int) -> list[int]:
        """Put the agent's open sessions with no agent reply yet back in the queue; their ids."""
        s = sessions_table.c
        mine = and_(s.agent_id == agent_id, s.status == "active", s.first_response_at.is_(None))
        with self.storage.connect(write=True) as conn:
            ids = [r[0] for r in conn.execute(select(s.id).where(mine)).all()]
            if not ids:
                return []
            conn.execute(update(sessions_table).where(and_(mine, s.id.in_(ids))).values(agent_id=None))
            now = self.now()
            for session_id in ids:
                Storage._record_event(conn, session_id, "requeued", agent_id, "system", now)
        return ids

    def session(self, session_id: int) -> SessionRecord | None:
        return self.storage.get_session(session_id)

    def assigned_at(self, session_id: int) -> datetime | None:
        with self.storage.connect() as conn:
            return conn.execute(select(sessions_table.c.assigned_at).where(sessions_table.c.id == session_id)).scalar()

    # -- idle sessions ----------------------------------------------------------------------------

    def idle_sessions(self, quiet_since: datetime) -> list[IdleSession]:
        """Open sessions with no message (and not opened or assigned) since `quiet_since`."""
        s, m = sessions_table.c, messages_table.c
        last_message = (select(m.created_at).where(m.session_id == s.id).order_by(m.id.desc()).limit(1)
                        .correlate(sessions_table).scalar_subquery())
        query = select(s.id, s.user_id, s.agent_id, s.created_at, s.assigned_at, s.idle_warned_at,
                       last_message.label("last_message_at")).where(
            and_(s.status == "active", s.created_at < quiet_since))
        out = []
        with self.storage.connect() as conn:
            for r in conn.execute(query).all():
                last = max(t for t in (r.created_at, r.assigned_at, r.last_message_at) if t is not None)
                if last < quiet_since:
                    out.append(IdleSession(r.id, r.user_id, r.agent_id, last, r.idle_warned_at,
                                           r.last_message_at is not None, r.created_at))
        return out

    def mark_warned(self, session_id: int, last_activity: datetime) -> bool:
        """Note the idle warning once per idle stretch; True when this call is the one that warns."""
        s = sessions_table.c
        not_yet = (s.idle_warned_at.is_(None)) | (s.idle_warned_at < last_activity)
        with self.storage.connect(write=True) as conn:
            return conn.execute(
                update(sessions_table).where(and_(s.id == session_id, s.status == "active", not_yet))
                .values(idle_warned_at=self.now())
            ).rowcount > 0

    # -- load samples -----------------------------------------------------------------------------

    def sample_load(self, at: datetime) -> int:
        """One row per agent for the minute `at` (idempotent: a second sampler of the same minute adds nothing)."""
        rows = [{"sampled_at": at, "agent_id": a.user_id, "status": a.status, "load": a.load, "capacity": a.capacity}
                for a in self.agents()]
        if not rows:
            return 0
        t = agent_load_table
        with self.storage.connect(write=True) as conn:
            have = {r[0] for r in conn.execute(select(t.c.agent_id).where(t.c.sampled_at == at)).all()}
            fresh = [r for r in rows if r["agent_id"] not in have]
            if fresh:
                conn.execute(insert(t), fresh)
        return len(fresh)
