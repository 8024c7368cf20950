"""RFC 6455 conformance of the WebSocket stack, by category of the Autobahn|Testsuite, over raw sockets.

The echo endpoint (WEBSOCKET_ECHO_PATH) runs on exactly the framing, limits and close handling of the chat
endpoint, so every case here speaks to it with hand-written frames: what each case sends, and the frames
(and close code) the server must answer with. Every case ends with a clean closing handshake in which the
server also ends the TCP connection. Test ids start with the Autobahn category (c1 = 1.*, c2 = 2.*, ...).
"""

from __future__ import annotations

from typing import Any

import pytest
from rawws import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, RawWebSocket, close_payload, frame

from support import Server

MAX = 65536  # MAX_FRAME_BYTES default
Case = tuple[list[bytes], list[tuple[str, Any]]]


def text(payload: bytes, **kw: Any) -> bytes:
    return frame(OP_TEXT, payload, **kw)


def cases() -> dict[str, Case]:
    c: dict[str, Case] = {}
    # 1.* echo of text and binary messages of the sizes where the length encoding changes
    for n in (0, 125, 126, 127, 128, 1000, 65535, MAX):
        c[f"c1-text-{n}"] = ([text(b"*" * n)], [("text", b"*" * n)])
        c[f"c1-binary-{n}"] = ([frame(OP_BINARY, b"\xfe" * n)], [("binary", b"\xfe" * n)])
    # 2.* ping and pong
    c["c2-ping-empty"] = ([frame(OP_PING)], [("pong", b"")])
    c["c2-ping-125-bytes"] = ([frame(OP_PING, bytes(range(125)))], [("pong", bytes(range(125)))])
    c["c2-ping-binary-payload"] = ([frame(OP_PING, b"\x00\xff\xfe\xfd")], [("pong", b"\x00\xff\xfe\xfd")])
    c["c2-ping-126-bytes-too-large"] = ([frame(OP_PING, b"x" * 126)], [("close", 1002)])
    c["c2-unsolicited-pong-ignored"] = ([frame(OP_PONG, b"hi"), text(b"after")], [("text", b"after")])
    c["c2-ten-pings-ten-pongs"] = ([frame(OP_PING, str(i).encode()) for i in range(10)],
                                   [("pong", str(i).encode()) for i in range(10)])
    # 3.* reserved bits
    for rsv in range(1, 8):
        c[f"c3-rsv{rsv}-text"] = ([text(b"hello", rsv=rsv)], [("close", 1002)])
    c["c3-rsv-on-ping"] = ([frame(OP_PING, b"p", rsv=4)], [("close", 1002)])
    c["c3-rsv-after-valid-echo"] = ([text(b"ok"), text(b"bad", rsv=2)], [("text", b"ok"), ("close", 1002)])
    # 4.* reserved opcodes
    for op in (3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF):
        c[f"c4-opcode-{op:x}"] = ([frame(op, b"x")], [("close", 1002)])
    c["c4-reserved-after-valid-echo"] = ([text(b"ok"), frame(5, b"")], [("text", b"ok"), ("close", 1002)])
    # 5.* fragmentation
    c["c5-text-two-fragments"] = ([text(b"frag", fin=False), frame(OP_CONT, b"ment")], [("text", b"fragment")])
    c["c5-binary-three-fragments"] = (
        [frame(OP_BINARY, b"a", fin=False), frame(OP_CONT, b"b", fin=False), frame(OP_CONT, b"c")],
        [("binary", b"abc")])
    c["c5-ping-between-fragments"] = (
        [text(b"one ", fin=False), frame(OP_PING, b"mid"), frame(OP_CONT, b"two")],
        [("pong", b"mid"), ("text", b"one two")])
    c["c5-hundred-one-byte-fragments"] = (
        [text(b"x", fin=False)] + [frame(OP_CONT, b"x", fin=False)] * 98 + [frame(OP_CONT, b"x")],
        [("text", b"x" * 100)])
    c["c5-empty-fragments"] = ([text(b"", fin=False), frame(OP_CONT, b"", fin=False), frame(OP_CONT, b"")],
                               [("text", b"")])
    c["c5-continuation-without-start"] = ([frame(OP_CONT, b"orphan")], [("close", 1002)])
    c["c5-final-continuation-without-start"] = ([frame(OP_CONT, b"x", fin=False)], [("close", 1002)])
    c["c5-new-message-inside-fragmented-one"] = ([text(b"a", fin=False), text(b"b")], [("close", 1002)])
    c["c5-fragmented-ping"] = ([frame(OP_PING, b"a", fin=False), frame(OP_CONT, b"b")], [("close", 1002)])
    c["c5-fragmented-close"] = ([frame(OP_CLOSE, close_payload(1000), fin=False)], [("close", 1002)])
    # 6.* UTF-8
    for name, good in (("ascii", "hello"), ("greek", "κόσμε"), ("cjk", "你好，客服"), ("emoji", "😀🚀"),
                       ("max-code-point", "\U0010ffff"), ("bom-and-nul", "\ufeff\x00")):
        c[f"c6-valid-{name}"] = ([text(good.encode())], [("text", good.encode())])
    split = "κόσμε😀".encode()
    c["c6-valid-split-inside-code-points"] = (
        [text(split[:1], fin=False)] + [frame(OP_CONT, split[i:i + 1], fin=False) for i in range(1, len(split) - 1)]
        + [frame(OP_CONT, split[-1:])], [("text", split)])
    for name, bad in (("byte-ff", b"\xff"), ("overlong-slash", b"\xc0\xaf"), ("surrogate", b"\xed\xa0\x80"),
                      ("beyond-10ffff", b"\xf4\x90\x80\x80"), ("truncated", b"ok\xe2\x82"),
                      ("lone-continuation", b"\x80"), ("invalid-in-middle", "κόσμε".encode() + b"\xed\xa0\x80ok")):
        c[f"c6-invalid-{name}"] = ([text(bad)], [("close", 1007)])
    c["c6-invalid-in-second-fragment"] = ([text(b"fine", fin=False), frame(OP_CONT, b"\xff")], [("close", 1007)])
    c["c6-invalid-split-across-fragments"] = ([text(b"\xf4", fin=False), frame(OP_CONT, b"\x90\x80\x80")],
                                              [("close", 1007)])
    c["c6-truncated-at-message-end"] = ([text(b"\xe2\x82", fin=False), frame(OP_CONT, b"")], [("close", 1007)])
    # 7.* closing handshake: codes and reasons
    c["c7-close-empty"] = ([frame(OP_CLOSE)], [("close", 1000)])
    for code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999):
        c[f"c7-valid-code-{code}"] = ([frame(OP_CLOSE, close_payload(code))], [("close", code)])
    for code in (0, 999, 1004, 1005, 1006, 1016, 1100, 2000, 2999, 5000, 65535):
        c[f"c7-invalid-code-{code}"] = ([frame(OP_CLOSE, close_payload(code))], [("close", 1002)])
    c["c7-one-byte-payload"] = ([frame(OP_CLOSE, b"\x03")], [("close", 1002)])
    c["c7-reason-utf8"] = ([frame(OP_CLOSE, close_payload(1000, "再见".encode()))], [("close", 1000)])
    c["c7-reason-123-bytes"] = ([frame(OP_CLOSE, close_payload(1000, b"r" * 123))], [("close", 1000)])
    c["c7-reason-invalid-utf8"] = ([frame(OP_CLOSE, close_payload(1000, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce"
                                                                    b"\xb5\xed\xa0\x80"))], [("close", 1007)])
    c["c7-data-after-close-ignored"] = ([frame(OP_CLOSE, close_payload(1000)), text(b"late")], [("close", 1000)])
    # 9.* large messages, up to MAX_FRAME_BYTES, and beyond it
    for n in (16384, 32768, MAX):
        c[f"c9-text-{n}"] = ([text(b"a" * n)], [("text", b"a" * n)])
        c[f"c9-binary-{n}"] = ([frame(OP_BINARY, b"\x01" * n)], [("binary", b"\x01" * n)])
    chunks = [b"b" * 4096] * (MAX // 4096)
    c["c9-fragmented-4k-to-limit"] = (
        [text(chunks[0], fin=False)] + [frame(OP_CONT, ch, fin=False) for ch in chunks[1:-1]]
        + [frame(OP_CONT, chunks[-1])], [("text", b"b" * MAX)])
    c["c9-one-byte-over-limit"] = ([text(b"a" * (MAX + 1))], [("close", 1009)])
    c["c9-fragments-over-limit"] = ([text(b"a" * MAX, fin=False), frame(OP_CONT, b"a")], [("close", 1009)])
    c["c9-header-claims-2-62-bytes"] = ([frame(OP_TEXT, b"", length=2**62)],
                                        [("close", 1009)])
    # masking (RFC 6455 5.1)
    c["mask-unmasked-text"] = ([text(b"plain", mask=False)], [("close", 1002)])
    c["mask-unmasked-ping"] = ([frame(OP_PING, b"p", mask=False)], [("close", 1002)])
    return c


CASES = cases()
KINDS = {"text": OP_TEXT, "binary": OP_BINARY, "pong": OP_PONG}


@pytest.fixture(scope="module")
def echo_server(server_factory) -> Server:
    return server_factory(WEBSOCKET_ECHO_PATH="/echo")


@pytest.mark.parametrize("case", list(CASES))
def test_echo_endpoint_conforms(echo_server: Server, case: str) -> None:
    """The server answers each case as RFC 6455 requires, and every connection ends in a clean close."""
    sends, expected = CASES[case]
    ws = RawWebSocket(echo_server.port, "/echo")
    try:
        assert ws.status == 101, ws.response
        for data in sends:
            ws.send(data)
        for kind, value in expected:
            if kind == "close":
                assert ws.expect_close() == value
                return
            got = ws.recv_frame()
            assert (got.opcode, got.fin) == (KINDS[kind], True)
            assert got.payload == value
        ws.send_frame(OP_CLOSE, close_payload(1000))
        assert ws.expect_close(reply=False) == 1000
    finally:
        ws.close()


def test_chat_endpoint_has_the_same_framing(echo_server: Server) -> None:
    """The chat route `/` closes unmasked frames (1002), invalid UTF-8 (1007) and oversize (1009) the same way."""
    for data, code in ((text(b'{"type":"ping"}', mask=False), 1002), (text(b"\xff"), 1007),
                       (frame(OP_TEXT, b"", length=MAX + 1), 1009), (frame(9, b"", rsv=1), 1002)):
        ws = RawWebSocket(echo_server.port, "/")
        try:
            assert ws.recv_data().payload.startswith(b'{"type":"connected"')
            ws.send(data)
            assert ws.expect_close() == code
        finally:
            ws.close()


def test_server_initiated_close_is_answered_and_clean(echo_server: Server) -> None:
    """When the server closes (oversize), a client that answers with its close frame gets a clean TCP end."""
    ws = RawWebSocket(echo_server.port, "/echo")
    try:
        ws.send(frame(OP_TEXT, b"", length=MAX + 10))
        f = ws.recv_frame()
        assert f.opcode == OP_CLOSE and f.close_code == 1009
        ws.send_frame(OP_CLOSE, close_payload(1009))
        assert ws.tcp_closed()
    finally:
        ws.close()
