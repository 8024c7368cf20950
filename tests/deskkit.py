"""Helpers for the agent-desk tests: deployments of several instances, and clients that record every frame."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import websocket
from traffic import clients_per_node, node_of

from support import Client, Server, create_mariadb_database, drop_mariadb_database, fresh_id


class Recorder:
    """A WebSocket client whose frames a thread records as they come (time received, frame)."""

    def __init__(self, server: Server, user_id: int | None = None, client: Client | None = None) -> None:
        self.client = client or Client(server.ws_url, timeout=30)
        self.server = server
        self.user_id = user_id
        self.frames: list[tuple[float, dict[str, Any]]] = []
        self._changed = threading.Condition()
        if user_id is not None:
            self.client.auth(user_id)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    @property
    def node(self) -> str:
        return node_of(self.client.connection_id)

    def _read(self) -> None:
        ws = self.client.ws
        ws.settimeout(None)
        while True:
            try:
                raw = ws.recv()
            except (websocket.WebSocketException, OSError):
                return
            if not raw:
                return
            with self._changed:
                self.frames.append((time.monotonic(), json.loads(raw)))
                self._changed.notify_all()

    def send(self, frame: dict[str, Any]) -> None:
        self.client.send(frame)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        with self._changed:
            return [f for _t, f in self.frames if f["type"] == kind]

    def wait_for(self, predicate: Callable[[list[dict[str, Any]]], Any], timeout: float = 15.0) -> Any:
        """Wait until `predicate(frames)` is truthy; returns its value (AssertionError on timeout)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                value = predicate([f for _t, f in self.frames])
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out; frames: {[f for _t, f in self.frames][-10:]}")
                self._changed.wait(left)

    def wait_type(self, kind: str, timeout: float = 15.0, **fields: Any) -> dict[str, Any]:
        def match(frames: list[dict[str, Any]]) -> dict[str, Any] | None:
            for frame in frames:
                if frame["type"] == kind and all(frame.get(k) == v for k, v in fields.items()):
                    return frame
            return None

        return self.wait_for(match, timeout)

    def nothing_of(self, kind: str, seconds: float) -> bool:
        """True when no frame of `kind` arrives for `seconds` (proving an absence)."""
        try:
            self.wait_for(lambda frames: any(f["type"] == kind for f in frames), seconds)
        except AssertionError:
            return True
        return False

    def first_time(self, kind: str, **fields: Any) -> float | None:
        with self._changed:
            for t, frame in self.frames:
                if frame["type"] == kind and all(frame.get(k) == v for k, v in fields.items()):
                    return t
        return None

    def barrier(self) -> None:
        """Everything the server queued for us before now has been recorded (a ping's pong came after it)."""
        token = uuid.uuid4().hex
        self.send({"type": "ping", "token": token})
        self.wait_type("pong")
        with self._changed:
            self.frames = [(t, f) for t, f in self.frames if f["type"] != "pong"]

    def close(self) -> None:
        self.client.close()
        self._thread.join(5)


@contextmanager
def deployment(server_factory: Callable[..., Server], redis_url: str, instances: int = 2, workers: int = 2,
               **settings: Any) -> Iterator[list[Server]]:
    """`instances` gunicorn instances (of `workers` each) on one fresh MariaDB database and one Redis prefix."""
    url, name = create_mariadb_database()
    prefix = f"test-desk-{uuid.uuid4().hex[:8]}"
    common = {"REDIS_URL": redis_url, "REDIS_CHANNEL_PREFIX": prefix, "RATE_LIMIT": 0, **settings}
    servers = [server_factory(database_url=url, workers=workers, **common) for _ in range(instances)]
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()
        drop_mariadb_database(name)


def agents_on_every_worker(servers: list[Server], count: int, per_node: int) -> list[Recorder]:
    """`count` new agents, each with one connection, spread over every worker of every instance."""
    recorders: list[Recorder] = []
    for server in servers:
        by_node = clients_per_node(lambda s=server: Client(s.ws_url, timeout=30), nodes=2, per_node=per_node)
        for clients in by_node.values():
            for client in clients:
                if len(recorders) < count:
                    agent_id = add_agents(server, [fresh_id()])[0]
                    recorders.append(Recorder(server, agent_id, client=client))
                else:
                    client.close()
    assert len(recorders) == count
    return recorders


def poll(check: Callable[[], Any], timeout: float = 15.0, every: float = 0.05) -> Any:
    """Poll an HTTP-side condition until it holds (there is no event to wait on)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(every)


def add_agents(server: Server, user_ids: list[int], capacity: int | None = None) -> list[int]:
    """Register agents straight in the database (what `agent add` does, without a process per agent)."""
    import pymysql
    from sqlalchemy.engine import make_url

    url = make_url(server.env["DATABASE_URL"])
    conn = pymysql.connect(host=url.host, port=url.port or 3306, user=url.username, password=url.password or "",
                           database=url.database, autocommit=True)
    with conn.cursor() as cur:
        for user_id in user_ids:
            cur.execute("INSERT INTO agents (user_id, created_at, status, capacity) VALUES (%s, NOW(), 'offline', %s)",
                        (user_id, capacity))
    conn.close()
    return user_ids


def sql(server: Server, statement: str, *args: Any) -> list[tuple]:
    """Read the deployment's database directly (what the tests check the service against)."""
    import pymysql
    from sqlalchemy.engine import make_url

    url = make_url(server.env["DATABASE_URL"])
    conn = pymysql.connect(host=url.host, port=url.port or 3306, user=url.username, password=url.password or "",
                           database=url.database, autocommit=True)
    with conn.cursor() as cur:
        cur.execute(statement, args)
        rows = list(cur.fetchall())
    conn.close()
    return rows
