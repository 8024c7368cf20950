"""Settings that change what the server does on the wire: idle timeout, content limit, time zone."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import websocket

from support import Client, Server, fresh_id

ZONE = "America/Sao_Paulo"  # UTC-3 all year: far from the Asia/Shanghai default and from UTC


@pytest.fixture(scope="module")
def tuned_server(server_factory: Callable[..., Server]) -> Server:
    return server_factory(HEARTBEAT_TIMEOUT=1, MAX_MESSAGE_LENGTH=10, APP_TIMEZONE=ZONE)


def test_silent_client_is_closed_after_heartbeat_timeout(tuned_server: Server) -> None:
    """A connection that sends nothing for HEARTBEAT_TIMEOUT (1 s here) is closed by the server with 1000."""
    client = tuned_server.client(fresh_id())
    started = time.monotonic()
    client.ws.settimeout(10)
    opcode, data = client.ws.recv_data(control_frame=True)
    elapsed = time.monotonic() - started
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    assert struct.unpack("!H", data[:2])[0] == 1000 and data[2:] == b"idle timeout"
    assert 0.5 <= elapsed < 5, elapsed
    client.close()


def test_pinging_client_stays_connected(tuned_server: Server) -> None:
    """A client that pings more often than the timeout stays open well past it."""
    client = tuned_server.client(fresh_id())
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        assert client.request({"type": "ping"}) == {"type": "pong"}
        time.sleep(0.4)  # the client's own ping interval, not a wait for the server
    assert client.barrier() == []
    client.close()


def test_message_length_limit_is_configurable(tuned_server: Server) -> None:
    """MAX_MESSAGE_LENGTH=10: ten characters pass, eleven get 消息内容过长 on the WebSocket and 413 over HTTP."""
    customer = fresh_id()
    session_id = tuned_server.open_session(customer)
    client = Client(tuned_server.ws_url)
    client.auth(customer)
    client.say(session_id, "一二三四五六七八九十")
    assert client.recv_type("new_message")["message"]["content"] == "一二三四五六七八九十"
    client.say(session_id, "x" * 11)
    assert client.recv() == {"type": "error", "error": "消息内容过长", "code": "content_too_long"}
    status, body = tuned_server.http("POST", f"/api/sessions/{session_id}/messages",
                                     {"content": "x" * 11, "sender_id": customer})
    assert (status, body) == (413, {"error": "消息内容过长", "code": "content_too_long"})
    client.close()


def test_times_are_local_to_app_timezone(tuned_server: Server) -> None:
    """created_at of sessions and messages is wall-clock time in APP_TIMEZONE."""
    customer = fresh_id()
    status, session = tuned_server.http("POST", "/api/sessions", {"user_id": customer})
    assert status == 201
    client = tuned_server.client(customer)
    client.say(session["id"], "hora")
    message = client.recv_type("new_message")["message"]
    now = datetime.now(ZoneInfo(ZONE)).replace(tzinfo=None)
    for value in (session["created_at"], message["created_at"]):
        assert abs(datetime.strptime(value, "%Y-%m-%d %H:%M:%S") - now) < timedelta(seconds=60), value
    client.close()
