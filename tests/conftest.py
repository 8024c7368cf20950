"""Fixtures: real servers (gunicorn + GeventWebSocketWorker) on free ports, on SQLite and on MariaDB."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support import (
    IN_CI,
    REDIS_TEST_URL,
    Client,
    Server,
    base_env,
    create_mariadb_database,
    drop_mariadb_database,
    free_port,
    fresh_id,
    mariadb_available,
    redis_available,
)

BACKENDS = ["sqlite", "mariadb"]


def need_mariadb() -> None:
    if not mariadb_available():
        if IN_CI:
            pytest.fail("MariaDB is not reachable on 127.0.0.1:3306 (CI=true: tests that need it must run)")
        pytest.skip("MariaDB is not reachable on 127.0.0.1:3306")


def need_redis() -> None:
    if not redis_available():
        if IN_CI:
            pytest.fail("Redis is not reachable on 127.0.0.1:6379 (CI=true: tests that need it must run)")
        pytest.skip("Redis is not reachable on 127.0.0.1:6379")


@pytest.fixture(scope="session")
def mariadb_url() -> Iterator[str]:
    """A fresh MariaDB database for the whole run, dropped afterwards."""
    need_mariadb()
    url, name = create_mariadb_database()
    try:
        yield url
    finally:
        drop_mariadb_database(name)


@pytest.fixture(scope="session")
def redis_url() -> str:
    need_redis()
    return REDIS_TEST_URL


@pytest.fixture
def mariadb_database() -> Iterator[str]:
    """A fresh MariaDB database for one test."""
    need_mariadb()
    url, name = create_mariadb_database()
    try:
        yield url
    finally:
        drop_mariadb_database(name)


@pytest.fixture(scope="session")
def server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Server]]:
    """Start servers with given settings; every one is stopped (by process group) at the end of the run."""
    started: list[Server] = []

    def start(database_url: str | None = None, workers: int = 1, wait: bool = True, **settings: Any) -> Server:
        directory = Path(tmp_path_factory.mktemp("server"))
        port = settings.pop("port", None) or free_port()
        defaults: dict[str, Any] = {
            "STATE_DIR": directory / "run",
            "PIDFILE": directory / "chat.pid",
            "LOGFILE": directory / "chat.log",
            "LOG_LEVEL": "info",
            "GRACEFUL_TIMEOUT": 5,
        }
        database_url = database_url or f"sqlite:///{directory}/chat.db"
        # Servers on one database share a Redis channel; servers on different databases (whose session ids
        # overlap) must not hear each other.
        defaults["REDIS_CHANNEL_PREFIX"] = "test-" + hashlib.sha1(database_url.encode()).hexdigest()[:12]
        env = base_env(
            WEBSOCKET_HOST="127.0.0.1",
            WEBSOCKET_PORT=port,
            WEBSOCKET_WORKER_COUNT=workers,
            DATABASE_URL=database_url,
            **{**defaults, **settings},
        )
        server = Server(port=port, env=env, log_path=directory / "server.log")
        started.append(server)
        return server.start() if wait else server

    yield start
    for server in started:  # signal all first, so they shut down in parallel rather than one after another
        if server.proc is not None and server.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.proc.pid, signal.SIGTERM)
    for server in started:
        server.stop()


@pytest.fixture(scope="module", params=BACKENDS)
def chat_server(request: pytest.FixtureRequest, server_factory: Callable[..., Server]) -> Server:
    """One server per test module and storage backend (SQLite embedded default, MariaDB)."""
    if request.param == "mariadb":
        url = request.getfixturevalue("mariadb_url")
        return server_factory(database_url=url)
    return server_factory()


@pytest.fixture(scope="module")
def agent_id(chat_server: Server) -> int:
    """A registered agent on the module's server."""
    return chat_server.add_agent(fresh_id())


@pytest.fixture
def clients(chat_server: Server) -> Iterator[Any]:
    """Open clients on the module's server for one test; all closed at its end."""
    opened: list[Client] = []

    def open_client(user_id: Any = None) -> Client:
        client = chat_server.client(user_id)
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        client.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """On failure, attach the logs of the servers the test used."""
    report = yield
    if report.when == "call" and report.failed:
        for name in ("chat_server",):
            server = item.funcargs.get(name) if hasattr(item, "funcargs") else None
            if isinstance(server, Server):
                report.sections.append((f"server log ({name})", server.log()[-8000:]))
    return report
