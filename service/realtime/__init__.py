"""The realtime core: the WebSocket route on `/`, the handshake policy, and the per-worker hub."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import gevent
from flask import Flask, Response

from ..config import Settings
from . import activity as _activity  # noqa: F401  (read and typing handlers)
from . import desk as _desk  # noqa: F401  (the agent desk's handlers)
from . import handlers as _handlers  # noqa: F401  (fills the handler table)
from .connection import Connection
from .hub import ChatHub
from .websocket import CLOSE_NORMAL, ChatWebSocket

log = logging.getLogger(__name__)

PLAIN_TEXT = "Customer-service chat server. Connect with a WebSocket client to ws://<host>:<port>/.\n"


Serve = Callable[[ChatWebSocket, str], None]


class HandshakePolicy:
    """Decides, before the 101, whether a WebSocket may open, and what serves it; read by ChatHandler from the app.

    `routes` maps each WebSocket path to the function that serves an open socket (with the peer's address).
    ChatHandler calls it straight after the 101, outside the WSGI app: a long-lived socket then keeps no
    Flask request, environ or WSGI call stack alive (see ChatHandler.run_websocket).
    """

    def __init__(self, settings: Settings, routes: dict[str, Serve] | None = None) -> None:
        self.allowed_origins = set(settings.allowed_origins)
        self.max_per_ip = settings.max_connections_per_ip
        self.max_message_bytes = settings.max_frame_bytes
        self.handshake_timeout = settings.handshake_timeout
        self.routes = routes or {}
        self.paths = set(self.routes)
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
    """Register `/` (WebSocket, and a short text for plain GET) and the optional echo endpoint.

    The WebSockets themselves are served by ChatHandler through the policy's routes, not by Flask; the
    Flask rules answer the plain HTTP requests on the same paths.
    """
    settings = hub.settings
    routes: dict[str, Serve] = {"/": lambda ws, remote_addr: Connection(hub, ws, remote_addr).serve()}
    echo_path = settings.websocket_echo_path
    if echo_path:
        routes[echo_path] = lambda ws, remote_addr: serve_echo(ws, settings.heartbeat_timeout)
    app.extensions["chat_hub"] = hub
    app.chat_handshake = HandshakePolicy(settings, routes)  # read by ChatHandler (the server's handler class)

    def plain_view() -> Response:
        return Response(PLAIN_TEXT, mimetype="text/plain")

    # A request that asks for a WebSocket but was not upgraded (e.g. not a GET) still reaches Flask.
    app.add_url_rule("/", "websocket", plain_view, websocket=True)
    app.add_url_rule("/", "index", plain_view, methods=["GET", "HEAD"])

    if echo_path:
        log.warning("diagnostics echo endpoint enabled at %s", echo_path)

        def echo_view() -> Response:
            return Response("WebSocket echo endpoint (diagnostics)\n", mimetype="text/plain")

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
