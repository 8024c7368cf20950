"""The authorization matrix: every HTTP endpoint and WebSocket message type, for every kind of caller, in both
AUTH_MODEs. Customers reach only their own sessions; agents reach all; the trusted backend exists only in trust
mode. A refusal says 无权访问该会话 / 403 and nothing about the session (not even that it is closed).
"""

from __future__ import annotations

from typing import Any

import pytest
from jwtkit import JWT_SETTINGS, hs256

from service.realtime.protocol import _HANDLERS
from support import Client, Server, fresh_id

FORBIDDEN_BODY = {"error": "无权访问该会话", "code": "forbidden"}
FORBIDDEN_FRAME = {"type": "error", **FORBIDDEN_BODY}
CALLERS = ["own", "foreign", "agent", "backend"]

# Every route and message type must appear here: a new one without a row fails test_matrix_covers_everything.
HTTP_ENDPOINTS = ["POST /api/sessions", "GET /api/sessions", "GET /api/sessions/<raw_id>",
                  "GET /api/sessions/<raw_id>/messages", "POST /api/sessions/<raw_id>/messages",
                  "POST /api/sessions/<raw_id>/close", "GET /api/sessions/<raw_id>/presence"]
SESSION_MESSAGES = ["join_session", "send_message", "read", "typing"]
REPORT_ENDPOINTS = ["GET /api/reports/summary", "GET /api/reports/agents", "GET /api/reports/desk"]
DESK_ENDPOINTS = ["GET /api/agents", "GET /api/queue", "PUT /api/agents/<raw_id>/status",
                  "PATCH /api/agents/<raw_id>", "POST /api/sessions/<raw_id>/claim",
                  "POST /api/sessions/<raw_id>/transfer"]
DESK_MESSAGES = ["set_status", "claim_session", "transfer_session"]  # agents only
AGENTS_ONLY = {"error": "仅限客服", "code": "agents_only"}
SESSIONLESS_MESSAGES = ["auth", "ping", "leave_session"]  # act on the caller's own connection only


class Realm:
    """A server in one AUTH_MODE and how each kind of caller identifies itself there."""

    def __init__(self, server: Server, mode: str) -> None:
        self.server, self.mode = server, mode
        self.owner, self.stranger = fresh_id(), fresh_id()
        self.agent = fresh_id()
        if mode == "trust":
            server.add_agent(self.agent)

    def user(self, caller: str) -> int | None:
        return {"own": self.owner, "foreign": self.stranger, "agent": self.agent, "backend": None}[caller]

    def headers(self, caller: str) -> dict[str, str]:
        user = self.user(caller)
        if user is None:
            return {}
        if self.mode == "trust":
            return {"X-User-Id": str(user)}
        return {"Authorization": "Bearer " + hs256(user, **({"role": "agent"} if caller == "agent" else {}))}

    def http(self, caller: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return self.server.http(method, path, body, self.headers(caller))

    def websocket(self, caller: str) -> Client:
        c = self.server.client()
        user = self.user(caller)
        if self.mode == "trust":
            reply = c.request({"type": "auth", "user_id": user})
        else:
            reply = c.request({"type": "auth", "token": self.headers(caller)["Authorization"][7:]})
        assert reply == {"type": "auth_success", "user_id": user}, reply
        return c

    def new_session(self) -> int:
        status, body = self.http("own", "POST", "/api/sessions", {})
        if status == 200:  # the owner's open session: close it for a fresh one
            self.http("own", "POST", f"/api/sessions/{body['id']}/close")
            status, body = self.http("own", "POST", "/api/sessions", {})
        assert status == 201, body
        return body["id"]


@pytest.fixture(scope="module", params=["trust", "jwt"])
def realm(request, server_factory) -> Realm:
    settings = JWT_SETTINGS if request.param == "jwt" else {}
    return Realm(server_factory(**settings), request.param)


def expect_http(realm: Realm, caller: str, status: int, body: Any, ok: tuple[int, ...]) -> None:
    if caller == "backend" and realm.mode == "jwt":
        assert (status, body) == (401, {"error": "未认证", "code": "unauthenticated"})
    elif caller == "foreign":
        assert (status, body) == (403, FORBIDDEN_BODY)
    else:
        assert status in ok, (status, body)


@pytest.mark.parametrize("caller", CALLERS)
def test_open_session_for_a_customer(realm: Realm, caller: str) -> None:
    """POST /api/sessions for the owner: the owner, an agent and the backend may; another customer may not."""
    status, body = realm.http(caller, "POST", "/api/sessions", {"user_id": realm.owner})
    expect_http(realm, caller, status, body, (200, 201))
    if status in (200, 201):
        assert body["user_id"] == realm.owner


@pytest.mark.parametrize("caller", CALLERS)
def test_list_sessions_shows_only_what_the_caller_may_see(realm: Realm, caller: str) -> None:
    """GET /api/sessions: a customer sees only their own; agents and the backend see the owner's too."""
    session_id = realm.new_session()
    status, body = realm.http(caller, "GET", "/api/sessions?status=all&limit=1000")
    if caller == "backend" and realm.mode == "jwt":
        assert status == 401
        return
    assert status == 200
    ids = {s["id"] for s in body["sessions"]}
    assert (session_id in ids) == (caller != "foreign")
    if caller == "foreign":
        assert all(s["user_id"] == realm.stranger for s in body["sessions"])


@pytest.mark.parametrize("closed", [False, True], ids=["open", "closed"])
@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("endpoint", ["get", "messages", "presence", "post", "close"])
def test_session_endpoints(realm: Realm, caller: str, endpoint: str, closed: bool) -> None:
    """Each /api/sessions/{id} endpoint, on an open and on a closed session: 403 for a stranger, whatever state."""
    session_id = realm.new_session()
    if closed:
        realm.http("own", "POST", f"/api/sessions/{session_id}/close")
    path = f"/api/sessions/{session_id}"
    if endpoint == "get":
        status, body = realm.http(caller, "GET", path)
        ok = (200,)
    elif endpoint == "messages":
        status, body = realm.http(caller, "GET", path + "/messages")
        ok = (200,)
    elif endpoint == "presence":
        status, body = realm.http(caller, "GET", path + "/presence")
        ok = (200,)
    elif endpoint == "post":
        payload = {"content": "hi"} | ({"sender_id": realm.agent} if caller == "backend" else {})
        status, body = realm.http(caller, "POST", path + "/messages", payload)
        ok = (409,) if closed else (201,)
        if closed and caller not in ("foreign",) and not (caller == "backend" and realm.mode == "jwt"):
            assert body["error"] == "会话已关闭"
    else:
        status, body = realm.http(caller, "POST", path + "/close")
        ok = (200,)
    expect_http(realm, caller, status, body, ok)


@pytest.mark.parametrize("caller", ["own", "foreign", "agent"])
def test_unknown_session_is_not_found_for_everyone(realm: Realm, caller: str) -> None:
    """Ids are sequential, so 会话不存在 may show to anyone; it reveals no more than that."""
    status, body = realm.http(caller, "GET", "/api/sessions/9000000000000000000")
    assert (status, body) == (404, {"error": "会话不存在", "code": "session_not_found"})


@pytest.mark.parametrize("closed", [False, True], ids=["open", "closed"])
@pytest.mark.parametrize("caller", ["own", "foreign", "agent"])
@pytest.mark.parametrize("message_type", SESSION_MESSAGES)
def test_websocket_session_messages(realm: Realm, caller: str, message_type: str, closed: bool) -> None:
    """Every session message type: a stranger gets 无权访问该会话 (open or closed); others are served."""
    session_id = realm.new_session()
    status, posted = realm.http("own", "POST", f"/api/sessions/{session_id}/messages", {"content": "first"})
    assert status == 201, posted
    if closed:
        realm.http("own", "POST", f"/api/sessions/{session_id}/close")
    c = realm.websocket(caller)
    message: dict[str, Any] = {"type": message_type, "session_id": session_id}
    if message_type == "send_message":
        message["content"] = "hello"
    elif message_type == "read":
        message["message_id"] = posted["id"]
    elif message_type == "typing":
        message["state"] = "start"
    if caller == "foreign":
        assert c.request(message) == FORBIDDEN_FRAME
        assert c.request({"type": "leave_session"})["error"] == "未加入会话"  # and it joined nothing
    elif closed and message_type != "read":  # a closed session's history may still be marked read
        assert c.request(message)["error"] == "会话已关闭"
    elif message_type == "typing":
        c.send(message)
        assert c.barrier() == []  # relayed to the others; no reply, and no error
    else:
        expected = {"join_session": "joined_session", "send_message": "new_message", "read": "message_read"}
        reply = c.request(message)
        assert reply["type"] == expected[message_type], reply
    c.close()


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("endpoint", REPORT_ENDPOINTS)
def test_reports_are_for_agents_only(realm: Realm, caller: str, endpoint: str) -> None:
    """Reports: agents (and the trusted backend in trust mode) may read them; every customer gets 仅限客服."""
    method, path = endpoint.split(" ")
    status, body = realm.http(caller, method, path)
    if caller == "backend" and realm.mode == "jwt":
        assert (status, body) == (401, {"error": "未认证", "code": "unauthenticated"})
    elif caller in ("own", "foreign"):
        assert (status, body) == (403, {"error": "仅限客服", "code": "agents_only"})
    else:
        assert status == 200, body


def test_a_strangers_messages_never_reach_a_session(realm: Realm) -> None:
    """Refused sends store nothing: the owner's history shows only what allowed callers said."""
    session_id = realm.new_session()
    stranger = realm.websocket("foreign")
    assert stranger.request({"type": "send_message", "session_id": session_id, "content": "spam"}) == FORBIDDEN_FRAME
    status, body = realm.http("own", "GET", f"/api/sessions/{session_id}/messages")
    assert status == 200 and body["messages"] == []
    stranger.close()


def test_matrix_covers_everything(realm: Realm) -> None:
    """Every /api route and every WebSocket message type has a row in this matrix."""
    from service import create_app  # noqa: PLC0415

    app = create_app({"DATABASE_URL": "sqlite://", "CHAT_ENV_FILE": ""})
    routes = {f"{m} {r.rule}" for r in app.url_map.iter_rules() if r.rule.startswith("/api/")
              and not r.rule.startswith("/api/openapi") for m in r.methods - {"HEAD", "OPTIONS"}}
    covered = set(HTTP_ENDPOINTS) | set(REPORT_ENDPOINTS) | set(DESK_ENDPOINTS)
    assert routes <= covered, f"add rows to the authorization matrix for {routes - covered}"
    missing = set(_HANDLERS) - set(SESSION_MESSAGES) - set(SESSIONLESS_MESSAGES) - set(DESK_MESSAGES)
    assert not missing, f"add rows to the authorization matrix for message types {missing}"


def desk_agent_row(realm: Realm) -> None:
    """The realm's agent with its desk row (a JWT agent gets it on its first set_status)."""
    status, body = realm.http("agent", "PUT", f"/api/agents/{realm.agent}/status", {"status": "online"})
    assert status == 200, body


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("endpoint", DESK_ENDPOINTS)
def test_desk_endpoints_are_for_agents_only(realm: Realm, caller: str, endpoint: str) -> None:
    """The desk's HTTP API: every customer gets 仅限客服; agents are served; the backend may not claim."""
    desk_agent_row(realm)
    session_id = realm.new_session()
    absent_agent = fresh_id()  # not an agent: a transfer to it is refused once authorized
    method, template = endpoint.split(" ")
    path = template.replace("<raw_id>", str(realm.agent if "/agents/" in template else session_id))
    body = {"PUT": {"status": "online"}, "PATCH": {"capacity": 4}}.get(method)
    ok: tuple[int, ...] = (200,)
    if template.endswith("/transfer"):
        status, claimed = realm.http("agent", "POST", f"/api/sessions/{session_id}/claim")
        assert status == 200, claimed
        body, ok = {"agent_id": absent_agent}, (409,)
    status, answer = realm.http(caller, method, path, body)
    if caller == "backend" and realm.mode == "jwt":
        assert (status, answer) == (401, {"error": "未认证", "code": "unauthenticated"})
    elif caller in ("own", "foreign"):
        assert (status, answer) == (403, AGENTS_ONLY)
    elif caller == "backend" and template.endswith("/claim"):
        assert (status, answer) == (403, AGENTS_ONLY)  # the backend is nobody: it cannot carry a session
    else:
        assert status in ok, (status, answer)
        if ok == (409,):
            assert answer["code"] == "agent_unavailable"


@pytest.mark.parametrize("caller", ["own", "foreign", "agent"])
@pytest.mark.parametrize("message_type", DESK_MESSAGES)
def test_websocket_desk_messages_are_for_agents_only(realm: Realm, caller: str, message_type: str) -> None:
    """set_status, claim_session, transfer_session: customers get 仅限客服; an agent is served."""
    session_id = realm.new_session()
    c = realm.websocket(caller)
    message: dict[str, Any] = {"type": message_type, "session_id": session_id}
    if message_type == "set_status":
        message = {"type": message_type, "status": "online"}
    elif message_type == "transfer_session":
        message["agent_id"] = fresh_id()
    if caller != "agent":
        assert c.request(message) == {"type": "error", **AGENTS_ONLY}
    elif message_type == "set_status":
        assert c.request(message) == {"type": "agent_status", "user_id": realm.agent, "status": "online"}
    elif message_type == "claim_session":
        assert c.request(message) == {"type": "session_assigned", "session_id": session_id, "agent_id": realm.agent}
    else:
        assert c.request(message)["code"] == "forbidden"  # not this agent's session
    c.close()
