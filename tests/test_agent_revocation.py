"""Agent rights on an open WebSocket follow the agents table: `agent remove` takes them away on every worker."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from jwtkit import JWT_SETTINGS, hs256

from support import Client, Server, client_elsewhere, fresh_id, node_of, run_cli

RECHECK = 1  # AGENT_RECHECK_SECONDS of the servers under test
FORBIDDEN = {"type": "error", "error": "无权访问该会话", "code": "forbidden"}
NOT_FOUND = {"type": "error", "error": "消息不存在", "code": "message_not_found"}


@pytest.fixture(scope="module", params=["sqlite-trust", "mariadb-trust", "mariadb-jwt"])
def cluster(request: pytest.FixtureRequest, server_factory: Callable[..., Server], redis_url: str
            ) -> Iterator[tuple[Server, str]]:
    """Two workers sharing Redis, on SQLite or MariaDB, in trust or jwt mode."""
    backend, mode = request.param.split("-")
    database = request.getfixturevalue("mariadb_url") if backend == "mariadb" else None
    settings = {"REDIS_URL": redis_url, "REDIS_CHANNEL_PREFIX": f"test-{uuid.uuid4().hex[:8]}",
                "AGENT_RECHECK_SECONDS": RECHECK}
    if mode == "jwt":
        settings |= JWT_SETTINGS
    server = server_factory(database_url=database, workers=2, **settings)
    yield server, mode
    server.stop()


def login(server: Server, mode: str, user_id: int, node: str | None = None) -> Client:
    """A connection authenticated as `user_id` (by its word, or by a token without any role claim)."""

    def connect() -> Client:
        client = Client(server.ws_url)
        message = {"type": "auth", "user_id": user_id} if mode == "trust" else {"type": "auth",
                                                                                 "token": hs256(user_id)}
        assert client.request(message) == {"type": "auth_success", "user_id": user_id}
        return client

    return client_elsewhere(connect, node)


def backend_headers(server: Server, mode: str) -> dict[str, str]:
    """The trusted backend (trust mode), or an agent by its token's claim (jwt mode)."""
    return {} if mode == "trust" else {"Authorization": "Bearer " + hs256(fresh_id(), role="agent")}


def open_session(server: Server, mode: str, customer: int) -> int:
    status, body = server.http("POST", "/api/sessions", {"user_id": customer}, headers=backend_headers(server, mode))
    assert status in (200, 201), (status, body)
    return body["id"]


def read_answer(client: Client, session_id: int) -> dict:
    """`read` of a missing message: an agent hears 消息不存在, anyone else 无权访问该会话 (no side effect)."""
    return client.request({"type": "read", "session_id": session_id, "message_id": 1})


def test_removed_agent_loses_agent_rights_on_open_sockets_of_every_worker(cluster: tuple[Server, str]) -> None:
    """After `agent remove`, the agent's open sockets on both workers cannot join, replay, post or claim."""
    server, mode = cluster
    agent = server.add_agent(fresh_id())
    probe, target = (open_session(server, mode, fresh_id()) for _ in range(2))
    first = login(server, mode, agent)
    second = login(server, mode, agent, node_of(first))
    sockets = (first, second)
    for client in sockets:
        assert read_answer(client, probe) == NOT_FOUND  # an agent, on both workers

    removed = run_cli(server.env, "agent", "remove", str(agent))
    assert removed.returncode == 0, removed.stderr

    deadline = time.monotonic() + RECHECK + 10
    pending = list(sockets)
    while pending:
        assert time.monotonic() < deadline, "agent rights still held"
        pending = [client for client in pending if read_answer(client, probe) != FORBIDDEN]
        time.sleep(0.1)  # the recheck is a timer by design: poll it

    for client in sockets:
        assert client.request({"type": "join_session", "session_id": target, "last_message_id": 0}) == FORBIDDEN
        assert client.request({"type": "join_session", "session_id": target}) == FORBIDDEN
        client.say(target, "as an agent?")
        assert client.recv() == FORBIDDEN
        assert client.request({"type": "typing", "session_id": target, "state": "start"}) == FORBIDDEN
    status, session = server.http("GET", f"/api/sessions/{target}", headers=backend_headers(server, mode))
    assert status == 200 and session["agent_id"] is None, session
    status, body = server.http("GET", f"/api/sessions/{target}/messages",
                               headers=backend_headers(server, mode))
    assert status == 200 and body["messages"] == []
    for client in sockets:
        client.close()


def test_a_removed_agent_in_a_foreign_room_is_taken_out_of_it(cluster: tuple[Server, str]) -> None:
    """The joined socket of a removed agent gets `left_session` (reason forbidden) and no more of the room."""
    server, mode = cluster
    agent, customer = server.add_agent(fresh_id()), fresh_id()
    session_id = open_session(server, mode, customer)
    listener = login(server, mode, agent)
    listener.join(session_id)
    assert run_cli(server.env, "agent", "remove", str(agent)).returncode == 0
    deadline = time.monotonic() + RECHECK + 10
    seen: list[dict] = []
    while not any(f.get("type") == "left_session" for f in seen):
        assert time.monotonic() < deadline, seen
        seen += listener.barrier()
        time.sleep(0.1)
    assert {"type": "left_session", "session_id": session_id, "reason": "forbidden"} in seen
    talker = login(server, mode, customer)
    talker.say(session_id, "private")
    assert talker.recv_type("new_message")["message"]["content"] == "private"
    assert listener.nothing_within(1.0)
    listener.close()
    talker.close()


def test_an_agent_added_while_connected_gains_the_rights(cluster: tuple[Server, str]) -> None:
    """Rights follow the table both ways: `agent add` makes an open customer socket an agent within seconds."""
    server, mode = cluster
    user = fresh_id()
    probe = open_session(server, mode, fresh_id())
    client = login(server, mode, user)
    assert read_answer(client, probe) == FORBIDDEN
    server.add_agent(user)
    deadline = time.monotonic() + RECHECK + 10
    while read_answer(client, probe) != NOT_FOUND:
        assert time.monotonic() < deadline, "agent rights never granted"
        time.sleep(0.1)
    client.close()


class FlakyAgents:
    """A storage whose agents table can be edited and made unreadable."""

    def __init__(self) -> None:
        self.agents = {7}
        self.down = False
        self.reads = 0

    def list_agents(self):
        from types import SimpleNamespace

        from service.storage import StorageError

        self.reads += 1
        if self.down:
            raise StorageError("down")
        return [SimpleNamespace(user_id=uid) for uid in self.agents]


def test_the_directory_rereads_after_its_ttl_and_keeps_the_last_read_through_an_outage() -> None:
    """One read per ttl for everyone; a fresh look at one user wins; an unreadable table leaves the last read."""
    from service.auth import AgentDirectory

    storage = FlakyAgents()
    directory = AgentDirectory(storage, ttl=0.2)  # type: ignore[arg-type]
    assert directory.is_agent(7) and not directory.is_agent(8)
    assert storage.reads == 1
    directory.saw(8, True)  # `auth` looked at 8 just now
    assert directory.is_agent(8)
    storage.agents = {8}
    storage.down = True
    time.sleep(0.25)  # past the ttl (a timer by design)
    assert directory.is_agent(7) and directory.is_agent(8)  # unreadable: the last read (and look) stand
    reads = storage.reads
    assert directory.is_agent(7) and storage.reads == reads  # retried only after RETRY_SECONDS
    storage.down = False
    directory._next_try = 0  # skip the retry pause
    assert not directory.is_agent(7) and directory.is_agent(8)
