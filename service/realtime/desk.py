"""The agent desk over the WebSocket: set_status, claim_session, transfer_session (see service/desk/).

Also the desk's `Notifier`: its frames leave through the fan-out like every other event, addressed to a
session's room or to a user's connections on every worker and host.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..auth import parse_id
from ..errors import Problem, Refused
from .fanout import Event, Fanout
from .handlers import own_greenlet
from .protocol import ConnectionState, Reply, encode, handler, require_identity

if TYPE_CHECKING:
    from ..auth import Identity
    from .hub import ChatHub

DESK_KICK = "desk_kick"  # an event with no frame: wakes the desk's leader wherever it runs


class FanoutNotifier:
    """The desk's way out: frames as fan-out events."""

    def __init__(self, fanout: Fanout, close_session: Any) -> None:
        self.fanout = fanout
        self._close_session = close_session  # ChatHub.publish_session_closed

    def to_user(self, user_id: int, frame: dict[str, Any], session_id: int = 0, room_copy: bool = False) -> None:
        self.fanout.publish(Event(session_id=session_id, text=encode(frame), kind=frame["type"], user_id=user_id,
                                  room_copy=room_copy))

    def to_session(self, session_id: int, frame: dict[str, Any]) -> None:
        self.fanout.publish(Event(session_id=session_id, text=encode(frame), kind=frame["type"]))

    def session_closed(self, session_id: int, reason: str) -> None:
        self._close_session(session_id, reason)

    def kick(self) -> None:
        self.fanout.publish(Event(session_id=0, text="", kind=DESK_KICK))

    def local_users(self) -> list[tuple[int, bool]]:
        registry = self.fanout.registry
        out = []
        for user_id in registry.users():
            conns = registry.of_user(user_id)
            out.append((user_id, any(c.identity is not None and c.identity.is_agent for c in conns)))
        return out


def require_agent(conn: ConnectionState) -> Identity:
    identity = require_identity(conn)
    if not identity.is_agent or identity.backend:
        raise Refused(Problem.AGENTS_ONLY)
    return identity


@handler("set_status")
@own_greenlet
def set_status(ctx: ChatHub, conn: ConnectionState, message: dict[str, Any]) -> list[Reply]:
    """The agent's status; every connection of the agent (this one included) gets agent_status."""
    identity = require_agent(conn)
    ctx.desk.set_status(identity.user_id, message.get("status"), connected_here=True)
    return []


@handler("claim_session")
@own_greenlet
def claim_session(ctx: ChatHub, conn: ConnectionState, message: dict[str, Any]) -> list[Reply]:
    """Take a waiting session: session_assigned to the agent's connections and the session's room."""
    identity = require_agent(conn)
    session_id = parse_id(message.get("session_id"), Problem.MISSING_SESSION_ID, Problem.INVALID_SESSION_ID)
    ctx.forget_session(session_id)  # the cached agent_id may be stale: a claim reads the session as it is
    session = ctx.authorize(identity, session_id)
    if not ctx.desk.claim(identity.user_id, session):  # already this agent's: only the caller hears it again
        return [{"type": "session_assigned", "session_id": session_id, "agent_id": identity.user_id}]
    ctx.forget_session(session_id)
    return []


@handler("transfer_session")
@own_greenlet
def transfer_session(ctx: ChatHub, conn: ConnectionState, message: dict[str, Any]) -> list[Reply]:
    """Hand the session to another online agent with room: session_transferred to the room and both agents."""
    identity = require_agent(conn)
    session_id = parse_id(message.get("session_id"), Problem.MISSING_SESSION_ID, Problem.INVALID_SESSION_ID)
    ctx.forget_session(session_id)
    session = ctx.authorize(identity, session_id)
    ctx.desk.transfer(identity.user_id, session, message.get("agent_id"))
    ctx.forget_session(session_id)
    return []
