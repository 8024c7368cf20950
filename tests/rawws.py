"""A WebSocket client written by hand, frame by frame, to send what a well-behaved library never would."""

from __future__ import annotations

import base64
import os
import socket
import ssl
import struct
from dataclasses import dataclass

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def frame(opcode: int, payload: bytes = b"", fin: bool = True, rsv: int = 0, mask: bool = True,
          length: int | None = None) -> bytes:
    """One client frame; `length` lies about the payload length when given."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    mask_bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([mask_bit | n])
    elif n <= 0xFFFF:
        head += bytes([mask_bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


@dataclass
class Frame:
    fin: bool
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int | None:
        return struct.unpack("!H", self.payload[:2])[0] if self.opcode == OP_CLOSE and len(self.payload) >= 2 else None


class RawWebSocket:
    """Connects and upgrades by hand; then sends raw bytes and reads the server's frames."""

    def __init__(self, port: int, path: str = "/", headers: dict[str, str] | None = None, timeout: float = 5.0,
                 tls: bool = False, connect: bool = True) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            self.sock = ctx.wrap_socket(self.sock, server_hostname="127.0.0.1")
        self.buffer = b""
        self.status = 0
        self.response = b""
        if connect:
            self.handshake(path, headers or {})

    def handshake(self, path: str, headers: dict[str, str]) -> int:
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "Upgrade: websocket", "Connection: Upgrade",
                 f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.buffer += chunk
        self.response, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        self.status = int(self.response.split(b" ", 2)[1]) if self.response else 0
        return self.status

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_frame(self, opcode: int, payload: bytes = b"", **kwargs) -> None:
        self.sock.sendall(frame(opcode, payload, **kwargs))

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the server")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def recv_frame(self) -> Frame:
        b1, b2 = self._read(2)
        assert not b2 & 0x80, "server frames are never masked"
        n = b2 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", self._read(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", self._read(8))
        return Frame(bool(b1 & 0x80), b1 & 0x0F, self._read(n))

    def recv_data(self) -> Frame:
        """The next text or binary frame, skipping pongs."""
        while True:
            f = self.recv_frame()
            if f.opcode != OP_PONG:
                return f

    def expect_close(self, reply: bool = True) -> int | None:
        """Read until the server's close frame (data before it is skipped); answer it; see the TCP end."""
        while True:
            f = self.recv_frame()
            if f.opcode == OP_CLOSE:
                break
        if reply:
            try:
                self.send_frame(OP_CLOSE, f.payload[:2])
            except OSError:
                pass
        assert self.tcp_closed(), "server did not close the TCP connection after the close handshake"
        return f.close_code

    def tcp_closed(self) -> bool:
        """True when the server ends the TCP connection (EOF or reset) within the socket timeout."""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
        except (ConnectionResetError, ssl.SSLError):
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
