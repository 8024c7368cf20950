"""Baseline (b): a bare gevent-websocket echo server on gunicorn's GeventWebSocketWorker.

gevent-websocket already validates UTF-8 with wsaccel when it is installed; its unmasking is a pure-Python
loop, which we swap for wsaccel's C masker so the baseline is the stack's best, not its worst. Nothing
else of the service is here: no Flask, no framing of our own, no limits.

    gunicorn -k geventwebsocket.gunicorn.workers.GeventWebSocketWorker -w 1 -b 127.0.0.1:PORT bench.echo_app:app
"""

from __future__ import annotations

from geventwebsocket.websocket import Header
from wsaccel.xormask import XorMaskerSimple


def _mask(payload: bytes, key: bytes) -> bytes:
    """XOR with the 4-byte key, in C (a fresh masker: it keeps its offset between calls)."""
    return XorMaskerSimple(key).process(payload)


def _fast_mask(self: Header, payload: bytes) -> bytes:
    return _mask(bytes(payload), self.mask) if self.mask else payload


Header.mask_payload = _fast_mask
Header.unmask_payload = _fast_mask


def app(environ: dict, start_response) -> list[bytes]:
    ws = environ.get("wsgi.websocket")
    if ws is None:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"echo\n"]
    while True:
        message = ws.receive()
        if message is None:
            return []
        ws.send(message, binary=isinstance(message, bytes))
