"""Handshakes over a raw socket: bad ones get a 4xx with the body they declare, and none leaks a per-IP slot."""

from __future__ import annotations

import socket
import struct
import time

import pytest
from rawws import RawWebSocket

from support import Server

LIMIT = 3  # MAX_CONNECTIONS_PER_IP of the server under test
GOOD_KEY = "dGhlIHNhbXBsZSBub25jZQ=="


@pytest.fixture(scope="module")
def limited(server_factory) -> Server:
    return server_factory(MAX_CONNECTIONS_PER_IP=LIMIT, HANDSHAKE_TIMEOUT=2)


def exchange(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    """Send `request` as is and read the whole answer (the server closes after a refused handshake)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def upgrade(key: str = GOOD_KEY, version: str | None = "13", http: str = "HTTP/1.1") -> bytes:
    lines = [f"GET / {http}", "Host: 127.0.0.1", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}"]
    if version is not None:
        lines.append(f"Sec-WebSocket-Version: {version}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def parse(answer: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines)}
    return status, headers, body


def all_slots_free(server: Server) -> bool:
    """LIMIT WebSockets from this address open at once (each slot free), then all closed again."""
    deadline = time.monotonic() + 5
    while True:
        sockets = [RawWebSocket(server.port, connect=False, timeout=3) for _ in range(LIMIT)]
        try:
            statuses = [ws.handshake("/", {}) for ws in sockets]
        finally:
            for ws in sockets:
                ws.sock.close()
        if statuses == [101] * LIMIT:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)  # closed sockets are released when the server reads their end: poll for it


@pytest.mark.parametrize("request_bytes,status,header", [
    (upgrade(key="a"), b"HTTP/1.1 400 Bad Request", None),
    (upgrade(key="not base64 at all!!"), b"HTTP/1.1 400 Bad Request", None),
    (upgrade(key="AAAA"), b"HTTP/1.1 400 Bad Request", None),
    (upgrade(key=""), b"HTTP/1.1 400 Bad Request", None),
    (upgrade(version="99"), b"HTTP/1.1 400 Bad Request", b"sec-websocket-version"),
    (upgrade(version=None), b"HTTP/1.1 426 Upgrade Required", b"sec-websocket-version"),
    (upgrade(http="HTTP/1.0"), b"HTTP/1.1 400 Bad Request", None),
], ids=["key-a", "key-not-base64", "key-too-short", "key-empty", "version-99", "no-version", "http-1.0"])
def test_a_bad_upgrade_gets_a_4xx_with_its_body_and_frees_its_slot(limited: Server, request_bytes: bytes,
                                                                      status: bytes, header: bytes | None) -> None:
    """Malformed keys, versions and HTTP/1.0 answer a 4xx whose body matches its Content-Length; 5 in a row
    (more than MAX_CONNECTIONS_PER_IP) leave every per-IP slot free."""
    for _ in range(LIMIT + 2):
        got, headers, body = parse(exchange(limited.port, request_bytes))
        assert got == status, got
        assert int(headers[b"content-length"]) == len(body) > 0, (headers, body)
        assert headers[b"content-type"].startswith(b"text/plain")
        if header is not None:
            assert header in headers
    assert all_slots_free(limited)


def test_handshakes_reset_right_after_the_request_free_their_slots(limited: Server) -> None:
    """20 clients that send a valid upgrade and reset the connection at once (SO_LINGER 0) leak no slot."""
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", limited.port), timeout=3)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.sendall(upgrade())
        sock.close()  # RST, maybe before the 101 is written
    assert all_slots_free(limited)


def test_the_limit_still_refuses_the_next_websocket(limited: Server) -> None:
    """With LIMIT sockets open, the next handshake from the address gets 429 (with its body)."""
    sockets = [RawWebSocket(limited.port, timeout=3) for _ in range(LIMIT)]
    try:
        assert [ws.status for ws in sockets] == [101] * LIMIT
        got, headers, body = parse(exchange(limited.port, upgrade()))
        assert got == b"HTTP/1.1 429 Too Many Requests"
        assert int(headers[b"content-length"]) == len(body) > 0
    finally:
        for ws in sockets:
            ws.sock.close()
    assert all_slots_free(limited)


def answer_head(port: int, request: bytes) -> bytes:
    """The status line and headers the server answers `request` with (without waiting for it to close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := sock.recv(65536)):
            answer += chunk
        return answer


def log_with(server: Server, needle: str, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while needle not in (text := server.log()):
        assert time.monotonic() < deadline, f"{needle!r} never logged"
        time.sleep(0.05)  # the log is a file the server appends to: poll it
    return text


def test_control_characters_in_a_request_are_escaped_in_the_text_log(limited: Server) -> None:
    """Raw ESC bytes in a request line and User-Agent reach the text log as \\x1b, never as a terminal escape."""
    marker = f"esc{time.monotonic_ns()}"
    request = f"GET /{marker}\x1b[2J\x1b]0;owned\x07?q=\x1b[31m HTTP/1.1\r\nHost: x\r\nUser-Agent: ua\x1b[1m\r\n\r\n"
    assert answer_head(limited.port, request.encode("latin-1")).startswith(b"HTTP/1.1 404")
    text = log_with(limited, marker)
    line = next(line for line in text.splitlines() if marker in line)
    assert "\x1b" not in line and "\x07" not in line
    assert f"/{marker}\\x1b[2J\\x1b]0;owned\\x07?q=\\x1b[31m" in line


@pytest.mark.parametrize("raw", [b"GET /\x0bx HTTP/1.1", b"GET /\x1cx\x85 HTTP/1.1",
                                 b"GET /" + b"a" * 9000 + b" HTTP/1.1"],
                         ids=["vertical-tab", "file-separator-nel", "too-long"])
def test_a_request_line_pywsgi_refuses_is_logged_not_a_traceback(limited: Server, raw: bytes) -> None:
    """A request line with \\x0b (split as whitespace by pywsgi) answers 4xx and gets an access line, no traceback."""
    before = limited.log().count("gunicorn.access")
    for _ in range(3):
        assert answer_head(limited.port, raw + b"\r\nHost: x\r\n\r\n").startswith((b"HTTP/1.1 400", b"HTTP/1.1 414"))
    deadline = time.monotonic() + 5
    while limited.log().count("gunicorn.access") < before + 3:
        assert time.monotonic() < deadline, limited.log()[-3000:]
        time.sleep(0.05)  # poll the log file
    text = limited.log()
    assert "Traceback" not in text and "AttributeError" not in text and "TypeError" not in text, text[-3000:]
    assert all_slots_free(limited)
