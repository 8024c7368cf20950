"""Baseline (c): an echo server on the `websockets` library, asyncio + uvloop (what a Python user would pick).

    python -m bench.ws_echo PORT
"""

from __future__ import annotations

import asyncio
import sys

import uvloop
from websockets.asyncio.server import serve


async def echo(ws) -> None:
    async for message in ws:
        await ws.send(message)


async def main(port: int) -> None:
    async with serve(echo, "127.0.0.1", port, compression=None, max_size=2**20, ping_interval=None):
        await asyncio.Future()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
