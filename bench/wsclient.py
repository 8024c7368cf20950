"""A lean WebSocket client on asyncio Protocol: it builds and parses RFC 6455 frames itself.

The `websockets` library tops out near 10k messages/s on one core; a load generator built on it would
measure itself. Here a frame costs a header pack, one C mask call (wsaccel) and a slice, so one core
drives several times what a gevent worker can answer.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from collections.abc import Callable

from wsaccel.xormask import XorMaskerSimple


def _mask(payload: bytes, key: bytes) -> bytes:
    """XOR with the 4-byte key, in C (a fresh masker: it keeps its offset between calls)."""
    return XorMaskerSimple(key).process(payload)

OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x2, 0x8, 0x9, 0xA

_pack_small = struct.Struct("!BB").pack
_pack_mid = struct.Struct("!BBH").pack
_pack_big = struct.Struct("!BBQ").pack
_unpack_mid = struct.Struct("!H").unpack_from
_unpack_big = struct.Struct("!Q").unpack_from


def client_frame(payload: bytes, key: bytes, opcode: int = OP_TEXT) -> bytes:
    """One final, masked client frame."""
    n = len(payload)
    first = 0x80 | opcode
    if n < 126:
        head = _pack_small(first, 0x80 | n)
    elif n <= 0xFFFF:
        head = _pack_mid(first, 0xFE, n)
    else:
        head = _pack_big(first, 0xFF, n)
    return head + key + _mask(payload, key)


class HandshakeError(Exception):
    pass


class WsClient(asyncio.Protocol):
    """One connection. `on_message(text_bytes)` is called for every text/binary frame, in order."""

    __slots__ = ("transport", "_buf", "_key", "_handshake", "on_message", "closed", "_opened", "errors")

    def __init__(self, on_message: Callable[[bytes], None] | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._key = os.urandom(4)
        self._handshake = True
        self.on_message = on_message or (lambda _data: None)
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.errors = 0

    # -- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if self._handshake:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end])
            del buf[: end + 4]
            self._handshake = False
            if not head.startswith(b"HTTP/1.1 101"):
                if not self._opened.done():
                    self._opened.set_exception(HandshakeError(head.split(b"\r\n", 1)[0].decode("latin-1")))
                self.transport.close()
                return
            self._opened.set_result(None)
        self._parse()

    def _parse(self) -> None:
        buf = self._buf
        pos = 0
        n = len(buf)
        on_message = self.on_message
        while n - pos >= 2:
            b1 = buf[pos]
            length = buf[pos + 1] & 0x7F
            start = pos + 2
            if length == 126:
                if n - pos < 4:
                    break
                (length,) = _unpack_mid(buf, start)
                start += 2
            elif length == 127:
                if n - pos < 10:
                    break
                (length,) = _unpack_big(buf, start)
                start += 8
            end = start + length
            if end > n:
                break
            opcode = b1 & 0x0F
            if opcode == OP_TEXT or opcode == OP_BINARY:
                on_message(bytes(buf[start:end]))
            elif opcode == OP_PING:
                self.transport.write(client_frame(bytes(buf[start:end]), self._key, OP_PONG))
            elif opcode == OP_CLOSE:
                if not self.transport.is_closing():
                    self.transport.write(client_frame(bytes(buf[start:start + 2]), self._key, OP_CLOSE))
                    self.transport.close()
            pos = end
        if pos:
            del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._opened.done():
            self._opened.set_exception(exc or ConnectionResetError("closed during the handshake"))
        if not self.closed.done():
            self.closed.set_result(None)

    # -- API --------------------------------------------------------------------------------------

    def send(self, payload: bytes) -> None:
        self.transport.write(client_frame(payload, self._key))

    def send_many(self, payloads: list[bytes]) -> None:
        key = self._key
        self.transport.write(b"".join(client_frame(p, key) for p in payloads))

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(b"\x03\xe8", self._key, OP_CLOSE))
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def connect(host: str, port: int, path: str = "/", on_message: Callable[[bytes], None] | None = None,
                  timeout: float = 15.0) -> WsClient:
    """Open a TCP connection, send the upgrade request and wait for the 101."""
    loop = asyncio.get_running_loop()
    _transport, proto = await asyncio.wait_for(
        loop.create_connection(lambda: WsClient(on_message), host, port), timeout
    )
    key = base64.b64encode(os.urandom(16)).decode()
    proto.transport.write(
        (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    try:
        await asyncio.wait_for(proto._opened, timeout)
    except BaseException:
        proto.abort()
        raise
    return proto
