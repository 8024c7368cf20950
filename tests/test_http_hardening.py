"""The HTTP API against hostile input over a real socket: JSON bodies only, a key for the backend, rate limits on
posts, and a 4xx with a JSON error (never a 500) for every bad input."""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable

import pytest

from support import Server, fresh_id

KEY = "backend-key-0123456789"
RATE_LIMITED = {"error": "发送过于频繁", "code": "rate_limited"}
WRONG_TYPE = {"error": "请求体须为JSON", "code": "unsupported_media_type"}
BAD_FORMAT = {"error": "消息格式错误", "code": "bad_format"}
INVALID = {"error": "参数无效", "code": "invalid_parameter"}


@pytest.fixture(scope="module")
def server(server_factory: Callable[..., Server]) -> Server:
    return server_factory(RATE_LIMIT=2, RATE_BURST=5)


@pytest.fixture(scope="module")
def agent(server: Server) -> int:
    return server.add_agent(fresh_id())


@pytest.fixture(scope="module")
def keyed_agent(keyed: Server) -> int:
    return keyed.add_agent(fresh_id())


@pytest.fixture(scope="module")
def keyed(server_factory: Callable[..., Server]) -> Server:
    return server_factory(BACKEND_API_KEY=KEY)


def call(server: Server, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, str, object]:
    """One request with exactly these headers (urllib would add a Content-Type of its own)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=15)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        payload = resp.read()
        content_type = resp.getheader("Content-Type", "")
    finally:
        conn.close()
    try:
        return resp.status, content_type, json.loads(payload)
    except ValueError:
        return resp.status, content_type, payload


def post_json(server: Server, path: str, obj: object, headers: dict[str, str] | None = None) -> tuple[int, object]:
    status, _, body = call(server, "POST", path, json.dumps(obj).encode(),
                           {"Content-Type": "application/json", **(headers or {})})
    return status, body


def messages_of(server: Server, session_id: int, headers: dict[str, str] | None = None) -> list[dict]:
    status, _, body = call(server, "GET", f"/api/sessions/{session_id}/messages?limit=500", headers=headers)
    assert status == 200, body
    return body["messages"]


# -- item 7: cross-site requests -------------------------------------------------------------------------------

@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                                          None, "application/jsonp", "text/json"])
def test_a_body_that_is_not_declared_json_is_refused_415_and_changes_nothing(server: Server, agent: int,
                                                                              content_type: str | None) -> None:
    """A cross-site page can POST text/plain or a form without a preflight: 415, nothing stored or closed."""
    customer = fresh_id()
    session_id = server.open_session(customer)
    headers = {"Content-Type": content_type} if content_type else {}
    body = json.dumps({"content": "forged", "sender_id": agent}).encode()
    for path in (f"/api/sessions/{session_id}/messages", f"/api/sessions/{session_id}/close", "/api/sessions"):
        status, media, answer = call(server, "POST", path, body, headers)
        assert (status, answer) == (415, WRONG_TYPE), (path, status, answer)
        assert media.startswith("application/json")
    assert messages_of(server, session_id) == []
    assert server.http("GET", f"/api/sessions/{session_id}")[1]["status"] == "active"


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "Application/JSON"])
def test_a_json_body_is_accepted_whatever_its_parameters(server: Server, content_type: str) -> None:
    """application/json (with a charset, any case) is accepted; a POST without a body needs no Content-Type."""
    customer = fresh_id()
    session_id = server.open_session(customer)
    status, _, answer = call(server, "POST", f"/api/sessions/{session_id}/messages",
                             json.dumps({"content": "hello"}).encode(),
                             {"Content-Type": content_type, "X-User-Id": str(customer)})
    assert status == 201, answer
    status, _, answer = call(server, "POST", f"/api/sessions/{session_id}/close", None, {"X-User-Id": str(customer)})
    assert status == 200 and answer["status"] == "closed", answer


@pytest.mark.parametrize("headers,status,code", [
    ({}, 401, "unauthenticated"),
    ({"X-Api-Key": "wrong"}, 401, "auth_failed"),
    ({"Authorization": "Bearer wrong"}, 401, "auth_failed"),
    ({"Authorization": f"Basic {KEY}"}, 401, "unauthenticated"),
    ({"X-Api-Key": KEY}, 201, None),
    ({"Authorization": f"Bearer {KEY}"}, 201, None),
], ids=["none", "wrong-x-api-key", "wrong-bearer", "not-bearer", "x-api-key", "bearer"])
def test_with_backend_api_key_the_backend_must_present_it(keyed: Server, keyed_agent: int, headers: dict[str, str],
                                                          status: int, code: str | None) -> None:
    """BACKEND_API_KEY set: a call without X-User-Id must send the key (X-Api-Key or Bearer), else 401."""
    customer, agent = fresh_id(), keyed_agent
    _, opened = post_json(keyed, "/api/sessions", {"user_id": customer}, {"X-Api-Key": KEY})
    got, answer = post_json(keyed, f"/api/sessions/{opened['id']}/messages", {"content": "hi", "sender_id": agent},
                            headers)
    assert got == status, answer
    if code is not None:
        assert answer["code"] == code
        assert messages_of(keyed, opened["id"], {"X-Api-Key": KEY}) == []
        got, _, answer = call(keyed, "POST", f"/api/sessions/{opened['id']}/close", None, headers)
        assert (got, answer["code"]) == (status, code)
        got, _, answer = call(keyed, "GET", "/api/reports/summary", None, headers)
        assert (got, answer["code"]) == (status, code)
    else:
        assert answer["sender_id"] == agent and answer["content"] == "hi"


def test_with_backend_api_key_users_still_call_with_x_user_id(keyed: Server) -> None:
    """The key is the backend's only: a customer naming itself in X-User-Id needs none."""
    customer = fresh_id()
    status, session = post_json(keyed, "/api/sessions", {}, {"X-User-Id": str(customer)})
    assert status == 201, session
    status, message = post_json(keyed, f"/api/sessions/{session['id']}/messages", {"content": "hi"},
                                {"X-User-Id": str(customer)})
    assert status == 201 and message["sender_id"] == customer


# -- item 6: the rate limit ------------------------------------------------------------------------------------

def test_http_posts_are_rate_limited_per_user_like_send_message(server: Server) -> None:
    """RATE_BURST=5, RATE_LIMIT=2: 30 quick posts from one customer store ~5; the rest get 429 rate_limited."""
    customer = fresh_id()
    session_id = server.open_session(customer)
    answers = [post_json(server, f"/api/sessions/{session_id}/messages", {"content": f"m{i}"},
                         {"X-User-Id": str(customer)}) for i in range(30)]
    accepted = [body for status, body in answers if status == 201]
    refused = [(status, body) for status, body in answers if status != 201]
    assert 5 <= len(accepted) <= 10, answers
    assert all(r == (429, RATE_LIMITED) for r in refused), refused
    assert [m["content"] for m in messages_of(server, session_id)] == [m["content"] for m in accepted]
    other = fresh_id()  # another user's budget is their own
    other_session = server.open_session(other)
    assert post_json(server, f"/api/sessions/{other_session}/messages", {"content": "x"},
                     {"X-User-Id": str(other)})[0] == 201


def test_the_trusted_backend_is_not_rate_limited(server: Server) -> None:
    """The backend posts for every user: 30 posts as one sender all get 201."""
    customer = fresh_id()
    session_id = server.open_session(customer)
    for i in range(30):
        status, body = post_json(server, f"/api/sessions/{session_id}/messages", {"content": f"b{i}",
                                                                                  "sender_id": customer})
        assert status == 201, (i, body)
    assert len(messages_of(server, session_id)) == 30


# -- item 8: 4xx, not 500 --------------------------------------------------------------------------------------

@pytest.mark.parametrize("body", [b"[" * 100_000, b"{\"a\":" * 50_000, b'{"content":' + b"[" * 20 + b"]" * 20 + b"}",
                                  b"\xff\xfe", b"{", b"[]", b"null", b"1e99999"],
                         ids=["100k-brackets", "50k-objects", "depth-21", "not-utf8", "truncated", "array", "null",
                              "huge-float"])
@pytest.mark.parametrize("path", ["/api/sessions", "/api/sessions/{sid}/messages"])
def test_a_malformed_or_too_deep_json_body_is_400(server: Server, body: bytes, path: str) -> None:
    """Bodies that would have been a RecursionError (500) or that nest past MAX_JSON_DEPTH: 400 消息格式错误."""
    customer = fresh_id()
    session_id = server.open_session(customer)
    status, media, answer = call(server, "POST", path.format(sid=session_id), body,
                                 {"Content-Type": "application/json", "X-User-Id": str(customer)})
    assert (status, answer) == (400, BAD_FORMAT), (status, answer)
    assert media.startswith("application/json")
    assert messages_of(server, session_id) == []


@pytest.mark.parametrize("query", ["to=0001-01-03", "to=0001-01-01", "from=0001-01-01&to=0001-01-02",
                                   "from=9999-12-31&to=9999-12-31", "to=9999-12-31", "from=1969-12-31",
                                   "to=2024-02-30", "to=99999-01-01", "to=2024-1-1", "from=%00",
                                   "to=%EF%BC%92%EF%BC%90%EF%BC%92%EF%BC%94-01-01"])
@pytest.mark.parametrize("report", ["summary", "agents"])
def test_report_ranges_at_the_ends_of_the_calendar_are_400(server: Server, query: str, report: str) -> None:
    """Days whose range overflowed the date type (a 500) and impossible days answer 400 参数无效."""
    status, _, answer = call(server, "GET", f"/api/reports/{report}?{query}")
    assert (status, answer) == (400, INVALID), (query, status, answer)


@pytest.mark.parametrize("path,query", [
    ("/api/sessions", "limit=99999999999999999999999"), ("/api/sessions", "limit=-1"), ("/api/sessions", "limit=1.5"),
    ("/api/sessions", "limit="), ("/api/sessions", "before_id=9223372036854775808"), ("/api/sessions", "limit=%00"),
    ("/api/sessions", "status=%ff"), ("/api/sessions", "limit=%D9%A3"), ("/api/sessions", "before_id=1e3"),
    ("/api/sessions/{sid}/messages", "after_id=9223372036854775808"), ("/api/sessions/{sid}/messages", "after_id=1e3"),
    ("/api/sessions/{sid}/messages", "limit=99999999999999999999999"), ("/api/sessions/{sid}/messages", "limit=0"),
    ("/api/sessions/{sid}/messages", "after_id=%EF%BC%91"), ("/api/sessions/99999999999999999999", ""),
    ("/api/sessions/-1/messages", ""), ("/api/sessions/%00", ""), ("/api/sessions/1e3/close", ""),
])
def test_bad_query_arguments_and_ids_are_4xx(server: Server, path: str, query: str) -> None:
    """Huge, negative, fractional, empty and non-ASCII-digit numbers in queries and paths: 4xx with a JSON error."""
    customer = fresh_id()
    session_id = server.open_session(customer)
    method = "POST" if path.endswith("/close") else "GET"
    status, media, answer = call(server, method, f"{path.format(sid=session_id)}?{query}",
                                 headers={"X-User-Id": str(customer)})
    assert 400 <= status < 500 and isinstance(answer, dict) and answer.get("code"), (path, query, status, answer)
    assert media.startswith("application/json")


@pytest.mark.parametrize("header", ["99999999999999999999999", "-1", "1e3", "١٢", " ", "0x10"])
def test_bad_user_id_headers_are_401(server: Server, header: str) -> None:
    """An X-User-Id that is not an id: 401 with a JSON error, never a 500."""
    status, _, answer = call(server, "GET", "/api/sessions", headers={"X-User-Id": header.encode().decode("latin-1")})
    assert status == 401 and answer["code"] in ("invalid_user_id", "unauthenticated"), (header, status, answer)
