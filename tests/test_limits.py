"""Each limit of the security configuration, hit over a real socket, without disturbing other clients."""

from __future__ import annotations

import json
import socket
import time

import pytest
from rawws import OP_TEXT, RawWebSocket, frame

from support import Server, fresh_id

ORIGIN = "https://chat.example.com"


@pytest.fixture(scope="module")
def limited(server_factory) -> Server:
    return server_factory(RATE_LIMIT=2, RATE_BURST=5, HANDSHAKE_TIMEOUT=1, HEARTBEAT_TIMEOUT=2,
                          ALLOWED_ORIGINS=f"{ORIGIN}, https://other.example.com/", WEBSOCKET_ECHO_PATH="/echo")


def wait_until(check, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def test_oversize_frame_closed_1009_before_payload_while_others_work(limited: Server) -> None:
    """A header announcing 1 MB closes at once with 1009 (the payload is never sent); other clients carry on."""
    user = fresh_id()
    session_id = limited.open_session(user)
    other = limited.client(user, origin=ORIGIN)
    other.join(session_id)
    ws = RawWebSocket(limited.port, "/", timeout=3)
    try:
        ws.recv_data()
        started = time.monotonic()
        ws.send(frame(OP_TEXT, b"", length=1024 * 1024) + b"only a few bytes of it")
        assert ws.expect_close() == 1009
        assert time.monotonic() - started < 2
    finally:
        ws.close()
    other.say(session_id, "still here")
    assert other.recv_type("new_message")["message"]["content"] == "still here"
    other.close()


@pytest.mark.parametrize("depth,answer", [(16, "pong"), (17, "error"), (32_000, "error")])
def test_json_nesting_deeper_than_the_limit_is_a_format_error(limited: Server, depth: int, answer: str) -> None:
    """MAX_JSON_DEPTH (16): the object itself counts; deeper frames get 消息格式错误 and the connection stays."""
    c = limited.client(origin=ORIGIN)
    nested = "[" * (depth - 1) + "]" * (depth - 1)
    reply = c.request(f'{{"type":"ping","x":{nested}}}' if depth < 1000 else '{"type":"ping","x":' + nested + "}")
    assert reply["type"] == answer
    if answer == "error":
        assert reply["error"] == "消息格式错误"
    assert c.request({"type": "ping"}) == {"type": "pong"}
    c.close()


def test_message_flood_is_refused_and_nothing_refused_is_stored(limited: Server) -> None:
    """Past RATE_BURST messages, send_message answers 发送过于频繁 and only the answered messages are stored."""
    user = fresh_id()
    session_id = limited.open_session(user)
    c = limited.client(user, origin=ORIGIN)
    for i in range(15):
        c.say(session_id, f"flood {i}")
    delivered, refused = [], 0
    for _ in range(15):
        frame_ = c.recv()
        if frame_["type"] == "new_message":
            delivered.append(frame_["message"]["content"])
        else:
            assert frame_ == {"type": "error", "error": "发送过于频繁", "code": "rate_limited"}
            refused += 1
    assert 5 <= len(delivered) <= 7 and refused == 15 - len(delivered)
    status, body = limited.http("GET", f"/api/sessions/{session_id}/messages?limit=100")
    assert status == 200 and [m["content"] for m in body["messages"]] == delivered
    c.close()


def test_garbage_flood_of_any_frame_is_bounded(limited: Server) -> None:
    """Frames of any type beyond 5x the rate are refused unparsed; the connection recovers when the flood stops."""
    c = limited.client(origin=ORIGIN)
    count = 100
    for _ in range(count):
        c.send("not json")
    answers = [c.recv()["error"] for _ in range(count)]
    assert answers.count("消息格式错误") >= 25 and answers.count("发送过于频繁") >= count - 30
    assert wait_until(lambda: c.request({"type": "ping"}) == {"type": "pong"})
    c.close()


def test_connections_per_ip_refused_at_handshake(server_factory) -> None:
    """MAX_CONNECTIONS_PER_IP=3: the fourth WebSocket from one address gets HTTP 429; a freed slot is reusable."""
    server = server_factory(MAX_CONNECTIONS_PER_IP=3)
    clients = [server.client() for _ in range(3)]
    refused = RawWebSocket(server.port, "/")
    assert refused.status == 429 and refused.tcp_closed()
    refused.close()
    status, _ = server.http("GET", "/healthz")
    assert status == 200  # plain HTTP is not counted
    clients.pop().close()
    assert wait_until(lambda: RawWebSocket(server.port, "/").status == 101)
    for c in clients:
        c.close()
    server.stop()


def test_client_that_never_finishes_the_handshake_is_dropped(limited: Server) -> None:
    """HANDSHAKE_TIMEOUT=1: silent TCP and a request dribbled byte by byte are both cut off; others unaffected."""
    silent = socket.create_connection(("127.0.0.1", limited.port), timeout=5)
    dribbler = socket.create_connection(("127.0.0.1", limited.port), timeout=5)
    started = time.monotonic()
    request = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nX-Slow: " + b"a" * 200
    dropped_at = None
    for byte in request:
        try:
            dribbler.send(bytes([byte]))
        except OSError:
            dropped_at = time.monotonic() - started
            break
        time.sleep(0.05)  # the pace of the attack under test, not a wait for the server
        if dropped_at is None and time.monotonic() - started > 4:
            break
    assert silent.recv(1024) == b""
    assert time.monotonic() - started < 4
    dribbler.settimeout(2)
    try:
        tail = dribbler.recv(1024)
        assert tail == b"" or tail.startswith(b"HTTP/1.1 4")
    except ConnectionResetError:
        pass
    silent.close()
    dribbler.close()
    c = limited.client(origin=ORIGIN)
    assert c.request({"type": "ping"}) == {"type": "pong"}
    c.close()


@pytest.mark.parametrize("origin,status", [
    (ORIGIN, 101), (ORIGIN.upper() + "/", 101), ("https://other.example.com", 101), (None, 101),
    ("https://evil.example.com", 403), ("null", 403), ("https://chat.example.com.evil.com", 403),
])
def test_allowed_origins_checked_at_the_handshake(limited: Server, origin: str | None, status: int) -> None:
    """Browsers from other origins get 403 before the upgrade; clients without Origin (not browsers) are let in."""
    ws = RawWebSocket(limited.port, "/", headers={"Origin": origin} if origin else {})
    try:
        assert ws.status == status
        if status == 101:
            assert json.loads(ws.recv_data().payload)["type"] == "connected"
        else:
            assert ws.tcp_closed()
    finally:
        ws.close()


def test_idle_connection_closed_and_pinging_one_kept(limited: Server) -> None:
    """HEARTBEAT_TIMEOUT=2: silence is closed with 1000; a client pinging each second stays open past it."""
    idle = RawWebSocket(limited.port, "/", timeout=5)
    busy = limited.client(origin=ORIGIN)
    started = time.monotonic()
    while time.monotonic() - started < 3:
        assert busy.request({"type": "ping"}) == {"type": "pong"}
        time.sleep(0.5)  # the client's own ping interval
    idle.recv_data()
    assert idle.expect_close() == 1000
    assert busy.request({"type": "ping"}) == {"type": "pong"}
    busy.close()
    idle.close()


def test_echo_endpoint_has_the_same_limits(limited: Server) -> None:
    """The diagnostics echo path refuses foreign origins, closes oversize with 1009 and idles out like `/`."""
    assert RawWebSocket(limited.port, "/echo", headers={"Origin": "https://evil.example.com"}).status == 403
    big = RawWebSocket(limited.port, "/echo", headers={"Origin": ORIGIN})
    idle = RawWebSocket(limited.port, "/echo", timeout=5)
    try:
        big.send(frame(OP_TEXT, b"", length=65537))
        assert big.expect_close() == 1009
        idle.send(frame(OP_TEXT, "回声".encode()))
        assert idle.recv_data().payload == "回声".encode()
        assert idle.expect_close() == 1000  # HEARTBEAT_TIMEOUT=2
    finally:
        big.close()
        idle.close()


def test_echo_endpoint_is_off_by_default_and_unknown_paths_never_upgrade(server_factory) -> None:
    """Without WEBSOCKET_ECHO_PATH there is no /echo; a WebSocket handshake to any path but `/` gets 404."""
    server = server_factory()
    for path in ("/echo", "/api/sessions", "/nope"):
        ws = RawWebSocket(server.port, path)
        assert ws.status == 404, (path, ws.response)
        ws.close()
    assert server.http("GET", "/echo")[0] == 404
    server.stop()
