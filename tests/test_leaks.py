"""Nothing internal reaches a client: no traceback, SQL, file path or library version, even when things break."""

from __future__ import annotations

import re
import socket

import pytest
from conftest import need_mariadb
from rawws import OP_TEXT, RawWebSocket, frame

from support import Server, create_mariadb_database, drop_mariadb_database, fresh_id

LEAK = re.compile(r"Traceback|File \"|\.py\b|sqlalchemy|pymysql|mysql|sqlite|SELECT|INSERT|/work/|/tmp/|gunicorn/|"
                  r"gevent|werkzeug|flask|Python/|\b\d+\.\d+\.\d+\b", re.IGNORECASE)
DOWN = {"error": "服务暂时不可用", "code": "storage_unavailable"}


@pytest.fixture(scope="module")
def plain_server(server_factory) -> Server:
    return server_factory()


def assert_clean(text: str) -> None:
    match = LEAK.search(text)
    assert match is None, f"leaks {match.group(0)!r}: {text[:300]}"


def raw_http(port: int, request: bytes) -> str:
    """The answer to one raw request: until the server closes, or 2 s of silence after a complete answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(request)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks).decode("utf-8", "replace")


def test_database_outage_answers_generic_text_and_logs_details(server_factory) -> None:
    """With the database gone: 503 服务暂时不可用 / 消息发送失败 on every path, details only in the server log."""
    need_mariadb()
    url, name = create_mariadb_database()
    try:
        server: Server = server_factory(database_url=url)
        customer = fresh_id()
        session_id = server.open_session(customer)
        c = server.client(customer)
        c.join(session_id)
        drop_mariadb_database(name)

        c.say(session_id, "into the void")
        reply = c.recv()
        assert reply["type"] == "error" and reply["error"] in ("消息发送失败", "服务暂时不可用"), reply
        fresh = server.client()
        assert fresh.request({"type": "auth", "user_id": fresh_id()}) == {"type": "error", **DOWN}
        for method, path, body in (("GET", f"/api/sessions/{session_id + 1}", None), ("GET", "/api/sessions", None),
                                   ("POST", "/api/sessions", {"user_id": fresh_id()}),
                                   ("POST", f"/api/sessions/{session_id}/close", None)):
            status, answer = server.http(method, path, body, {"X-User-Id": str(customer)})
            assert (status, answer) == (503, DOWN), (method, path, answer)
        assert_clean(str(server.http("GET", "/readyz")[1]) + str(reply))
        assert c.request({"type": "ping"}) == {"type": "pong"}  # the connection survives the outage
        log = server.log()
        assert "storage unavailable" in log or "message not stored" in log
        assert c.connection_id in log or fresh.connection_id in log
        c.close()
        fresh.close()
    finally:
        drop_mariadb_database(name)


@pytest.mark.parametrize("request_bytes", [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 2000 + b"\r\n",
    b"POST /api/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5\r\n"
    b"Connection: close\r\n\r\n{bad}",
    b"POST /api/sessions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"DELETE /api/sessions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET /api/sessions/1 HTTP/1.1\r\nHost: x\r\nX-User-Id: 1'; DROP TABLE x;--\r\nConnection: close\r\n\r\n",
    b"POST /api/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2000000\r\n"
    b"Connection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.0\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n",
], ids=["garbage", "bad-length", "long-uri", "many-headers", "bad-json", "bad-chunk", "method", "traversal",
        "sql-in-header", "huge-body", "upgrade-without-key", "upgrade-http10"])
def test_malformed_http_gets_a_plain_answer(plain_server: Server, request_bytes: bytes) -> None:
    """Broken HTTP of every kind is answered (or dropped) with no internals and no Server header."""
    answer = raw_http(plain_server.port, request_bytes)
    head, _, body = answer.partition("\r\n\r\n")
    assert "server:" not in head.lower()
    assert_clean(body)
    assert not head or re.match(r"HTTP/1\.[01] [1-5]\d\d ", head)
    assert not head.startswith("HTTP/1.1 5")


def test_websocket_errors_carry_only_the_problem_texts(plain_server: Server) -> None:
    """Close reasons and error frames of a misbehaving client name the problem, nothing internal."""
    ws = RawWebSocket(plain_server.port, "/")
    try:
        ws.recv_data()
        for payload in (b"{", b'{"type":"auth","user_id":{"$gt":""}}', b'{"type":"send_message","session_id":1}',
                        b'{"type":"join_session","session_id":"1 OR 1=1"}'):
            ws.send(frame(OP_TEXT, payload))
            reply = ws.recv_data().payload.decode()
            assert '"type":"error"' in reply
            assert_clean(reply)
        ws.send(frame(OP_TEXT, b"\xff"))
        closing = ws.recv_frame()
        assert_clean(closing.payload[2:].decode())
    finally:
        ws.close()
