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


def _error(text: str) -> dict[str, Any]:
    return {"description": text, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _ok(text: str, ref: str) -> dict[str, Any]:
    return {"description": text, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


def _body(ref: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


_ID = {"type": "integer", "minimum": 1, "maximum": 9223372036854775807}
_AGENT_ID = {"name": "agent_id", "in": "path", "required": True, "schema": _ID}
_SESSION_ID = {"name": "session_id", "in": "path", "required": True, "schema": _ID}
_ERRORS = {"400": _error("Bad input"), "401": _error("No or failed identity"),
           "403": _error("Agents only (仅限客服), or not this agent's / session's"),
           "404": _error("No such agent or session"), "503": _error("Storage unavailable")}
_REFUSALS = {"409": _error("already_assigned, over_capacity, agent_unavailable, or the session is closed")}
OPENAPI_PATHS = {
    "/api/agents": {"get": {"summary": "Every agent with status, capacity and load (agents)",
                            "responses": {"200": _ok("Agents", "DeskAgentList"), **_ERRORS}}},
    "/api/agents/{agent_id}/status": {"put": {
        "summary": "Set an agent's status (the agent itself, or the backend); agent_status to its connections",
        "parameters": [_AGENT_ID], "requestBody": _body("AgentStatus"),
        "responses": {"200": _ok("The agent", "DeskAgent"), **_ERRORS}}},
    "/api/agents/{agent_id}": {"patch": {
        "summary": "Set an agent's capacity (agents, or the backend)",
        "parameters": [_AGENT_ID], "requestBody": _body("AgentCapacity"),
        "responses": {"200": _ok("The agent", "DeskAgent"), **_ERRORS}}},
    "/api/queue": {"get": {"summary": "Open sessions with no agent, oldest first (agents)",
                           "responses": {"200": _ok("The queue", "Queue"), **_ERRORS}}},
    "/api/sessions/{session_id}/claim": {"post": {
        "summary": "The calling agent takes a waiting session; session_assigned to it and the session",
        "parameters": [_SESSION_ID],
        "responses": {"200": _ok("The session", "DeskSession"), **_ERRORS, **_REFUSALS}}},
    "/api/sessions/{session_id}/transfer": {"post": {
        "summary": "The session's agent hands it to an online agent with room; session_transferred",
        "parameters": [_SESSION_ID], "requestBody": _body("Transfer"),
        "responses": {"200": _ok("The session", "DeskSession"), **_ERRORS, **_REFUSALS}}},
}
_AGENT = {"type": "object", "required": ["user_id", "display_name", "status", "capacity", "load"], "properties": {
    "user_id": {"type": "integer"}, "display_name": {"type": "string", "nullable": True},
    "status": {"type": "string", "enum": ["online", "away", "offline"]},
    "capacity": {"type": "integer"}, "load": {"type": "integer", "description": "open sessions carried now"}}}
OPENAPI_SCHEMAS = {
    "DeskAgent": _AGENT,
    "DeskAgentList": {"type": "object", "required": ["agents"], "properties": {
        "agents": {"type": "array", "items": {"$ref": "#/components/schemas/DeskAgent"}}}},
    "AgentStatus": {"type": "object", "required": ["status"], "properties": {
        "status": {"type": "string", "enum": ["online", "away", "offline"]}}},
    "AgentCapacity": {"type": "object", "required": ["capacity"], "properties": {
        "capacity": {"type": "integer", "minimum": 0, "maximum": 10000}}},
    "Transfer": {"type": "object", "required": ["agent_id"], "properties": {"agent_id": _ID}},
    "Queue": {"type": "object", "required": ["queue"], "properties": {"queue": {"type": "array", "items": {
        "type": "object", "required": ["session_id", "user_id", "created_at", "position", "waiting_seconds"],
        "properties": {"session_id": {"type": "integer"}, "user_id": {"type": "integer"},
                       "created_at": {"type": "string"}, "position": {"type": "integer"},
                       "waiting_seconds": {"type": "integer"}}}}}},
    "DeskSession": {"allOf": [{"$ref": "#/components/schemas/Session"}, {"type": "object", "properties": {
        "assigned_at": {"type": "string", "nullable": True, "description": "first assignment"}}}]},
}
