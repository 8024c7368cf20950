"""Helpers for tests that talk to a real server: start gunicorn as an operator would, and a WebSocket client."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websocket

from bench.services import stop_group
from service.config import settings_table

ROOT = Path(__file__).resolve().parent.parent
MARIADB_URL_BASE = os.environ.get("TEST_MARIADB_URL", "mysql+pymysql://root:@127.0.0.1:3306")
REDIS_TEST_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() == "true"

_ids = itertools.count(int(time.time() * 1000) % 1_000_000_000 * 1000)


def fresh_id() -> int:
    """A user id no other test uses (tests share servers and databases)."""
    return next(_ids)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(**overrides: Any) -> dict[str, str]:
    """The environment for a server under test: isolated from the committed .env and the caller's."""
    ours = {name for name, _default, _doc in settings_table()}
    env = {k: v for k, v in os.environ.items() if k not in ours and not k.startswith(("WEBSOCKET_", "JWT_"))}
    env["CHAT_ENV_FILE"] = str(ROOT / "tests" / "no.env")
    env["PYTHONUNBUFFERED"] = "1"
    # Each server its own pid file and state dir: a second server on the same pid file refuses to start.
    state = Path(tempfile.mkdtemp(prefix="chat-test-"))
    env.update(PIDFILE=str(state / "chat.pid"), LOGFILE=str(state / "chat.log"), STATE_DIR=str(state / "run"))
    env.update({k: str(v) for k, v in overrides.items()})
    return env


@dataclass
class Server:
    """A real gunicorn with the real worker class, on its own port and process group."""

    port: int
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None
    args: list[str] = field(default_factory=list)

    @property
    def ws_url(self) -> str:
        scheme = "wss" if self.env.get("WEBSOCKET_SSL") == "true" else "ws"
        return f"{scheme}://127.0.0.1:{self.port}/"

    @property
    def http_url(self) -> str:
        scheme = "https" if self.env.get("WEBSOCKET_SSL") == "true" else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Server:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.args or [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            if self._ready():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server not ready in {timeout}s:\n{self.log()}")

    def _ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw:
                s = _insecure_tls().wrap_socket(raw) if self.env.get("WEBSOCKET_SSL") == "true" else raw
                s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
                return b" 200 " in s.recv(64)
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        stop_group(self.proc, sig, timeout)
        self._log.close()
        return self.proc.returncode

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-20000:]
        except OSError:
            return ""

    # -- HTTP -------------------------------------------------------------------------------------

    def http(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
             raw: bytes | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.http_url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=15, context=_insecure_tls()) as resp:
                payload = resp.read()
                status = resp.status
        except urllib.error.HTTPError as err:
            payload = err.read()
            status = err.code
        try:
            return status, json.loads(payload)
        except ValueError:
            return status, payload.decode("utf-8", "replace")

    def readiness(self, timeout: float = 15.0) -> tuple[int, Any]:
        """/readyz once it answers 200, or its last answer after `timeout`: a worker that has just booted may not
        have subscribed to Redis yet, and says so (503, backplane degraded) until it has."""
        deadline = time.monotonic() + timeout
        while True:
            status, body = self.http("GET", "/readyz")
            if status == 200 or time.monotonic() > deadline:
                return status, body
            time.sleep(0.1)  # polling an HTTP endpoint: there is no event to wait on

    def open_session(self, user_id: int) -> int:
        status, body = self.http("POST", "/api/sessions", {"user_id": user_id})
        assert status in (200, 201), (status, body)
        return body["id"]

    def add_agent(self, user_id: int) -> int:
        result = run_cli(self.env, "agent", "add", str(user_id))
        assert result.returncode == 0, result.stderr
        return user_id

    def client(self, user_id: int | None = None, **kwargs: Any) -> Client:
        c = Client(self.ws_url, **kwargs)
        if user_id is not None:
            c.auth(user_id)
        return c


def node_of(client: Client) -> str:
    """The worker a connection landed on (connection ids are NODE-SEQUENCE)."""
    return client.connection_id.rsplit("-", 1)[0]


def client_elsewhere(open_client: Callable[[], Client], node: str | None, attempts: int = 200) -> Client:
    """A connection accepted by a worker other than `node` (any worker when None).

    Workers share one listening socket and the idle one tends to win every accept: the tries that landed on
    `node` stay open (keeping that worker busy) until another worker has taken one, then they are closed.
    """
    tries: list[Client] = []
    try:
        for _ in range(attempts):
            client = open_client()
            if node is None or node_of(client) != node:
                return client
            tries.append(client)
        raise AssertionError(f"could not reach a worker other than {node} in {attempts} connections")
    finally:
        for client in tries:
            client.close()


def _insecure_tls():
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Client:
    """A blocking WebSocket client that speaks JSON frames (websocket-client over loopback)."""

    def __init__(self, url: str, timeout: float = 10.0, **kwargs: Any) -> None:
        sslopt = {"cert_reqs": 0, "check_hostname": False} if url.startswith("wss") else None
        self.ws = websocket.create_connection(url, timeout=timeout, sslopt=sslopt, **kwargs)
        self.timeout = timeout
        self.connected = self.recv()
        assert self.connected["type"] == "connected", self.connected
        self.connection_id = self.connected["connection_id"]

    def send(self, obj: Any) -> None:
        self.ws.send(obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False))

    def recv(self, timeout: float | None = None) -> dict[str, Any]:
        self.ws.settimeout(timeout or self.timeout)
        return json.loads(self.ws.recv())

    def request(self, obj: Any) -> dict[str, Any]:
        self.send(obj)
        return self.recv()

    def auth(self, user_id: Any) -> dict[str, Any]:
        reply = self.request({"type": "auth", "user_id": user_id})
        assert reply == {"type": "auth_success", "user_id": int(user_id)}, reply
        return reply

    def join(self, session_id: int, **extra: Any) -> dict[str, Any]:
        reply = self.request({"type": "join_session", "session_id": session_id, **extra})
        assert reply["type"] == "joined_session", reply
        return reply

    def say(self, session_id: int, content: str, **extra: Any) -> None:
        self.send({"type": "send_message", "session_id": session_id, "content": content, **extra})

    def recv_type(self, kind: str, timeout: float | None = None) -> dict[str, Any]:
        frame = self.recv(timeout)
        assert frame["type"] == kind, frame
        return frame

    def barrier(self) -> list[dict[str, Any]]:
        """Ping and collect everything that arrives before the pong (what was queued for us until now)."""
        token = uuid.uuid4().hex
        self.send({"type": "ping", "token": token})
        before = []
        while True:
            frame = self.recv()
            if frame["type"] == "pong":
                return before
            before.append(frame)

    def nothing_within(self, seconds: float) -> bool:
        """True when no frame arrives for `seconds` (to prove absence across processes)."""
        self.ws.settimeout(seconds)
        try:
            frame = self.ws.recv()
        except websocket.WebSocketTimeoutException:
            return True
        raise AssertionError(f"unexpected frame: {frame}")

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass


def mariadb_available() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 3306), timeout=1):
            return True
    except OSError:
        return False


def redis_available() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def create_mariadb_database() -> tuple[str, str]:
    """A fresh, empty MariaDB database for this run: (url, name)."""
    import pymysql

    name = f"chat_test_{uuid.uuid4().hex[:10]}"
    conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="")
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    conn.close()
    return f"{MARIADB_URL_BASE}/{name}?charset=utf8mb4", name


def drop_mariadb_database(name: str) -> None:
    import pymysql

    conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="")
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    conn.close()


def run_cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """`python -m service ARGS` with a server's environment, as an operator would type it."""
    return subprocess.run(
        [sys.executable, "-m", "service", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
