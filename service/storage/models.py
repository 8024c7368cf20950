"""Tables of the chat service. `sql/schema.sql` is the same schema as MySQL DDL, for DBAs and reporting.

Times are naive DATETIMEs in APP_TIMEZONE, as the legacy PHP server wrote them with `date()`: the reporting
team's queries read them as local time with no conversion.
"""

from __future__ import annotations

from datetime import datetime

from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import BigInteger, DateTime, ForeignKey, Index, Integer, SmallInteger, String, Text, UniqueConstraint
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments an INTEGER PRIMARY KEY; MySQL gets BIGINT.
Id = BigInteger().with_variant(Integer(), "sqlite")
LongText = Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")
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

    __table_args__ = (
        UniqueConstraint("user_id", "open_flag", name="uq_chat_sessions_open_per_user"),
        Index("ix_chat_sessions_status_id", "status", "id"),
        Index("ix_chat_sessions_agent_status", "agent_id", "status"),
        Index("ix_chat_sessions_created_at", "created_at"),
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
    client_msg_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)

    __table_args__ = (
        Index("ix_chat_messages_session_id", "session_id", "id"),
        Index("ix_chat_messages_created_at", "created_at"),
        Index("ix_chat_messages_sender_created", "sender_id", "created_at"),
        UniqueConstraint("session_id", "sender_id", "client_msg_id", name="uq_chat_messages_client_msg"),
        MYSQL_TABLE,
    )


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


sessions_table = ChatSession.__table__
messages_table = ChatMessage.__table__
agents_table = Agent.__table__
read_states_table = ChatReadState.__table__
