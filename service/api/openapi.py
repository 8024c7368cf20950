"""`/api/openapi.json`: the HTTP API described for clients, gateways and schemathesis."""

from __future__ import annotations

import copy
from typing import Any

from flask import Blueprint, current_app, jsonify

from .agents import OPENAPI_PATHS as DESK_PATHS
from .agents import OPENAPI_SCHEMAS as DESK_SCHEMAS
from .reports import OPENAPI_PATHS, OPENAPI_SCHEMAS

bp = Blueprint("openapi", __name__)


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


MAX_ID = 9223372036854775807
# At least one character that Python's str.strip() keeps: blank content is "missing".
NOT_BLANK = "[^\\t\\n\\v\\f\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]"
ID = {"type": "integer", "minimum": 1, "maximum": MAX_ID}


def _decimal_at_most(limit: int) -> str:
    """A regex for the decimal strings (leading zeros allowed, empty = 0) of 0..limit."""
    digits = str(limit)
    options = [f"[0-9]{{0,{len(digits) - 1}}}"]
    for i, d in enumerate(digits):
        low = "1" if i == 0 else "0"
        if int(d) > int(low):
            options.append(f"{digits[:i]}[{low}-{int(d) - 1}][0-9]{{{len(digits) - i - 1}}}")
    options.append(digits)
    return "^0*(" + "|".join(options) + ")$"


# Ids may come as strings of digits too (the WebSocket's rule); all zeros or empty means "not given".
ID_TEXT = _decimal_at_most(MAX_ID)
SESSION_ID_PARAM = {"name": "session_id", "in": "path", "required": True, "schema": ID}
ERRORS = {
    "400": _error("Bad input"),
    "401": _error("No or failed identity"),
    "403": _error("Not allowed"),
    "404": _error("No such session"),
    "503": _error("Storage unavailable"),
}
# Body-carrying calls: a body must be `application/json` (415 otherwise; a cross-site page cannot send that).
BODY_ERRORS = {"415": _error("A body that is not Content-Type: application/json (请求体须为JSON)")}
IDENTITY = [{"userId": []}, {"bearer": []}, {"backendKey": []}, {}]


def _json(ref: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}


SPEC: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "Customer-service chat API",
        "version": "1.0.0",
        "description": "Sessions and messages. In AUTH_MODE=trust the caller is the user in X-User-Id; a call "
        "without it is the trusted backend (which must send BACKEND_API_KEY when one is set). Every body must be "
        "Content-Type: application/json. In AUTH_MODE=jwt the caller is the bearer token's subject.",
    },
    "security": IDENTITY,
    "paths": {
        "/api/sessions": {
            "post": {
                "summary": "Open (or return the open) session of a customer",
                "requestBody": {"required": False, "content": _json("OpenSession")},
                "responses": {
                    "200": {"description": "The customer's open session", "content": _json("Session")},
                    "201": {"description": "A new session", "content": _json("Session")},
                    **{k: v for k, v in ERRORS.items() if k != "404"},
                    **BODY_ERRORS,
                },
            },
            "get": {
                "summary": "List sessions (agents: all; customers: their own), newest first",
                "parameters": [
                    {
                        "name": "status",
                        "in": "query",
                        "schema": {"type": "string", "enum": ["active", "closed", "all"]},
                    },
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                    {"name": "before_id", "in": "query",
                     "schema": {"type": "integer", "minimum": 0, "maximum": MAX_ID}},
                ],
                "responses": {
                    "200": {"description": "Sessions", "content": _json("SessionList")},
                    **{k: v for k, v in ERRORS.items() if k in ("400", "401", "503")},
                },
            },
        },
        "/api/sessions/{session_id}": {
            "get": {
                "summary": "One session",
                "parameters": [SESSION_ID_PARAM],
                "responses": {"200": {"description": "The session", "content": _json("Session")}, **ERRORS},
            }
        },
        "/api/sessions/{session_id}/messages": {
            "get": {
                "summary": "Messages oldest first, after a cursor (or the newest before one: before_id)",
                "parameters": [
                    SESSION_ID_PARAM,
                    {"name": "after_id", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": MAX_ID}},
                    {"name": "before_id", "in": "query", "schema": ID,
                     "description": "Scroll back: the `limit` newest messages with id < before_id, oldest first"},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
                ],
                "responses": {"200": {"description": "Messages", "content": _json("MessageList")}, **ERRORS},
            },
            "post": {
                "summary": "Store and broadcast a message (like send_message)",
                "parameters": [SESSION_ID_PARAM],
                "requestBody": {"required": True, "content": _json("PostMessage")},
                "responses": {
                    "200": {
                        "description": "A repeated client_msg_id: the original message",
                        "content": _json("Message"),
                    },
                    "201": {"description": "Stored and broadcast", "content": _json("Message")},
                    "409": _error("Session closed"),
                    "413": _error("Content too long"),
                    "429": _error("RATE_LIMIT per user and worker (发送过于频繁, code rate_limited); not the backend"),
                    **ERRORS,
                    **BODY_ERRORS,
                },
            },
        },
        "/api/sessions/{session_id}/presence": {
            "get": {
                "summary": "Who is joined to the session now, on every worker and host",
                "parameters": [SESSION_ID_PARAM],
                "responses": {"200": {"description": "Presence", "content": _json("Presence")}, **ERRORS},
            }
        },
        "/api/sessions/{session_id}/close": {
            "post": {
                "summary": "Close a session (its customer, an agent, or the backend)",
                "parameters": [SESSION_ID_PARAM],
                "responses": {"200": {"description": "The session, closed", "content": _json("Session")}, **ERRORS,
                              **BODY_ERRORS},
            }
        },
        "/healthz": {
            "get": {"summary": "Process alive", "security": [{}], "responses": {"200": {"description": "ok"}}}
        },
        "/readyz": {
            "get": {
                "summary": "Database (and Redis, when configured) reachable",
                "security": [{}],
                "responses": {"200": {"description": "ready"}, "503": {"description": "a dependency is down"}},
            }
        },
    },
    "components": {
        "securitySchemes": {
            "userId": {"type": "apiKey", "in": "header", "name": "X-User-Id"},
            "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
            "backendKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key",
                           "description": "AUTH_MODE=trust with BACKEND_API_KEY set: the backend (no X-User-Id) sends "
                           "it here or as `Authorization: Bearer KEY`; missing: 401 未认证, wrong: 401 认证失败."},
        },
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error", "code"],
                "properties": {"error": {"type": "string"}, "code": {"type": "string"}},
            },
            "Session": {
                "type": "object",
                "required": ["id", "user_id", "agent_id", "status", "created_at", "closed_at"],
                "properties": {
                    "id": {"type": "integer"},
                    "user_id": {"type": "integer"},
                    "agent_id": {"type": "integer", "nullable": True},
                    "status": {"type": "string", "enum": ["active", "closed"]},
                    "created_at": {"type": "string", "example": "2024-01-01 12:00:00"},
                    "closed_at": {"type": "string", "nullable": True},
                    "unread_count": {"type": "integer"},
                },
            },
            "SessionList": {
                "type": "object",
                "required": ["sessions"],
                "properties": {"sessions": {"type": "array", "items": {"$ref": "#/components/schemas/Session"}}},
            },
            "Message": {
                "type": "object",
                "required": ["id", "session_id", "sender_id", "content", "created_at"],
                "properties": {
                    "id": {"type": "integer"},
                    "session_id": {"type": "integer"},
                    "sender_id": {"type": "integer"},
                    "content": {"type": "string"},
                    "created_at": {"type": "string", "example": "2024-01-01 12:00:00"},
                    "client_msg_id": {"type": "string"},
                    "duplicate": {"type": "boolean"},
                },
            },
            "MessageList": {
                "type": "object",
                "required": ["messages"],
                "properties": {"messages": {"type": "array", "items": {"$ref": "#/components/schemas/Message"}}},
            },
            "Presence": {
                "type": "object",
                "required": ["session_id", "connections", "users", "complete"],
                "properties": {
                    "session_id": {"type": "integer"},
                    "connections": {"type": "integer"},
                    "users": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["user_id", "connections"],
                            "properties": {"user_id": {"type": "integer"}, "connections": {"type": "integer"}},
                        },
                    },
                    "complete": {"type": "boolean"},
                },
            },
            "OpenSession": {
                "type": "object",
                "properties": {
                    "user_id": {
                        "anyOf": [{"type": "integer", "minimum": 0, "maximum": MAX_ID},
                                  {"type": "number", "enum": [0]}, {"type": "string", "pattern": ID_TEXT}],
                        "nullable": True,
                        "description": "The customer; absent, null or 0 means the caller (required for the backend)",
                    }
                },
            },
            "PostMessage": {
                "type": "object",
                "required": ["content"],
                "properties": {
                    "content": {"type": "string", "minLength": 1, "maxLength": 5000, "pattern": NOT_BLANK,
                                "description": "Not blank; at most MAX_MESSAGE_LENGTH characters"},
                    "sender_id": ID,
                    "client_msg_id": {"type": "string", "minLength": 1, "maxLength": 64},
                },
            },
        },
    },
}

SPEC["paths"].update(OPENAPI_PATHS)
SPEC["components"]["schemas"].update(OPENAPI_SCHEMAS)
SPEC["paths"].update(DESK_PATHS)
SPEC["components"]["schemas"].update(DESK_SCHEMAS)


@bp.get("/openapi.json")
def openapi():
    """The document, with the limits this server is configured with."""
    spec = copy.deepcopy(SPEC)
    content = spec["components"]["schemas"]["PostMessage"]["properties"]["content"]
    content["maxLength"] = current_app.extensions["chat_hub"].settings.max_message_length
    return jsonify(spec)
