"""The legacy message types, one handler each (see shared/spec/protocol.md for every decision here).

Checks run in the spec's precedence: not authenticated, missing field, invalid value, rate limit, session
not found, not allowed, session closed. State changes only after every check has passed.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

import gevent

from ..errors import Problem, Refused
from ..fields import client_message_id, id_is_missing, is_blank, message_content, parse_id
from .protocol import ConnectionState, Handler, Reply, encode, handler, require_identity, take_token
from .recovery import join_with_replay, replay_after
from .websocket import CLOSE_POLICY

if TYPE_CHECKING:
    from .hub import ChatHub

log = logging.getLogger(__name__)


def _outcome(func: Handler, *args: Any) -> tuple[bool, Any]:
    try:
        return True, func(*args)
    except BaseException as exc:  # handed to the caller's greenlet, which raises it
        return False, exc


def own_greenlet(func: Handler) -> Handler:
    """Run the handler in a short-lived greenlet, the connection's waiting for it.

    A greenlet keeps every page of Python stack it has touched for as long as it lives, and a connection's
    lives as long as its socket. The database calls under these handlers (once per connection or session,
    not per message) run deep: on the connection's greenlet they would leave each idle connection holding
    a few KB more. Replies, exceptions and order are the same either way.
    """

    @functools.wraps(func)
    def run(ctx: ChatHub, conn: ConnectionState, message: dict[str, Any]) -> list[Reply]:
        ok, value = gevent.spawn(_outcome, func, ctx, conn, message).get()
        if ok:
            return value
        raise value

    return run


@handler("ping")
def ping(ctx: ChatHub, conn: ConnectionState, message: dict[str, Any]) -> list[Reply]:
    return [{"type": "pong"}]


@handler("auth")
@own_greenlet
def auth(ctx: ChatHub, conn: ConnectionState, message: dict[str, Any]) -> list[Reply]:
    """Bind the connection to a user; a second auth re-binds it and leaves its session (no left_session)."""
    identity = ctx.auth.websocket_identity(message)
    ctx.registry.set_identity(conn, identity)
    log.info("authenticated", extra={"connection_id": conn.connection_id, "user_id": identity.user_id})
    return [{"type": "auth_success", "user_id": identity.user_id}]


@handler("join_session")
@own_greenlet
def join_session(ctx: ChatHub, conn: ConnectionState, message: dict[str, Any]) -> list[Reply]:
    """Join a session's room; with `last_message_id`, replay what the client missed first (recovery.py)."""
    identity = require_identity(conn)
    session_id = parse_id(message.get("session_id"), Problem.MISSING_SESSION_ID, Problem.INVALID_SESSION_ID)
    after_id = replay_after(message.get("last_message_id"))
    session = ctx.authorize(identity, session_id)
    position = ctx.desk.position_frame(identity.user_id, session) if ctx.desk is not None else None
    if after_id is not None:
        ctx.claim_for_agent(identity, session)
        replies = join_with_replay(ctx, conn, session, after_id)
        if position is not None:
            conn.send_text(encode(position))  # after what the replay queued
        return replies
    # The join returns once this worker hears the session (its subscription is confirmed): events that
    # arrive meanwhile wait, so that `joined_session` comes first and nothing stored after it is missed.
    conn.hold_events()
    try:
        ctx.registry.join(conn, session_id)
        ctx.claim_for_agent(identity, session)
    finally:
        held, overflow = conn.release_events()  # (at most a round trip to Redis: far below the bound)
    if overflow:  # events were dropped while waiting: a gap the client must not mistake for none
        conn.close(CLOSE_POLICY, "too slow")
    log.info("joined", extra={"connection_id": conn.connection_id, "user_id": identity.user_id,
                              "session_id": session_id})
    reply = {"type": "joined_session", "session_id": session_id}
    if not held:
        return [reply] if position is None else [reply, position]
    conn.send_text(encode(reply))
    for text, message_id in held:
        conn.send_event(text, message_id)
    if position is not None:
        conn.send_text(encode(position))
    return []


@handler("leave_session")
def leave_session(ctx: ChatHub, conn: ConnectionState, message: dict[str, Any]) -> list[Reply]:
    require_identity(conn)
    session_id = ctx.registry.leave(conn)
    if session_id is None:
        raise Refused(Problem.NOT_IN_SESSION)
    return [{"type": "left_session", "session_id": session_id}]


@handler("send_message")
def send_message(ctx: ChatHub, conn: ConnectionState, message: dict[str, Any]) -> list[Reply]:
    """Store, then broadcast `new_message` to the room and to the sender (joined or not), exactly once."""
    identity = require_identity(conn)
    raw_session, raw_content = message.get("session_id"), message.get("content")
    if is_blank(raw_content) or id_is_missing(raw_session):
        raise Refused(Problem.MISSING_SESSION_OR_CONTENT)
    session_id = parse_id(raw_session, Problem.MISSING_SESSION_OR_CONTENT, Problem.INVALID_SESSION_ID)
    content = message_content(raw_content, ctx.settings.max_message_length)
    client_msg_id = client_message_id(message.get("client_msg_id"))
    take_token(conn)
    session = ctx.authorize_to_post(identity, session_id)
    stored, duplicate = ctx.post_message(identity, session, content, conn.connection_id, client_msg_id)
    if duplicate:
        # Only the sender hears of a repeat, with the original message.
        return [{"type": "new_message", "session_id": session_id, "message": stored.to_wire(), "duplicate": True}]
    ctx.typing.stop(conn.connection_id, session_id)  # a sent message ends the sender's typing notice
    return []
