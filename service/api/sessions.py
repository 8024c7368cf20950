"""HTTP API for sessions and their messages (for the legacy PHP backend, agent consoles, bots)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify, request

from ..auth import Identity
from ..errors import Problem, Refused
from ..fields import (
    client_message_id,
    id_is_missing,
    is_blank,
    message_content,
    parse_id,
    query_int,
    require_encodable,
)
from ..realtime.hub import ChatHub
from ..storage import StorageError

bp = Blueprint("sessions", __name__)

STATUSES = ("active", "closed", "all")


def hub() -> ChatHub:
    return current_app.extensions["chat_hub"]


def caller() -> Identity:
    try:
        return hub().auth.http_identity(request.headers)
    except StorageError:
        raise Refused(Problem.STORAGE_DOWN) from None


def json_body() -> dict[str, Any]:
    # force: a body's Content-Type was checked before the endpoint ran (limits.check_body); none is no body.
    body = request.get_json(force=True, silent=True)
    if not isinstance(body, dict):
        raise Refused(Problem.BAD_FORMAT)
    require_encodable(body, request.get_data(cache=True))
    return body


def int_arg(name: str, default: int, lo: int, hi: int) -> int:
    return query_int(request.args.get(name), default, lo, hi)


def session_id_of(raw: Any) -> int:
    return parse_id(raw, Problem.MISSING_SESSION_ID, Problem.INVALID_SESSION_ID)


def storage_call(func, *args, **kwargs):
    try:
        return func(*args, **kwargs)
    except StorageError:
        raise Refused(Problem.STORAGE_DOWN) from None


@bp.post("/sessions")
def open_session():
    """The customer's open session (200), or a new one (201)."""
    identity = caller()
    body = request.get_json(force=True, silent=True)
    if body is None and not request.get_data():
        body = {}
    if not isinstance(body, dict):
        raise Refused(Problem.BAD_FORMAT)
    raw_user = body.get("user_id")
    if id_is_missing(raw_user) and not identity.backend:
        raw_user = identity.user_id
    user_id = parse_id(raw_user, Problem.MISSING_USER_ID, Problem.INVALID_USER_ID)
    if not (identity.is_agent or identity.user_id == user_id):
        raise Refused(Problem.FORBIDDEN)
    session, created = storage_call(hub().storage.open_session, user_id)
    if created and hub().desk is not None:
        hub().desk.session_opened(session)
    return jsonify(session.to_wire()), 201 if created else 200


@bp.get("/sessions")
def list_sessions():
    identity = caller()
    status = request.args.get("status", "active")
    if status not in STATUSES:
        raise Refused(Problem.INVALID_STATE)
    limit = int_arg("limit", 100, 1, 1000)
    before_id = int_arg("before_id", 0, 0, 2**63 - 1) or None
    only_user = None if identity.is_agent else identity.user_id
    sessions = storage_call(hub().storage.list_sessions, status, only_user, limit, before_id)
    if identity.backend:  # the trusted backend reads nothing: it has no read pointer
        return jsonify({"sessions": [s.to_wire() for s in sessions]})
    unread = storage_call(hub().storage.unread_counts, identity.user_id, [s.id for s in sessions])
    return jsonify({"sessions": [{**s.to_wire(), "unread_count": unread.get(s.id, 0)} for s in sessions]})


@bp.get("/sessions/<raw_id>")
def get_session(raw_id: str):
    identity = caller()
    session = hub().authorize(identity, session_id_of(raw_id), need_open=False)
    return jsonify(storage_call(hub().storage.get_session, session.id).to_wire())


@bp.get("/sessions/<raw_id>/messages")
def list_messages(raw_id: str):
    identity = caller()
    session = hub().authorize(identity, session_id_of(raw_id), need_open=False)
    after_id = int_arg("after_id", 0, 0, 2**63 - 1)
    limit = int_arg("limit", 50, 1, 500)
    before_id = int_arg("before_id", 0, 1, 2**63 - 1) if "before_id" in request.args else None
    if before_id is not None:  # scrolling back: the newest `limit` before the cursor, still oldest first
        messages = storage_call(hub().storage.list_messages_before, session.id, before_id, after_id, limit)
    else:
        messages = storage_call(hub().storage.list_messages, session.id, after_id, limit)
    return jsonify({"messages": [m.to_wire() for m in messages]})


@bp.get("/sessions/<raw_id>/presence")
def session_presence(raw_id: str):
    """Who is joined to the session right now, across every worker and host (same access as the session)."""
    identity = caller()
    session = hub().authorize(identity, session_id_of(raw_id), need_open=False)
    return jsonify(hub().presence(session.id))


@bp.post("/sessions/<raw_id>/messages")
def post_message(raw_id: str):
    """Store and broadcast like `send_message`; the trusted backend names the sender in `sender_id`."""
    identity = poster = caller()
    body = json_body()
    if identity.backend:
        sender_id = parse_id(body.get("sender_id"), Problem.MISSING_USER_ID, Problem.INVALID_USER_ID)
        identity = Identity(user_id=sender_id, is_agent=storage_call(hub().storage.is_agent, sender_id))
    raw_content = body.get("content")
    if is_blank(raw_content):
        raise Refused(Problem.MISSING_CONTENT)
    session_id = session_id_of(raw_id)
    content = message_content(raw_content, hub().settings.max_message_length)
    client_msg_id = client_message_id(body.get("client_msg_id"))
    current_app.extensions["chat_post_limit"].take(poster)  # RATE_LIMIT, as a socket's send_message
    session = hub().authorize_to_post(identity, session_id)
    message, duplicate = hub().post_message(identity, session, content, None, client_msg_id)
    payload = message.to_wire()
    if duplicate:
        payload["duplicate"] = True
    return jsonify(payload), 200 if duplicate else 201


@bp.post("/sessions/<raw_id>/close")
def close_session(raw_id: str):
    """Close (agent, owner or backend); closing a closed session answers it as it is."""
    identity = caller()
    session = hub().authorize(identity, session_id_of(raw_id), need_open=False)
    closed_by = None if identity.backend else identity.user_id
    reason = "backend" if identity.backend else identity.role
    record, closed_now = storage_call(hub().storage.close_session, session.id, closed_by, reason)
    if closed_now:
        hub().publish_session_closed(session.id)
    return jsonify(record.to_wire())
