"""What an operator sees and relies on: graceful shutdown, readiness, Prometheus metrics, log lines."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable

import pytest
import sqlalchemy
from prometheus_client.parser import text_string_to_metric_families
from rawws import RawWebSocket
from test_operations import frames_until_close, wait_until

from support import Client, Server, free_port, fresh_id


def metric_values(server: Server) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics: (name, sorted labels) -> value."""
    status, body = server.http("GET", "/metrics")
    assert status == 200, body
    out = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def worker_pid(client: Client) -> str:
    """The worker serving a connection: its connection id is `<host>-<pid>-<random>-<n>`."""
    return client.connection_id.rsplit("-", 3)[1]


@pytest.mark.parametrize("backend", ["sqlite", "mariadb"])
def test_shutdown_stores_and_delivers_in_flight_messages_then_closes_1001(
    server_factory: Callable[..., Server], request: pytest.FixtureRequest, backend: str
) -> None:
    """On TERM every client gets each message of its that was stored, then close 1001; the worker exits fast."""
    url = request.getfixturevalue("mariadb_database") if backend == "mariadb" else None
    server = server_factory(database_url=url, RATE_LIMIT=0)
    clients, sessions = [], []
    for _ in range(4):
        user = fresh_id()
        session_id = server.open_session(user)
        client = server.client(user)
        client.join(session_id)
        clients.append(client)
        sessions.append(session_id)
    for client, session_id in zip(clients, sessions, strict=True):
        for n in range(50):
            client.say(session_id, f"burst {n}")
    first = clients[0].recv_type("new_message")  # the server is busy with the bursts now
    started = time.monotonic()
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)  # the master, as `stop` does
    results = [frames_until_close(client) for client in clients]
    results[0][0].insert(0, first)
    server.proc.wait(15)
    elapsed = time.monotonic() - started
    assert elapsed < 5, f"server took {elapsed:.1f}s to stop"

    engine = sqlalchemy.create_engine(server.env["DATABASE_URL"])
    total_stored = 0
    for (frames, code, reason), session_id in zip(results, sessions, strict=True):
        assert code == 1001 and reason == "server shutting down"
        delivered = [f["message"]["id"] for f in frames if f["type"] == "new_message"]
        with engine.connect() as conn:
            stored = list(conn.scalars(sqlalchemy.text(
                "SELECT id FROM chat_messages WHERE session_id = :sid ORDER BY id"), {"sid": session_id}))
        assert delivered == stored  # stored => delivered, in order, before the close frame
        total_stored += len(stored)
    engine.dispose()
    print("stored", total_stored, "of 200; stopped in", round(elapsed, 2))
    assert total_stored > 0
    assert "Worker graceful timeout" not in server.log()


def test_readyz_names_the_database_when_mysql_is_unreachable(server_factory: Callable[..., Server]) -> None:
    """DATABASE_URL on a closed port: the server still starts, /healthz 200, /readyz 503 naming the database."""
    url = f"mysql+pymysql://root:@127.0.0.1:{free_port()}/chat?charset=utf8mb4"
    server = server_factory(database_url=url)
    assert server.http("GET", "/healthz") == (200, {"status": "ok"})
    status, body = server.http("GET", "/readyz")
    assert status == 503
    assert body["status"] == "unavailable" and body["checks"] == {"database": "down"}
    assert body["reasons"]["database"].startswith("OperationalError 2003: Can't connect to MySQL server"), body
    assert "database unreachable at start-up" in server.log()


def test_readyz_is_ready_with_the_database_up(chat_server: Server) -> None:
    """With the database answering, /readyz says ready (SQLite and MariaDB)."""
    assert chat_server.http("GET", "/readyz") == (200, {"status": "ready", "checks": {"database": "ok"}})


def test_metrics_match_the_traffic_sent_across_two_workers(
    server_factory: Callable[..., Server], redis_url: str
) -> None:
    """/metrics from any worker adds up both workers: connections, messages, errors, auth failures, latencies."""
    server = server_factory(workers=2, REDIS_URL=redis_url, RATE_LIMIT=0)
    clients = [server.client() for _ in range(4)]
    busy = {worker_pid(c) for c in clients}
    if len(busy) == 1:
        # The kernel tends to hand every connection to the same worker: pause it so the other accepts some.
        (pid,) = busy
        os.kill(int(pid), signal.SIGSTOP)
        try:
            clients += [server.client() for _ in range(4)]
        finally:
            os.kill(int(pid), signal.SIGCONT)
    assert len({worker_pid(c) for c in clients}) == 2, "all connections went to one worker"

    per_client = 3
    for client in clients:
        user = fresh_id()
        client.auth(user)
        session_id = server.open_session(user)
        client.join(session_id)
        for n in range(per_client):
            client.say(session_id, f"m{n}")
        for _ in range(per_client):
            client.recv_type("new_message")
    failures = clients[:2]
    for client in failures:
        assert client.request({"type": "auth"})["code"] == "missing_user_id"
    assert clients[2].request({"type": "nonsense"})["code"] == "unknown_type"
    messages = per_client * len(clients)

    values = wait_until(lambda: (v := metric_values(server)) and
                        v.get(("chat_messages_stored_total", ())) == messages and v)
    assert values[("chat_connections_open", ())] == len(clients)
    assert values[("chat_connections_total", ())] == len(clients)
    assert values[("chat_messages_received_total", ())] == messages
    assert values[("chat_messages_delivered_total", ())] == messages
    assert values[("chat_db_write_rows_total", ())] == messages
    assert values[("chat_delivery_latency_seconds_count", ())] == messages
    assert values[("chat_store_seconds_count", ())] == messages
    assert values[("chat_errors_total", (("code", "missing_user_id"),))] == 2
    assert values[("chat_errors_total", (("code", "unknown_type"),))] == 1
    assert values[("chat_auth_failures_total", ())] == 2
    assert 0 < values[("chat_db_write_seconds_count", ())] <= messages

    for client in clients[:3]:
        client.close()
    wait_until(lambda: metric_values(server)[("chat_connections_open", ())] == len(clients) - 3)
    for client in clients[3:]:
        client.close()


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_logs_carry_ids_and_access_lines_but_never_message_content(
    server_factory: Callable[..., Server], log_format: str
) -> None:
    """One line per event with connection/user/session ids and HTTP access lines; message content never at INFO."""
    server = server_factory(LOG_FORMAT=log_format)
    marker = f"secret-{uuid.uuid4().hex}"
    user = fresh_id()
    session_id = server.open_session(user)
    client = server.client(user)
    client.join(session_id)
    client.say(session_id, marker)
    client.recv_type("new_message")
    status, _ = server.http("POST", f"/api/sessions/{session_id}/messages", {"sender_id": user, "content": marker})
    assert status in (200, 201)
    client.close()
    server.http("GET", "/healthz")

    def access_lines(lines: list[str]) -> tuple[list[dict], list[dict]]:
        entries = [json.loads(line) for line in lines if line.strip()]  # every line is one JSON object
        return entries, [e for e in entries if e["logger"] == "gunicorn.access"]

    def logged() -> list[str] | None:
        """The log once it holds every line the test looks for. Workers write them as the events end, in no
        promised order (the WebSocket's access line when it closes, possibly after the last /healthz)."""
        lines = server.log_path.read_text(errors="replace").splitlines()  # whole: log() is only its tail
        if log_format == "json":
            entries, access = access_lines(lines)
            complete = (any(e["event"] == "joined" for e in entries)
                        and any({"method": "GET", "path": "/healthz", "status": 200}.items() <= e.items()
                                for e in access)
                        and any(e["status"] == 101 and e["path"] == "/" for e in access))
        else:
            complete = (any("gunicorn.access" in line and '"GET /healthz HTTP/1.1" 200' in line for line in lines)
                        and any(f"session_id={session_id}" in line and f"user_id={user}" in line for line in lines))
        return lines if complete else None

    lines = wait_until(logged)
    assert marker not in server.log_path.read_text(errors="replace")
    if log_format == "json":
        entries, access = access_lines(lines)
        joined = [e for e in entries if e["event"] == "joined"]
        assert joined and joined[0]["user_id"] == user and joined[0]["session_id"] == session_id
        assert joined[0]["connection_id"] == client.connection_id
        assert any({"method": "GET", "path": "/healthz", "status": 200}.items() <= e.items() for e in access)
        assert any(e["status"] == 101 and e["path"] == "/" for e in access)
        assert any(e["logger"] == "gunicorn.error" and "Booting worker" in e["event"] for e in entries)
    else:
        assert any("gunicorn.access" in line and '"GET /healthz HTTP/1.1" 200' in line for line in lines)
        assert any(f"session_id={session_id}" in line and f"user_id={user}" in line for line in lines)


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_websocket_access_line_says_101_and_how_long_it_was_open(
    server_factory: Callable[..., Server], log_format: str
) -> None:
    """A WebSocket gets its access line when it ends: client, request line, 101, user agent, time open."""
    server = server_factory(LOG_FORMAT=log_format)
    ws = RawWebSocket(server.port, "/?probe=1", headers={"User-Agent": "probe/1.0"})
    assert ws.status == 101
    time.sleep(0.3)  # not a wait for anything: the socket stays open this long, and the line must say so
    ws.close()

    def line() -> str | None:
        return next((x for x in server.log().splitlines() if "gunicorn.access" in x and "101" in x), None)

    logged = wait_until(line)
    if log_format == "json":
        entry = json.loads(logged)
        assert {"remote_addr": "127.0.0.1", "method": "GET", "path": "/", "query": "probe=1", "status": 101,
                "user_agent": "probe/1.0"}.items() <= entry.items()
        assert entry["duration_ms"] >= 300
    else:
        match = re.search(r' 127\.0\.0\.1 "GET /\?probe=1 HTTP/1\.1" 101 \S+ (\d+)ms$', logged)
        assert match, logged
        assert int(match.group(1)) >= 300


class TcpForwarder:
    """A loopback port that forwards to MariaDB once opened: a database that comes up after the server."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.port, self.target = port, target
        self.listener: socket.socket | None = None

    def open(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        assert self.listener is not None
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()


def test_database_that_comes_up_later_gets_its_tables_and_readyz_turns_200(
    server_factory: Callable[..., Server], mariadb_database: str
) -> None:
    """Started with MariaDB unreachable: 503 first; once it answers, tables are created and chat works."""
    forwarder = TcpForwarder(free_port(), ("127.0.0.1", 3306))
    url = mariadb_database.replace("127.0.0.1:3306", f"127.0.0.1:{forwarder.port}")
    server = server_factory(database_url=url)
    try:
        assert server.http("GET", "/readyz")[0] == 503
        forwarder.open()
        assert server.http("GET", "/readyz")[0] == 200
        user = fresh_id()
        session_id = server.open_session(user)
        client = server.client(user)
        client.say(session_id, "after the outage")
        assert client.recv_type("new_message")["message"]["content"] == "after the outage"
        client.close()
        assert "database reachable again" in server.log()
    finally:
        server.stop()
        forwarder.close()
