"""The HTTP API (issue 3 and the spec's "HTTP API" section) against the real server, on SQLite and MariaDB.

Trust mode: `X-User-Id` names the caller (customer or agent); no header is the legacy backend.
"""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from support import ROOT, Server, fresh_id

SESSION_KEYS = ["id", "user_id", "agent_id", "status", "created_at", "closed_at"]
MESSAGE_KEYS = ["id", "session_id", "sender_id", "content", "created_at"]
WIRE_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
UNKNOWN_SESSION = 9_000_000_000_000_000



def as_user(user_id: int) -> dict[str, str]:
    return {"X-User-Id": str(user_id)}


def error(status: int, text: str, code: str) -> tuple[int, dict[str, str]]:
    return status, {"error": text, "code": code}


# -- POST /api/sessions -------------------------------------------------------------------------------------


def test_open_session_creates_then_returns_the_open_one(chat_server: Server) -> None:
    """201 with the session object the first time; 200 with the same session while it is open."""
    customer = fresh_id()
    status, session = chat_server.http("POST", "/api/sessions", {"user_id": customer})
    assert status == 201
    assert list(session) == SESSION_KEYS
    assert session["user_id"] == customer and session["agent_id"] is None
    assert session["status"] == "active" and session["closed_at"] is None
    assert isinstance(session["id"], int) and WIRE_TIME.fullmatch(session["created_at"])
    assert chat_server.http("POST", "/api/sessions", {"user_id": customer}) == (200, session)
    assert chat_server.http("POST", "/api/sessions", {"user_id": str(customer)}) == (200, session)
    assert chat_server.http("POST", "/api/sessions", {"user_id": customer}, as_user(customer)) == (200, session)


def test_customer_opens_own_session_without_a_body(chat_server: Server) -> None:
    """With X-User-Id and no body (or no user_id), the customer's own session is opened."""
    customer = fresh_id()
    status, session = chat_server.http("POST", "/api/sessions", headers=as_user(customer))
    assert status == 201 and session["user_id"] == customer
    assert chat_server.http("POST", "/api/sessions", {}, as_user(customer)) == (200, session)


def test_agent_may_open_a_session_for_a_customer(chat_server: Server, agent_id: int) -> None:
    """An agent (X-User-Id in the agents table) may open a customer's session."""
    customer = fresh_id()
    status, session = chat_server.http("POST", "/api/sessions", {"user_id": customer}, as_user(agent_id))
    assert status == 201 and session["user_id"] == customer


@pytest.mark.parametrize(
    ("body", "headers", "expected"),
    [
        ({}, None, error(400, "缺少用户ID", "missing_user_id")),
        ({"user_id": 0}, None, error(400, "缺少用户ID", "missing_user_id")),
        ({"user_id": "abc"}, None, error(400, "用户ID无效", "invalid_user_id")),
        ({"user_id": -4}, None, error(400, "用户ID无效", "invalid_user_id")),
        ({"user_id": "OTHER"}, "CUSTOMER", error(403, "无权访问该会话", "forbidden")),
        ({"user_id": 1}, {"X-User-Id": "abc"}, error(401, "用户ID无效", "invalid_user_id")),
        ({"user_id": 1}, {"X-User-Id": ""}, error(401, "未认证", "unauthenticated")),
    ],
    ids=["no-user", "zero", "letters", "negative", "other-customer", "bad-header", "empty-header"],
)
def test_open_session_refusals(chat_server: Server, body: dict, headers: Any, expected: tuple) -> None:
    """Bad ids answer 400, a bad X-User-Id 401, a customer acting for another 403."""
    body = {k: (fresh_id() if v == "OTHER" else v) for k, v in body.items()}
    if headers == "CUSTOMER":
        headers = as_user(fresh_id())
    assert chat_server.http("POST", "/api/sessions", body, headers) == expected


def test_concurrent_opens_make_one_session(chat_server: Server) -> None:
    """Eight simultaneous POSTs for one customer create one session: one 201, the rest 200, one id."""
    customer = fresh_id()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: chat_server.http("POST", "/api/sessions", {"user_id": customer}), range(8)))
    statuses = sorted(status for status, _ in results)
    assert statuses == [200] * 7 + [201]
    assert len({body["id"] for _, body in results}) == 1


# -- GET /api/sessions --------------------------------------------------------------------------------------


def test_list_filters_by_status_and_caller(chat_server: Server, agent_id: int) -> None:
    """status=active|closed|all (default active), newest first; customers see their own, agents and backend all."""
    customer, other = fresh_id(), fresh_id()
    old = chat_server.open_session(customer)
    assert chat_server.http("POST", f"/api/sessions/{old}/close")[0] == 200
    new = chat_server.open_session(customer)
    others = chat_server.open_session(other)

    def ids(query: str, user: int | None) -> list[int]:
        status, body = chat_server.http("GET", f"/api/sessions{query}", headers=as_user(user) if user else None)
        assert status == 200 and list(body) == ["sessions"], body
        for session in body["sessions"]:
            assert list(session)[:6] == SESSION_KEYS
        return [s["id"] for s in body["sessions"]]

    assert ids("", customer) == [new]
    assert ids("?status=active", customer) == [new]
    assert ids("?status=closed", customer) == [old]
    assert ids("?status=all", customer) == [new, old]
    for viewer in (agent_id, None):
        assert {new, others} <= set(ids("?status=active&limit=1000", viewer))
        assert old not in ids("?status=active&limit=1000", viewer)
        assert old in ids("?status=closed&limit=1000", viewer)
        listed = ids("?status=all&limit=1000", viewer)
        assert listed == sorted(listed, reverse=True) and {old, new, others} <= set(listed)


@pytest.mark.parametrize("query", ["?status=open", "?status=", "?status=ALL", "?limit=0", "?limit=abc"])
def test_list_bad_parameters_are_400(chat_server: Server, query: str) -> None:
    """An unknown status or a bad limit is a JSON 400."""
    status, body = chat_server.http("GET", f"/api/sessions{query}")
    assert status == 400 and set(body) == {"error", "code"}
    if "status" in query:
        assert body == {"error": "状态无效", "code": "invalid_state"}


# -- GET /api/sessions/<id> ---------------------------------------------------------------------------------


def test_get_session_by_caller(chat_server: Server, agent_id: int) -> None:
    """Owner, agent and backend see a session; another customer gets 403; unknown 404; bad ids 400."""
    customer = fresh_id()
    session_id = chat_server.open_session(customer)
    for headers in (as_user(customer), as_user(agent_id), None):
        status, body = chat_server.http("GET", f"/api/sessions/{session_id}", headers=headers)
        assert status == 200 and body["id"] == session_id and list(body) == SESSION_KEYS
    assert chat_server.http("GET", f"/api/sessions/{session_id}", headers=as_user(fresh_id())) == error(
        403, "无权访问该会话", "forbidden")
    assert chat_server.http("GET", f"/api/sessions/{UNKNOWN_SESSION}") == error(404, "会话不存在", "session_not_found")
    assert chat_server.http("GET", "/api/sessions/abc") == error(400, "会话ID无效", "invalid_session_id")
    assert chat_server.http("GET", "/api/sessions/0") == error(400, "缺少会话ID", "missing_session_id")


# -- messages -----------------------------------------------------------------------------------------------


def test_messages_are_ascending_paginated_and_equal_to_new_message(chat_server: Server, clients) -> None:
    """GET messages: ascending by id, after_id/limit cursor, each exactly the `message` of its new_message."""
    customer = fresh_id()
    session_id = chat_server.open_session(customer)
    client = clients(customer)
    live = []
    for n in range(5):
        client.say(session_id, f"第{n}条 😀")
        live.append(client.recv_type("new_message")["message"])
    path = f"/api/sessions/{session_id}/messages"
    assert chat_server.http("GET", path) == (200, {"messages": live})
    assert all(list(m) == MESSAGE_KEYS for m in live)
    pages, after = [], 0
    while True:
        status, body = chat_server.http("GET", f"{path}?after_id={after}&limit=2")
        assert status == 200 and len(body["messages"]) <= 2
        if not body["messages"]:
            break
        pages.append(body["messages"])
        after = body["messages"][-1]["id"]
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [m for page in pages for m in page] == live
    assert chat_server.http("GET", f"{path}?after_id={live[-1]['id']}") == (200, {"messages": []})


@pytest.mark.parametrize("query", ["?limit=0", "?limit=501", "?limit=x", "?after_id=-1", "?after_id=1.5"])
def test_messages_bad_cursor_is_400(chat_server: Server, query: str) -> None:
    """A bad after_id or limit is 参数无效 (400)."""
    session_id = chat_server.open_session(fresh_id())
    assert chat_server.http("GET", f"/api/sessions/{session_id}/messages{query}") == error(
        400, "参数无效", "invalid_parameter")


def test_messages_of_foreign_or_unknown_session(chat_server: Server) -> None:
    """Another customer's messages are 403; an unknown session 404."""
    session_id = chat_server.open_session(fresh_id())
    assert chat_server.http("GET", f"/api/sessions/{session_id}/messages", headers=as_user(fresh_id()))[0] == 403
    assert chat_server.http("GET", f"/api/sessions/{UNKNOWN_SESSION}/messages")[0] == 404


def test_posted_message_is_stored_and_broadcast(chat_server: Server, clients, agent_id: int) -> None:
    """POST messages (customer, agent, backend naming sender_id) answers 201 and reaches the room as new_message."""
    customer = fresh_id()
    session_id = chat_server.open_session(customer)
    listener = clients(customer)
    listener.join(session_id)
    path = f"/api/sessions/{session_id}/messages"
    posts = [
        ({"content": "客户 via HTTP"}, as_user(customer), customer),
        ({"content": "客服 via HTTP"}, as_user(agent_id), agent_id),
        ({"content": "backend 🤖", "sender_id": agent_id}, None, agent_id),
    ]
    for body, headers, sender in posts:
        status, message = chat_server.http("POST", path, body, headers)
        assert status == 201 and list(message) == MESSAGE_KEYS
        assert message["sender_id"] == sender and message["content"] == body["content"]
        assert listener.recv_type("new_message") == {"type": "new_message", "session_id": session_id,
                                                     "message": message}
    assert listener.barrier() == []
    assert chat_server.http("GET", f"/api/sessions/{session_id}")[1]["agent_id"] == agent_id


@pytest.mark.parametrize(
    ("body", "who", "expected"),
    [
        ({"content": "hi"}, "BACKEND", error(400, "缺少用户ID", "missing_user_id")),
        ({"content": "hi", "sender_id": "x"}, "BACKEND", error(400, "用户ID无效", "invalid_user_id")),
        ({"content": "  "}, "OWNER", error(400, "缺少消息内容", "missing_content")),
        ({}, "OWNER", error(400, "缺少消息内容", "missing_content")),
        ({"content": 5}, "OWNER", error(400, "消息内容无效", "invalid_content")),
        ({"content": "x" * 5001}, "OWNER", error(413, "消息内容过长", "content_too_long")),
        ({"content": "hi"}, "STRANGER", error(403, "无权访问该会话", "forbidden")),
        ("[1]", "OWNER", error(400, "消息格式错误", "bad_format")),
        ("{not json", "OWNER", error(400, "消息格式错误", "bad_format")),
    ],
    ids=["backend-no-sender", "backend-bad-sender", "blank", "no-content", "non-string", "too-long", "foreign",
         "array-body", "bad-json"],
)
def test_post_message_refusals(chat_server: Server, body: Any, who: str, expected: tuple) -> None:
    """Each bad POST gets its JSON error and status, and nothing is stored."""
    owner = fresh_id()
    session_id = chat_server.open_session(owner)
    headers = {"OWNER": as_user(owner), "STRANGER": as_user(fresh_id()), "BACKEND": None}[who]
    raw = body.encode() if isinstance(body, str) else None
    path = f"/api/sessions/{session_id}/messages"
    assert chat_server.http("POST", path, body if raw is None else None, headers, raw=raw) == expected
    assert chat_server.http("GET", path) == (200, {"messages": []})


def test_post_message_to_unknown_session_is_404(chat_server: Server) -> None:
    """Posting to a session that does not exist is 404 会话不存在."""
    assert chat_server.http("POST", f"/api/sessions/{UNKNOWN_SESSION}/messages",
                            {"content": "hi", "sender_id": 1}) == error(404, "会话不存在", "session_not_found")


# -- close --------------------------------------------------------------------------------------------------


def test_close_notifies_the_room_and_refuses_later_use(chat_server: Server, clients, agent_id: int) -> None:
    """Close answers the closed session, sends session_closed to the room; then join/send/POST get 会话已关闭."""
    customer = fresh_id()
    session_id = chat_server.open_session(customer)
    member, agent, outsider = clients(customer), clients(agent_id), clients(customer)
    member.join(session_id)
    agent.join(session_id)
    status, session = chat_server.http("POST", f"/api/sessions/{session_id}/close", headers=as_user(agent_id))
    assert status == 200 and session["status"] == "closed" and WIRE_TIME.fullmatch(session["closed_at"])
    for client in (member, agent):
        client.ws.settimeout(10)
        assert client.ws.recv() == f'{{"type":"session_closed","session_id":{session_id}}}'
        assert client.barrier() == []
    assert outsider.barrier() == []
    closed = {"type": "error", "error": "会话已关闭", "code": "session_closed"}
    assert outsider.request({"type": "join_session", "session_id": session_id}) == closed
    assert member.request({"type": "send_message", "session_id": session_id, "content": "hi"}) == closed
    assert chat_server.http("POST", f"/api/sessions/{session_id}/messages", {"content": "hi"},
                            as_user(customer)) == error(409, "会话已关闭", "session_closed")
    assert chat_server.http("POST", f"/api/sessions/{session_id}/close") == (200, session)
    status, reopened = chat_server.http("POST", "/api/sessions", {"user_id": customer})
    assert status == 201 and reopened["id"] != session_id


def test_close_by_owner_backend_and_refusals(chat_server: Server) -> None:
    """The owner and the backend may close; another customer gets 403; an unknown session 404."""
    for headers_of in (lambda owner: as_user(owner), lambda owner: None):
        owner = fresh_id()
        session_id = chat_server.open_session(owner)
        assert chat_server.http("POST", f"/api/sessions/{session_id}/close", headers=as_user(fresh_id())) == error(
            403, "无权访问该会话", "forbidden")
        status, body = chat_server.http("POST", f"/api/sessions/{session_id}/close", headers=headers_of(owner))
        assert status == 200 and body["status"] == "closed"
    assert chat_server.http("POST", f"/api/sessions/{UNKNOWN_SESSION}/close")[0] == 404


# -- errors, discovery, plain HTTP --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/api/nothing-here", error(404, "接口不存在", "not_found")),
        ("GET", "/favicon.ico", error(404, "接口不存在", "not_found")),
        ("DELETE", "/api/sessions", error(405, "请求方法不允许", "method_not_allowed")),
        ("PUT", "/api/sessions/1/close", error(405, "请求方法不允许", "method_not_allowed")),
        ("POST", "/", error(405, "请求方法不允许", "method_not_allowed")),
    ],
)
def test_http_errors_are_json(chat_server: Server, method: str, path: str, expected: tuple) -> None:
    """Unknown routes and methods answer JSON errors, never an HTML page."""
    assert chat_server.http(method, path, {} if method in ("POST", "PUT") else None) == expected
    request = urllib.request.Request(chat_server.http_url + path, method=method, data=b"{}")
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=10)
    assert raised.value.headers["Content-Type"] == "application/json"
    assert b"<" not in raised.value.read()


def test_bad_json_body_is_a_json_400(chat_server: Server) -> None:
    """A body that is not JSON is 消息格式错误 (400) in JSON."""
    assert chat_server.http("POST", "/api/sessions", raw=b"{oops") == error(400, "消息格式错误", "bad_format")


def test_json_body_without_json_content_type_is_refused_415(chat_server: Server) -> None:
    """A JSON body sent without Content-Type: application/json (curl -d sends a form type) is refused, since
    issue 13: a cross-site page can send such a body without a preflight (see test_http_hardening.py)."""
    customer = fresh_id()
    request = urllib.request.Request(chat_server.http_url + "/api/sessions", method="POST",
                                     data=json.dumps({"user_id": customer}).encode())
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 415
    assert json.loads(refused.value.read()) == {"error": "请求体须为JSON", "code": "unsupported_media_type"}


def test_plain_get_on_root_is_text(chat_server: Server) -> None:
    """GET / without an upgrade answers a short text (never a 500 or a 400)."""
    with socket.create_connection(("127.0.0.1", chat_server.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        response = b""
        while chunk := s.recv(4096):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"text/plain" in head
    assert b"WebSocket" in body


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET / HTTP/1.0\r\nHost: localhost\r\nConnection: upgrade\r\n\r\n",  # the legacy nginx recipe
        b"GET /?x=1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        b"HEAD / HTTP/1.0\r\nHost: localhost\r\n\r\n",
    ],
)
def test_plain_requests_on_root_still_reach_the_app(chat_server: Server, request_bytes: bytes) -> None:
    """Only WebSocket upgrades are served outside the app: other requests on `/` get its text (200)."""
    with socket.create_connection(("127.0.0.1", chat_server.port), timeout=5) as s:
        s.sendall(request_bytes)
        response = b""
        while chunk := s.recv(4096):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"text/plain" in head
    assert (b"WebSocket" in body) is not request_bytes.startswith(b"HEAD")


def test_healthz(chat_server: Server) -> None:
    """/healthz answers 200 JSON."""
    assert chat_server.http("GET", "/healthz") == (200, {"status": "ok"})


def test_post_with_connection_upgrade_answers_at_once(chat_server: Server) -> None:
    """A JSON POST carrying `Connection: upgrade` (the legacy nginx recipe) is answered immediately."""
    body = json.dumps({"user_id": fresh_id()}).encode()
    request = (
        b"POST /api/sessions HTTP/1.1\r\nHost: localhost\r\nConnection: upgrade\r\n"
        b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", chat_server.port), timeout=3) as s:
        s.sendall(request)
        response = b""
        while b"\r\n\r\n" not in response:
            response += s.recv(4096)
        head, _, rest = response.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
        while len(rest) < length:
            rest += s.recv(4096)
    assert time.monotonic() - started < 2
    assert head.startswith(b"HTTP/1.1 201") and json.loads(rest)["status"] == "active"


def test_openapi_is_valid_and_lists_every_route(chat_server: Server, tmp_path: Path) -> None:
    """/api/openapi.json is an OpenAPI 3 document whose refs resolve and whose paths are the app's routes."""
    status, spec = chat_server.http("GET", "/api/openapi.json")
    assert status == 200 and spec["openapi"].startswith("3.") and spec["info"]["title"] and spec["info"]["version"]

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref":
                    yield value
                else:
                    yield from refs(value)
        elif isinstance(node, list):
            for item in node:
                yield from refs(item)

    for ref in refs(spec):
        target: Any = spec
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]
    documented = set()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            assert method in {"get", "post", "put", "patch", "delete"}
            assert operation["responses"] and all(re.fullmatch(r"[1-5]\d\d", code) for code in operation["responses"])
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == set(re.findall(r"{(\w+)}", path)), (path, method)
            documented.add((re.sub(r"{\w+}", "{}", path), method.upper()))

    from service import create_app

    app = create_app({"DATABASE_URL": f"sqlite:///{tmp_path}/routes.db", "LOG_LEVEL": "warning"})
    served = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<[^>]+>", "{}", rule.rule)
        if path.startswith("/api/") and path != "/api/openapi.json" or path in ("/healthz", "/readyz"):
            served |= {(path, m) for m in rule.methods - {"HEAD", "OPTIONS"}}
    assert served == documented


def test_project_files_are_not_served(chat_server: Server) -> None:
    """Project files are not reachable over HTTP (no static route leaks .env)."""
    assert (ROOT / ".env").exists()
    assert chat_server.http("GET", "/.env")[0] == 404
