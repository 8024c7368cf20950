"""Plain, immutable rows handed between storage and the rest of the service (never ORM instances)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

WIRE_TIME = "%Y-%m-%d %H:%M:%S"


def wire_time(value: datetime | None) -> str | None:
    """The legacy `date('Y-m-d H:i:s')` format."""
    return value.strftime(WIRE_TIME) if value is not None else None


@dataclass(frozen=True, slots=True)
class SessionRecord:
    id: int
    user_id: int
    agent_id: int | None
    status: str
    created_at: datetime
    closed_at: datetime | None

    @property
    def is_open(self) -> bool:
        return self.status == "active"

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "user_id": self.user_id,
            "agent_id": self.agent_id,
            "status": self.status,
            "created_at": wire_time(self.created_at),
            "closed_at": wire_time(self.closed_at),
        }


@dataclass(frozen=True, slots=True)
class MessageRecord:
    id: int
    session_id: int
    sender_id: int
    sender_role: str
    content: str
    created_at: datetime
    client_msg_id: str | None = None

    def to_wire(self) -> dict[str, Any]:
        """Exactly the legacy `message` object; `client_msg_id` only when the client chose one."""
        wire: dict[str, Any] = {
            "id": self.id,
            "session_id": self.session_id,
            "sender_id": self.sender_id,
            "content": self.content,
            "created_at": wire_time(self.created_at),
        }
        if self.client_msg_id is not None:
            wire["client_msg_id"] = self.client_msg_id
        return wire


@dataclass(frozen=True, slots=True)
class AgentRecord:
    user_id: int
    display_name: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message accepted for storage; the writer gives it an id and returns a MessageRecord."""

    session_id: int
    sender_id: int
    sender_role: str
    content: str
    created_at: datetime
    client_msg_id: str | None = None

    def as_row(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "sender_id": self.sender_id,
            "sender_role": self.sender_role,
            "content": self.content,
            "client_msg_id": self.client_msg_id,
            "created_at": self.created_at,
        }

    def stored(self, message_id: int) -> MessageRecord:
        return MessageRecord(
            id=message_id,
            session_id=self.session_id,
            sender_id=self.sender_id,
            sender_role=self.sender_role,
            content=self.content,
            created_at=self.created_at,
            client_msg_id=self.client_msg_id,
        )
