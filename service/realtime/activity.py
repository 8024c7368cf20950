"""What users do in a session besides sending: read receipts (stored) and typing notices (never stored).

Both go to the session through the fan-out, so they cross workers like messages, and both spend the
connection's `signals` bucket, not its send bucket: a chatty typing indicator never costs a message.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import gevent

from ..auth import id_is_missing, parse_id
from ..errors import Problem, Refused
from ..storage import StorageError
from .fanout import Event, Fanout
from .protocol import ConnectionState, Reply, encode, handler, require_identity

if TYPE_CHECKING:
    from .hub import ChatHub

log = logging.getLogger(__name__)

TYPING_STATES = ("start", "stop")


def take_signal_token(conn: ConnectionState) -> None:
    if not conn.signals.take():
        raise Refused(Problem.RATE_LIMITED)


@handler("read")
def read(ctx: ChatHub, conn: ConnectionState, message: dict[str, Any]) -> list[Reply]:
    """Move the user's read pointer forward and tell the session (the sender included, exactly once).

    A pointer that is already at or past `message_id` does not move; then only the sender hears, with the
    pointer as it stands, and nobody else gets anything.
    """
    identity = require_identity(conn)
    raw_session, raw_message = message.get("session_id"), message.get("message_id")
    if id_is_missing(raw_session):
        raise Refused(Problem.MISSING_SESSION_ID)
    if id_is_missing(raw_message):
        raise Refused(Problem.MISSING_MESSAGE_ID)
    session_id = parse_id(raw_session, Problem.MISSING_SESSION_ID, Problem.INVALID_SESSION_ID)
    message_id = parse_id(raw_message, Problem.MISSING_MESSAGE_ID, Problem.INVALID_MESSAGE_ID)
    take_signal_token(conn)
    ctx.authorize(identity, session_id, need_open=False)
    try:
        if not ctx.storage.message_in_session(session_id, message_id):
            raise Refused(Problem.MESSAGE_NOT_FOUND)
        pointer, moved = ctx.storage.mark_read(session_id, identity.user_id, message_id)
    except StorageError:
        raise Refused(Problem.STORAGE_DOWN) from None
    frame = {"type": "message_read", "session_id": session_id, "user_id": identity.user_id, "message_id": pointer}
    if not moved:
        return [frame]
    ctx.fanout.publish(
        Event(session_id=session_id, text=encode(frame), kind="message_read", include=conn.connection_id)
    )
    return []


@handler("typing")
def typing(ctx: ChatHub, conn: ConnectionState, message: dict[str, Any]) -> list[Reply]:
    """Relay a typing start/stop to the session's other connections. No reply when it worked (it is cheap)."""
    identity = require_identity(conn)
    session_id = parse_id(message.get("session_id"), Problem.MISSING_SESSION_ID, Problem.INVALID_SESSION_ID)
    state = message.get("state")
    if state not in TYPING_STATES:
        raise Refused(Problem.INVALID_STATE)
    take_signal_token(conn)
    ctx.authorize(identity, session_id)
    if state == "start":
        ctx.typing.start(conn.connection_id, identity.user_id, session_id)
    else:
        ctx.typing.stop(conn.connection_id, session_id)
    return []


class TypingNotices:
    """Who is typing where, on this worker, with the timer that stops a "start" nobody stopped.

    Keyed by (connection, session): a connection may type in a session it has not joined, as it may send.
    A repeated "start" is relayed again (late joiners learn of it) and restarts the timer; "stop", a sent
    message, the timer and the connection closing all end it with one relayed "stop".
    """

    def __init__(self, fanout: Fanout, timeout: float) -> None:
        self.fanout = fanout
        self.timeout = timeout
        self._typing: dict[tuple[str, int], tuple[int, gevent.Greenlet]] = {}

    def start(self, connection_id: str, user_id: int, session_id: int) -> None:
        key = (connection_id, session_id)
        previous = self._typing.pop(key, None)
        if previous is not None:
            previous[1].kill(block=False)
        self._typing[key] = (user_id, gevent.spawn_later(self.timeout, self._expire, key))
        self._publish(connection_id, user_id, session_id, "start")

    def stop(self, connection_id: str, session_id: int) -> bool:
        """End a typing notice; False (and nothing relayed) when the connection was not typing there."""
        entry = self._typing.pop((connection_id, session_id), None)
        if entry is None:
            return False
        entry[1].kill(block=False)
        self._publish(connection_id, entry[0], session_id, "stop")
        return True

    def connection_gone(self, connection_id: str) -> None:
        for key in [k for k in self._typing if k[0] == connection_id]:
            self.stop(*key)

    def typing_count(self) -> int:
        return len(self._typing)

    def _expire(self, key: tuple[str, int]) -> None:
        entry = self._typing.get(key)
        if entry is None or entry[1] is not gevent.getcurrent():
            return
        del self._typing[key]
        log.debug("typing timed out", extra={"connection_id": key[0], "session_id": key[1]})
        self._publish(key[0], entry[0], key[1], "stop")

    def _publish(self, connection_id: str, user_id: int, session_id: int, state: str) -> None:
        frame = {"type": "typing", "session_id": session_id, "user_id": user_id, "state": state}
        self.fanout.publish(Event(session_id=session_id, text=encode(frame), kind="typing", exclude=connection_id))
