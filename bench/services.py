"""The processes a benchmark measures: the chat service under real gunicorn, and the baseline servers.

Every server runs in its own process group, pinned with taskset to the server core(s), bound to 127.0.0.1
on a free port, and is stopped by process group when the run ends.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
MARIADB_BASE = os.environ.get("BENCH_MARIADB_URL", "mysql+pymysql://root:@127.0.0.1:3306")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def usable_cpus(cpus: str | None) -> set[int]:
    """The CPUs of a list like "0" or "0,1" that this machine has (empty: do not pin)."""
    if not cpus:
        return set()
    return {int(c) for c in cpus.split(",") if c.strip()} & os.sched_getaffinity(0)


def pinned(cpus: str | None, argv: list[str]) -> list[str]:
    """`argv` under taskset when `cpus` names CPUs this machine has and taskset exists."""
    usable = usable_cpus(cpus)
    if usable and shutil.which("taskset"):
        return ["taskset", "-c", ",".join(map(str, sorted(usable))), *argv]
    return argv


def pin_self(cpus: str | None) -> None:
    usable = usable_cpus(cpus)
    if usable:
        os.sched_setaffinity(0, usable)


def clean_env(**overrides: object) -> dict[str, str]:
    """The caller's environment without the service's settings, plus `overrides`."""
    prefixes = ("WEBSOCKET_", "DATABASE_", "REDIS_", "AUTH_", "JWT_", "RATE_", "WRITER_", "LOG_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env["CHAT_ENV_FILE"] = str(ROOT / "tests" / "no.env")
    env["PYTHONUNBUFFERED"] = "1"
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def stop_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    """Signal a server started in a process group of its own and wait for it; SIGKILL after `timeout`."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        except ProcessLookupError:
            pass


@dataclass
class Process:
    """A server process (group) we started."""

    argv: list[str]
    env: dict[str, str]
    port: int
    log_path: Path
    proc: subprocess.Popen | None = None
    cwd: Path = ROOT

    def start(self, ready_path: str | None = "/healthz", timeout: float = 30.0) -> Process:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.argv[-1]} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            if self._ready(ready_path):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server not ready in {timeout}s:\n{self.log()[-3000:]}")

    def _ready(self, path: str | None) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                if path is None:
                    return True
                s.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
                return b" 200 " in s.recv(64)
        except OSError:
            return False

    def workers(self) -> list[psutil.Process]:
        """The processes that serve: gunicorn's workers, or the process itself (taskset execs, keeping the pid)."""
        if self.proc is None:
            return []
        try:
            root = psutil.Process(self.proc.pid)
            return root.children() or [root]
        except psutil.Error:
            return []

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None:
            return
        stop_group(self.proc, signal.SIGTERM, timeout)
        self._log.close()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


@dataclass
class ChatService:
    """The chat service as an operator runs it: `gunicorn -c gunicorn.conf.py wsgi:app`."""

    database: str = "sqlite"  # sqlite | mariadb
    workers: int = 1
    redis: bool = False
    cpus: str | None = "0"
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    echo_path: str = "/echo"
    redis_url: str = ""  # a Redis of the bench's own instead of BENCH_REDIS_URL
    root: Path = ROOT  # the source tree served (another checkout, to compare side by side)
    shared_db: str | None = None  # a MariaDB database of another ChatService (several instances, one deployment)
    redis_prefix: str = field(default_factory=lambda: f"chat-bench-{uuid.uuid4().hex[:10]}")

    def __post_init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="chat-bench-"))
        self.db_name: str | None = self.shared_db
        self.process: Process | None = None

    @property
    def database_url(self) -> str:
        if self.database == "mariadb":
            return f"{MARIADB_BASE}/{self.db_name}?charset=utf8mb4"
        return f"sqlite:///{self.dir}/chat.db"

    def env(self) -> dict[str, str]:
        return clean_env(
            WEBSOCKET_HOST="127.0.0.1",
            WEBSOCKET_PORT=self.port,
            WEBSOCKET_WORKER_COUNT=self.workers,
            WORKER_CONNECTIONS=20000,
            DATABASE_URL=self.database_url,
            REDIS_URL=(self.redis_url or REDIS_URL) if self.redis else "",
            # Our own channels and keys: other servers on this Redis (tests, other runs) must not feed this one.
            REDIS_CHANNEL_PREFIX=self.redis_prefix,
            RATE_LIMIT=0,  # unlimited: the limiter is not what is measured
            HEARTBEAT_TIMEOUT=3600,
            WEBSOCKET_ECHO_PATH=self.echo_path,
            STATE_DIR=self.dir / "run",
            PIDFILE=self.dir / "chat.pid",
            LOGFILE=self.dir / "chat.log",
            LOG_LEVEL="warning",
            GRACEFUL_TIMEOUT=3,
            **self.extra_env,
        )

    def start(self) -> ChatService:
        if self.database == "mariadb" and self.db_name is None:
            self.db_name = create_mariadb_database()
        argv = pinned(self.cpus, [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app",
                                  "--access-logfile", "/dev/null"])
        self.process = Process(argv, self.env(), self.port, self.dir / "server.log", cwd=self.root).start()
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        if self.db_name and self.db_name != self.shared_db:
            drop_mariadb_database(self.db_name)
            self.db_name = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def add_agent(self, user_id: int) -> None:
        result = subprocess.run([sys.executable, "-m", "service", "agent", "add", str(user_id)], cwd=self.root,
                                env=self.env(), capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"agent add failed: {result.stderr.strip()}")

    def open_session(self, user_id: int) -> int:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/api/sessions", method="POST",
                                     data=json.dumps({"user_id": user_id}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=15) as resp:
            return json.loads(resp.read())["id"]


def create_mariadb_database() -> str:
    import pymysql

    name = f"chat_bench_{uuid.uuid4().hex[:10]}"
    conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="")
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    conn.close()
    return name


def drop_mariadb_database(name: str) -> None:
    import pymysql

    conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="")
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    conn.close()


def start_baseline(kind: str, cpus: str | None = "0") -> Process:
    """An echo server to measure against: gevent (bare gevent-websocket on gunicorn), websockets, trivial."""
    port = free_port()
    log_path = Path(tempfile.mkdtemp(prefix="chat-bench-echo-")) / "echo.log"
    env = clean_env()
    if kind == "gevent":
        argv = [sys.executable, "-m", "gunicorn", "-k", "geventwebsocket.gunicorn.workers.GeventWebSocketWorker",
                "-w", "1", "-b", f"127.0.0.1:{port}", "--no-control-socket", "--worker-connections", "20000",
                "--log-level", "warning", "bench.echo_app:app"]
        ready = "/"
    elif kind == "websockets":
        argv = [sys.executable, "-m", "bench.ws_echo", str(port)]
        ready = None
    elif kind == "trivial":
        argv = [sys.executable, "-m", "bench.trivial_echo", str(port)]
        ready = None
    else:
        raise ValueError(kind)
    return Process(pinned(cpus, argv), env, port, log_path).start(ready)


def start_redis(cpus: str | None = "0") -> Process:
    """A redis-server of the bench's own (never a shared one), pinned with the servers, no persistence."""
    port = free_port()
    directory = Path(tempfile.mkdtemp(prefix="chat-bench-redis-"))
    argv = pinned(cpus, ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                         "no", "--dir", str(directory), "--logfile", str(directory / "redis.log")])
    return Process(argv, clean_env(), port, directory / "stdout.log").start(None)
