"""A trivial echo to measure the load generator's own ceiling: asyncio Protocol + uvloop, frames by hand.

It answers the upgrade without checks and echoes every frame unmasked, so nearly all the CPU of a run
against it is the generator's.

    python -m bench.trivial_echo PORT
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import struct
import sys

import uvloop
from wsaccel.xormask import XorMaskerSimple


def _mask(payload: bytes, key: bytes) -> bytes:
    """XOR with the 4-byte key, in C (a fresh masker: it keeps its offset between calls)."""
    return XorMaskerSimple(key).process(payload)

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Echo(asyncio.Protocol):
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.buf = bytearray()
        self.open = False

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            key = b""
            for line in bytes(buf[:end]).split(b"\r\n"):
                if line.lower().startswith(b"sec-websocket-key:"):
                    key = line.split(b":", 1)[1].strip()
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
            self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            del buf[: end + 4]
            self.open = True
        out = []
        pos, n = 0, len(buf)
        while n - pos >= 6:
            b1, b2 = buf[pos], buf[pos + 1]
            length, start = b2 & 0x7F, pos + 2
            if length == 126:
                (length,) = struct.unpack_from("!H", buf, start)
                start += 2
            elif length == 127:
                (length,) = struct.unpack_from("!Q", buf, start)
                start += 8
            if start + 4 + length > n:
                break
            payload = _mask(bytes(buf[start + 4:start + 4 + length]), bytes(buf[start:start + 4]))
            if (b1 & 0x0F) == 0x8:
                self.transport.write(b"\x88\x02\x03\xe8")
                self.transport.close()
                return
            if length < 126:
                out.append(struct.pack("!BB", b1, length) + payload)
            else:
                out.append(struct.pack("!BBH", b1, 126, length) + payload)
            pos = start + 4 + length
        if pos:
            del buf[:pos]
        if out:
            self.transport.write(b"".join(out))


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
