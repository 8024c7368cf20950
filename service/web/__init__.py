"""The browser pages: the agent console at /console/ and the customer chat page at /chat/.

Plain files in the repository (no build step, no CDN): HTML, one shared client script, one script and the
styles per page. Every page is served with a Content-Security-Policy that allows only this service's own
origin (and its ws/wss origin for the WebSocket), so a message that slips past the pages' escaping still
cannot run a script or load anything from elsewhere.
"""

from __future__ import annotations

import os
import re

from flask import Blueprint, Response, current_app, jsonify, request, send_from_directory

from ..errors import Problem, Refused
from ..storage import StorageError

bp = Blueprint("web", __name__, static_folder=None)
STATIC = os.path.join(bp.root_path, "static")

# A Host header that could only be a host name, IPv4/IPv6 address and port: anything else (a header injected
# by a broken proxy) must not reach the policy text, so the policy then names no WebSocket origin at all.
_HOST = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
PAGES = {"console": "console.html", "chat": "chat.html"}
ASSETS = ("common.js", "console.js", "chat.js", "common.css", "console.css", "chat.css")


def content_security_policy(host: str) -> str:
    """Only our own origin: scripts and styles from files (no inline code), the WebSocket on the same host."""
    sockets = f" ws://{host} wss://{host}" if _HOST.fullmatch(host) else ""
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        f"connect-src 'self'{sockets}; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )


def _secure(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = content_security_policy(request.host)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Cache-Control"] = "no-cache"
    return response


def _static(name: str) -> Response:
    return _secure(send_from_directory(STATIC, name, max_age=0))


@bp.get("/console/")
def console() -> Response:
    """The agent console (sign-in, queue, my sessions, the conversation)."""
    return _static(PAGES["console"])


@bp.get("/chat/")
def chat() -> Response:
    """The customer chat page: a demo widget speaking the legacy WebSocket protocol."""
    return _static(PAGES["chat"])


@bp.get("/web/<name>")
def asset(name: str) -> Response:
    if name not in ASSETS:
        raise Refused(Problem.NOT_FOUND)
    return _static(name)


@bp.get("/web/whoami")
def whoami():
    """The auth mode, and who the caller is (the API's own identity rules): the pages ask before showing views.

    Without an identity (trust mode: no X-User-Id; jwt: no Authorization) the answer only says the mode, so a
    page knows whether to ask for a user id or a token; it is never the trusted backend's authority.
    """
    hub = current_app.extensions["chat_hub"]
    mode = hub.settings.auth_mode
    if request.headers.get("X-User-Id") is None and request.headers.get("Authorization") is None:
        return _secure(jsonify({"auth_mode": mode, "user_id": None, "is_agent": False}))
    try:
        identity = hub.auth.http_identity(request.headers)
    except StorageError:
        raise Refused(Problem.STORAGE_DOWN) from None
    if identity.backend:  # jwt mode with X-User-Id only: not an identity there
        raise Refused(Problem.UNAUTHENTICATED)
    return _secure(jsonify({"auth_mode": mode, "user_id": identity.user_id, "is_agent": identity.is_agent}))
