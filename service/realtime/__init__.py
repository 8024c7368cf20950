"""The realtime core: the WebSocket route on `/`, the handshake policy, and the per-worker hub."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import gevent
from flask import Flask, Response, request

from ..config import Settings
from . import activity as _activity  # noqa: F401  (read and typing handlers)
from . import handlers as _handlers  # noqa: F401  (fills the handler table)
from .connection import Connection
from .hub import ChatHub
from .websocket import CLOSE_NORMAL, ChatWebSocket

log = logging.getLogger(__name__)

PLAIN_TEXT = "Customer-service chat server. Connect with a WebSocket client to ws://<host>:<port>/.\n"


class HandshakePolicy:
    """Decides, before the 101, whether a WebSocket may open; read by ChatHandler from the app."""

    def __init__(self, settings: Settings) -> None:
        self.allowed_origins = set(settings.allowed_origins)
        self.max_per_ip = settings.max_connections_per_ip
        self.max_message_bytes = settings.max_frame_bytes
        self.handshake_timeout = settings.handshake_timeout
        self.paths = {"/", settings.websocket_echo_path} - {""}
        self._per_ip: Counter[str] = Counter()

    def refusal(self, environ: dict[str, Any]) -> tuple[int, str] | None:
        if environ.get("PATH_INFO", "/") not in self.paths:
            # Otherwise the 101 is sent and the app's 404 closes the socket at once, with nothing said.
            return 404, "Not Found"
        origin = environ.get("HTTP_ORIGIN")
        if self.allowed_origins and origin is not None and origin.rstrip("/").lower() not in self.allowed_origins:
            log.info("origin refused", extra={"origin": origin})
            return 403, "Forbidden"
        ip = environ.get("REMOTE_ADDR", "")
        if self.max_per_ip and self._per_ip[ip] >= self.max_per_ip:
            log.info("too many connections from one address", extra={"remote_addr": ip})
            return 429, "Too Many Requests"
        return None

    def open(self, environ: dict[str, Any]) -> str:
        """Count a WebSocket from the moment it is accepted (before the 101); `release` it when it ends."""
        ip = environ.get("REMOTE_ADDR", "")
        self._per_ip[ip] += 1
        return ip

    def release(self, ip: str) -> None:
        self._per_ip[ip] -= 1
        if self._per_ip[ip] <= 0:
            del self._per_ip[ip]


def init_realtime(app: Flask, hub: ChatHub) -> None:
    """Register `/` (WebSocket, and a short text for plain GET) and the optional echo endpoint."""
    policy = HandshakePolicy(hub.settings)
    app.extensions["chat_hub"] = hub
    app.chat_handshake = policy  # read by ChatHandler (the server's handler class) before the 101

    def websocket_view() -> Response:
        ws = request.environ.get("wsgi.websocket")
        if not isinstance(ws, ChatWebSocket):
            return Response(PLAIN_TEXT, mimetype="text/plain")
        Connection(hub, ws, request.environ.get("REMOTE_ADDR", "")).serve()
        return Response("", status=200)

    def plain_view() -> Response:
        return Response(PLAIN_TEXT, mimetype="text/plain")

    app.add_url_rule("/", "websocket", websocket_view, websocket=True)
    app.add_url_rule("/", "index", plain_view, methods=["GET", "HEAD"])

    echo_path = hub.settings.websocket_echo_path
    if echo_path:
        log.warning("diagnostics echo endpoint enabled at %s", echo_path)

        def echo_view() -> Response:
            ws = request.environ.get("wsgi.websocket")
            if not isinstance(ws, ChatWebSocket):
                return Response("WebSocket echo endpoint (diagnostics)\n", mimetype="text/plain")
            serve_echo(ws, hub.settings.heartbeat_timeout)
            return Response("", status=200)

        app.add_url_rule(echo_path, "echo", echo_view, websocket=True)
        app.add_url_rule(echo_path, "echo_plain", echo_view, methods=["GET"])


def serve_echo(ws: ChatWebSocket, idle_timeout: float) -> None:
    """Echo every message back through the same framing, limits and close handling as the chat route."""
    ws._socket.settimeout(idle_timeout)
    while True:
        try:
            message = ws.receive_message()
        except TimeoutError:
            ws.close(CLOSE_NORMAL, "idle timeout")
            return
        if message is None:
            return
        ws.send(message, binary=isinstance(message, bytes))
        gevent.sleep(0)  # a client whose next frame is already buffered must not starve the others
