"""What the console and the customer page need from HTTP, over real sockets on both databases: the pages and
their files with a same-origin CSP, who-am-I with the API's identities, and scrolling back (`before_id`)."""

from __future__ import annotations

import socket

import pytest

from support import Server, fresh_id


def raw_get(server: Server, path: str, host: str) -> tuple[str, dict[str, str]]:
    """A GET with a chosen Host header (urllib would always send the real one)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode("latin-1"))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}
    return head[0], headers


@pytest.mark.parametrize("path", ["/console/", "/chat/", "/web/common.js", "/web/console.js", "/web/chat.js",
                                  "/web/common.css", "/web/console.css", "/web/chat.css", "/web/whoami"])
def test_pages_and_files_allow_only_the_services_own_origin(chat_server: Server, path: str) -> None:
    """Each page and file carries a CSP naming only 'self' and this host's ws/wss origin, and no sniffing."""
    status, headers = raw_get(chat_server, path, f"127.0.0.1:{chat_server.port}")
    assert " 200 " in status
    host = f"127.0.0.1:{chat_server.port}"
    assert headers["content-security-policy"] == (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        f"connect-src 'self' ws://{host} wss://{host}; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"


def test_a_strange_host_header_never_reaches_the_policy(chat_server: Server) -> None:
    """A Host that is not a host name (a broken proxy) leaves the WebSocket origin out rather than inject text."""
    status, headers = raw_get(chat_server, "/console/", "evil.test; script-src *")
    assert " 200 " in status
    assert "evil" not in headers["content-security-policy"]
    assert "connect-src 'self';" in headers["content-security-policy"]


def test_only_the_pages_files_are_served(chat_server: Server) -> None:
    """Nothing else under /web/ (no directory listing, no source files, no traversal)."""
    for path in ("/web/", "/web/__init__.py", "/web/..%2F__init__.py", "/web/static", "/console/console.js"):
        assert chat_server.http("GET", path)[0] == 404, path
    status, page = chat_server.http("GET", "/console/")
    assert status == 200 and "<script" in page and "http" not in page.replace("http-equiv", "")  # nothing remote


def test_whoami_answers_with_the_apis_identities(chat_server: Server, agent_id: int) -> None:
    """The mode alone without an identity; the user and whether an agent with one; a bad id is refused."""
    assert chat_server.http("GET", "/web/whoami") == (200, {"auth_mode": "trust", "user_id": None, "is_agent": False})
    customer = fresh_id()
    assert chat_server.http("GET", "/web/whoami", headers={"X-User-Id": str(customer)}) == (
        200, {"auth_mode": "trust", "user_id": customer, "is_agent": False})
    assert chat_server.http("GET", "/web/whoami", headers={"X-User-Id": str(agent_id)}) == (
        200, {"auth_mode": "trust", "user_id": agent_id, "is_agent": True})
    status, body = chat_server.http("GET", "/web/whoami", headers={"X-User-Id": "abc"})
    assert status == 401 and body["code"] == "invalid_user_id"
    status, body = chat_server.http("GET", "/web/whoami", headers={"Authorization": "Bearer x"})
    assert status == 401 and body["code"] == "unauthenticated"  # trust mode: a token is nobody's identity here


def test_before_id_scrolls_back_page_by_page_without_gaps_or_repeats(chat_server: Server) -> None:
    """before_id gives the `limit` newest messages before the cursor, oldest first; with after_id, a window."""
    customer = fresh_id()
    session_id = chat_server.open_session(customer)
    path = f"/api/sessions/{session_id}/messages"
    ids = []
    for i in range(7):
        status, body = chat_server.http("POST", path, {"content": f"m{i}"}, headers={"X-User-Id": str(customer)})
        assert status == 201
        ids.append(body["id"])
    seen: list[int] = []
    cursor = 2**63 - 1
    while True:
        status, body = chat_server.http("GET", f"{path}?before_id={cursor}&limit=3",
                                        headers={"X-User-Id": str(customer)})
        assert status == 200
        page = [m["id"] for m in body["messages"]]
        assert page == sorted(page)
        seen = page + seen
        if len(page) < 3:
            break
        cursor = page[0]
    assert seen == ids
    status, body = chat_server.http("GET", f"{path}?before_id={ids[5]}&after_id={ids[1]}&limit=50",
                                    headers={"X-User-Id": str(customer)})
    assert [m["id"] for m in body["messages"]] == ids[2:5]
    status, body = chat_server.http("GET", f"{path}?before_id={ids[0]}", headers={"X-User-Id": str(customer)})
    assert (status, body) == (200, {"messages": []})
    assert chat_server.http("GET", f"{path}?before_id={ids[3]}&limit=2", headers={"X-User-Id": str(customer)})[1] == {
        "messages": chat_server.http("GET", f"{path}?after_id={ids[0]}&limit=2",
                                     headers={"X-User-Id": str(customer)})[1]["messages"]}


@pytest.mark.parametrize("query", ["?before_id=0", "?before_id=-1", "?before_id=x", "?before_id=", "?before_id=1.5"])
def test_a_bad_before_id_is_refused(chat_server: Server, query: str) -> None:
    """A before_id that is not a positive id is 参数无效 (400), like a bad after_id."""
    customer = fresh_id()
    session_id = chat_server.open_session(customer)
    status, body = chat_server.http("GET", f"/api/sessions/{session_id}/messages{query}",
                                    headers={"X-User-Id": str(customer)})
    assert status == 400 and body["code"] == "invalid_parameter", body


def test_before_id_keeps_the_sessions_authorization(chat_server: Server) -> None:
    """Another customer's history is refused with before_id as without it."""
    owner, other = fresh_id(), fresh_id()
    session_id = chat_server.open_session(owner)
    status, body = chat_server.http("GET", f"/api/sessions/{session_id}/messages?before_id=99",
                                    headers={"X-User-Id": str(other)})
    assert status == 403 and body["code"] == "forbidden"
