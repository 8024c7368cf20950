"""HTTP API of the agent desk: agents (status, capacity, load), the queue, claim and transfer."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

from ..auth import Identity, parse_id
from ..desk import Desk
from ..errors import Problem, Refused
from .sessions import caller, hub, json_body, session_id_of

bp = Blueprint("agents", __name__)


def desk() -> Desk:
    return hub().desk


def agent_caller() -> Identity:
    identity = caller()
    if not identity.is_agent:
        raise Refused(Problem.AGENTS_ONLY)
    return identity


def agent_id_of(raw: Any) -> int:
    return parse_id(raw, Problem.MISSING_AGENT_ID, Problem.INVALID_AGENT_ID)


def session_wire(session_id: int) -> dict[str, Any]:
    """The session object, with `assigned_at` (additive)."""
    from ..storage.records import wire_time

    session = hub().authorize(Identity(user_id=0, is_agent=True, backend=True), session_id, need_open=False)
    assigned_at = desk()._call(desk().store.assigned_at, session.id)
    return {**session.to_wire(), "assigned_at": wire_time(assigned_at)}


@bp.get("/agents")
def list_agents():
    """Every agent with status, capacity and load (agents and the trusted backend)."""
    agent_caller()
    return jsonify({"agents": [a.to_wire() for a in desk().agents()]})


@bp.put("/agents/<raw_id>/status")
def put_status(raw_id: str):
    """An agent sets its own status (the trusted backend anyone's)."""
    identity = agent_caller()
    agent_id = agent_id_of(raw_id)
    if not identity.backend and identity.user_id != agent_id:
        raise Refused(Problem.NOT_YOUR_STATUS)
    body = json_body()
    if not identity.backend:
        desk()._ensure_agent(agent_id)
    else:
        desk().agent(agent_id)  # 404 for someone who is not an agent
    return jsonify(desk().set_status(agent_id, body.get("status")).to_wire())


@bp.patch("/agents/<raw_id>")
def patch_agent(raw_id: str):
    """Set an agent's capacity (agents and the trusted backend)."""
    agent_caller()
    agent_id = agent_id_of(raw_id)
    body = json_body()
    if "capacity" not in body:
        raise Refused(Problem.INVALID_CAPACITY)
    return jsonify(desk().set_capacity(agent_id, body["capacity"]).to_wire())


@bp.get("/queue")
def queue():
    """Open sessions with no agent, oldest first, with position and waiting time (agents)."""
    agent_caller()
    return jsonify({"queue": desk().queue()})


@bp.post("/sessions/<raw_id>/claim")
def claim(raw_id: str):
    """The calling agent takes a waiting session (both routing modes)."""
    identity = agent_caller()
    if identity.backend:
        raise Refused(Problem.AGENTS_ONLY)  # the backend is nobody: it cannot carry a session
    session_id = session_id_of(raw_id)
    hub().forget_session(session_id)
    session = hub().authorize(identity, session_id)
    desk().claim(identity.user_id, session)
    hub().forget_session(session_id)
    return jsonify(session_wire(session_id))


@bp.post("/sessions/<raw_id>/transfer")
def transfer(raw_id: str):
    """The session's agent (or the trusted backend) hands the session to an online agent with room."""
    identity = agent_caller()
    session_id = session_id_of(raw_id)
    body = json_body()
    hub().forget_session(session_id)
    session = hub().authorize(identity, session_id)
    desk().transfer(None if identity.backend else identity.user_id, session, body.get("agent_id"))
    hub().forget_session(session_id)
    return jsonify(session_wire(session_id))
