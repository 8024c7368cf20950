"""Tables of the chat service. `sql/schema.sql` is the same schema as MySQL DDL, for DBAs and reporting.

Times are naive DATETIMEs in APP_TIMEZONE, as the legacy PHP server wrote them with `date()`: the reporting
team's queries read them as local time with no conversion.
"""

from __future__ import annotations

from datetime import date, datetime

from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import (
    BigInteger,
    Computed,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.schema import ForeignKeyConstraint

from . import naming

# SQLite only auto-increments an INTEGER PRIMARY KEY; MySQL gets BIGINT.
Id = BigInteger().with_variant(Integer(), "sqlite")
LongText = Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")
# The local calendar day of created_at, computed by the database (never written by the service): the reporting
# views group and filter by it, and an index on a plain column is what makes "one day" a range scan.
CREATED_DAY = "DATE(created_at)"
# How a session ended (chat_sessions.close_reason): who asked, or the idle sweeper.
CLOSE_REASONS = ("customer", "agent", "backend", "idle")


class ExactString(TypeDecorator):
    """Text compared byte for byte on every backend. MySQL/MariaDB's utf8mb4_unicode_ci (and even utf8mb4_bin,
    which pads trailing spaces) would make "Key-AbC", "key-abc", "key-abc " and "kéy-abc" one key: the column
    gets the NO PAD binary collation of each server. SQLite compares TEXT exactly already."""

    impl = String
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.VARCHAR(self.impl.length, charset="utf8mb4",
                                                         collation=exact_collation(dialect)))
        return dialect.type_descriptor(String(self.impl.length))


def exact_collation(dialect) -> str:
    """MariaDB's NO PAD binary utf8mb4 collation, or MySQL 8's (MariaDB 10.11 does not know the latter)."""
    return "utf8mb4_nopad_bin" if getattr(dialect, "is_mariadb", False) else "utf8mb4_0900_bin"


MYSQL_TABLE = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_unicode_ci"}


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)


class Agent(db.Model):
    """A customer-service agent: any user listed here may join and answer every session."""

    __tablename__ = "agents"
    __table_args__ = MYSQL_TABLE

    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    display_name: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    # The agent desk (revision 0006): one status for the whole deployment, sessions carried at most (NULL =
    # AGENT_CAPACITY), and when the agent was last given a session (routing prefers the longest idle).
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="offline", server_default="offline")
    capacity: Mapped[int | None] = mapped_column(Integer)
    last_assigned_at: Mapped[datetime | None] = mapped_column(DateTime)


class ChatSession(db.Model):
    """One conversation between a customer and the agents who answer it."""

    __tablename__ = "chat_sessions"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    agent_id: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="active")
    # 1 while active, NULL once closed: the unique key below then allows one open session per customer,
    # across every worker and host, without a lock.
    open_flag: Mapped[int | None] = mapped_column(SmallInteger, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    closed_at: Mapped[datetime | None] = mapped_column(DateTime)
    # Reporting (revision 0002), written in the transaction of the change they record:
    # the first agent message's time (set by the message writer), who closed the session and why.
    first_response_at: Mapped[datetime | None] = mapped_column(DateTime)
    closed_by: Mapped[int | None] = mapped_column(BigInteger)
    close_reason: Mapped[str | None] = mapped_column(String(16))
    created_day: Mapped[date | None] = mapped_column(Date, Computed(CREATED_DAY, persisted=False))
    # The agent desk (revision 0006): the first assignment (time in queue) and the idle sweeper's warning.
    assigned_at: Mapped[datetime | None] = mapped_column(DateTime)
    idle_warned_at: Mapped[datetime | None] = mapped_column(DateTime)

    __table_args__ = (
        UniqueConstraint("user_id", "open_flag", name="uq_chat_sessions_open_per_user"),
        Index("ix_chat_sessions_status_id", "status", "id"),
        Index("ix_chat_sessions_agent_status", "agent_id", "status"),
        Index("ix_chat_sessions_created_at", "created_at"),
        Index("ix_chat_sessions_day_agent", "created_day", "agent_id"),
        MYSQL_TABLE,
    )


class ChatMessage(db.Model):
    """One stored message; `id` is what clients see as message.id."""

    __tablename__ = "chat_messages"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    session_id: Mapped[int] = mapped_column(
        Id, ForeignKey("chat_sessions.id", name="fk_chat_messages_session"), nullable=False
    )
    sender_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    sender_role: Mapped[str] = mapped_column(String(16), nullable=False)
    content: Mapped[str] = mapped_column(LongText, nullable=False)
    # Idempotency key chosen by the client; unique per sender and session, NULLs never collide.
    # Byte-exact (revision 0005): see ExactString.
    client_msg_id: Mapped[str | None] = mapped_column(ExactString(64))
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)

    __table_args__ = (
        Index("ix_chat_messages_session_id", "session_id", "id"),
        Index("ix_chat_messages_created_at", "created_at"),
        Index("ix_chat_messages_sender_created", "sender_id", "created_at"),
        UniqueConstraint("session_id", "sender_id", "client_msg_id", name="uq_chat_messages_client_msg"),
        MYSQL_TABLE,
    )


class ChatSessionEvent(db.Model):
    """What happened to a session and who did it, appended in the transaction of the change (reporting).

    `event` is one of EVENTS; `actor_id` is NULL for the trusted backend and the idle sweeper.
    """

    __tablename__ = "chat_session_events"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    session_id: Mapped[int] = mapped_column(
        Id, ForeignKey("chat_sessions.id", name="fk_chat_session_events_session"), nullable=False
    )
    event: Mapped[str] = mapped_column(String(16), nullable=False)
    actor_id: Mapped[int | None] = mapped_column(BigInteger)
    actor_role: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)

    __table_args__ = (
        Index("ix_chat_session_events_session", "session_id", "id"),
        Index("ix_chat_session_events_event_created", "event", "created_at"),
        Index("ix_chat_session_events_actor_created", "actor_id", "created_at"),
        MYSQL_TABLE,
    )


EVENTS = ("opened", "assigned", "closed", "transferred", "requeued")
AGENT_STATUSES = ("online", "away", "offline")


class ChatMessageHourly(db.Model):
    """Messages stored per local hour, role and agent: the message reports read this, never chat_messages.

    The message writer adds each batch's counts in the batch's own transaction, so the counts always equal
    the messages ever stored (deleting messages later does not change them: they are history). Agents' rows
    carry their user id; every other sender is counted under sender_id 0. Each writer counts in a shard of its
    own, so one hour, role and agent may have several rows: readers sum them.
    """

    __tablename__ = "chat_message_hourly"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    hour: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    sender_role: Mapped[str] = mapped_column(String(16), primary_key=True)
    sender_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    # The message writer's own rows (revision 0004): writers never wait on each other's counter rows.
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False, server_default="0")
    messages: Mapped[int] = mapped_column(Integer, nullable=False)

    __table_args__ = (MYSQL_TABLE,)


class ChatReadState(db.Model):
    """How far one user has read one session: the id of the newest message they have seen.

    Only ever moves forward (the queries enforce it); unread = messages after it not sent by the user.
    """

    __tablename__ = "chat_read_states"

    session_id: Mapped[int] = mapped_column(
        Id, ForeignKey("chat_sessions.id", name="fk_chat_read_states_session"), primary_key=True, autoincrement=False
    )
    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    last_read_message_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)

    __table_args__ = MYSQL_TABLE


class ChatAgentLoad(db.Model):
    """One sample per agent and minute, written by the desk's leader: per-agent load over time (reports)."""

    __tablename__ = "chat_agent_load"

    sampled_at: Mapped[datetime] = mapped_column(DateTime, primary_key=True)
    agent_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    load: Mapped[int] = mapped_column(Integer, nullable=False)
    capacity: Mapped[int] = mapped_column(Integer, nullable=False)

    __table_args__ = (Index("ix_chat_agent_load_agent_sampled", "agent_id", "sampled_at"), MYSQL_TABLE)


sessions_table = ChatSession.__table__
messages_table = ChatMessage.__table__
agents_table = Agent.__table__
events_table = ChatSessionEvent.__table__
message_hourly_table = ChatMessageHourly.__table__
read_states_table = ChatReadState.__table__
agent_load_table = ChatAgentLoad.__table__


BASE_NAMES = {table: table.name for table in db.metadata.tables.values()}
BASE_CONSTRAINT_NAMES = {
    constraint: constraint.name
    for table in db.metadata.tables.values()
    for constraint in table.constraints
    if isinstance(constraint, ForeignKeyConstraint)
}


def apply_table_prefix(prefix: str) -> None:
    """Rename our tables (and their foreign keys, whose names InnoDB wants unique in a whole database) to
    TABLE_PREFIX + the base name. Table names are part of SQLAlchemy's statement cache key, so statements
    compiled under another prefix are never reused; the metadata keeps its keys (the base names)."""
    naming.set_prefix(prefix)
    for table, base in BASE_NAMES.items():
        table.name = table.fullname = naming.name(base)
    for constraint, base in BASE_CONSTRAINT_NAMES.items():
        constraint.name = naming.name(base)
