"""Across workers and hosts: real gunicorn instances sharing real MariaDB and Redis lose, repeat and reorder nothing."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from traffic import Pair, clients_per_node, exchange, make_pair, node_of, split_pairs, stop_all, wait_for_presence

from support import ROOT, Client, Server, base_env, free_port, fresh_id

PAIRS = 12  # sessions, each with its customer and its agent on different processes
PER_SENDER = 25  # messages each of the 2 * PAIRS connections sends, all at once


@pytest.fixture(scope="module")
def prefix() -> str:
    """A channel of its own, so other test runs on the shared Redis never mix in."""
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def two_workers(server_factory: Callable[..., Server], mariadb_url: str, redis_url: str, prefix: str
                ) -> Iterator[Server]:
    server = server_factory(database_url=mariadb_url, workers=2, REDIS_URL=redis_url, REDIS_CHANNEL_PREFIX=prefix,
                            RATE_LIMIT=0, PRESENCE_TTL=2)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def two_instances(server_factory: Callable[..., Server], mariadb_url: str, redis_url: str, prefix: str
                  ) -> Iterator[tuple[Server, Server]]:
    settings = {"REDIS_URL": redis_url, "REDIS_CHANNEL_PREFIX": prefix, "RATE_LIMIT": 0}
    servers = (server_factory(database_url=mariadb_url, **settings),
               server_factory(database_url=mariadb_url, **settings))
    yield servers
    stop_all(servers)


@pytest.fixture(scope="module")
def agent_id(two_workers: Server) -> int:
    return two_workers.add_agent(fresh_id())


def close_all(clients) -> None:
    for client in clients:
        client.close()


def cross_pair(server: Server, agent_id: int) -> Pair:
    """One session whose customer and agent are on different workers of `server`."""
    (pair,) = split_pairs(server.open_session, agent_id,
                          clients_per_node(lambda: Client(server.ws_url), nodes=2, per_node=1))
    return pair


def test_two_workers_deliver_every_message_once_in_order(two_workers: Server, agent_id: int) -> None:
    """(a) One instance, 2 workers: hundreds of messages both ways, none lost, repeated or reordered."""
    by_node = clients_per_node(lambda: Client(two_workers.ws_url), nodes=2, per_node=PAIRS)
    pairs = split_pairs(two_workers.open_session, agent_id, by_node)
    try:
        started = time.monotonic()
        result = exchange(pairs, PER_SENDER)
        print(f"\n(a) 1 instance x 2 workers, {len(pairs)} split sessions: {result.line()} "
              f"in {time.monotonic() - started:.2f}s")
        assert result.perfect, result.line()
        assert all(sum(c.values()) == 2 * PER_SENDER for c in result.per_connection.values())
    finally:
        close_all(c for p in pairs for c in p.clients)


def test_two_instances_deliver_every_message_once_in_order(two_instances: tuple[Server, Server],
                                                           agent_id: int) -> None:
    """(b) Two instances on two ports: hundreds of messages both ways, none lost, repeated or reordered."""
    urls = itertools.cycle([s.ws_url for s in two_instances])
    by_node = clients_per_node(lambda: Client(next(urls)), nodes=2, per_node=PAIRS)
    pairs = split_pairs(two_instances[0].open_session, agent_id, by_node)
    try:
        started = time.monotonic()
        result = exchange(pairs, PER_SENDER)
        print(f"\n(b) 2 instances x 1 worker, {len(pairs)} split sessions: {result.line()} "
              f"in {time.monotonic() - started:.2f}s")
        assert result.perfect, result.line()
    finally:
        close_all(c for p in pairs for c in p.clients)


def test_http_posted_messages_reach_every_worker_once_in_order(two_workers: Server, agent_id: int) -> None:
    """POST /api/sessions/<id>/messages, whichever worker takes it, reaches both workers' clients once, in order."""
    pair = cross_pair(two_workers, agent_id)
    try:
        ids = []
        for n in range(10):
            status, body = two_workers.http("POST", f"/api/sessions/{pair.session_id}/messages",
                                            {"sender_id": agent_id, "content": f"http {n}"})
            assert status == 201, body
            ids.append(body["id"])
        for client in pair.clients:
            got = [client.recv_type("new_message")["message"]["id"] for _ in ids]
            assert got == ids
            assert client.barrier() == []
    finally:
        close_all(pair.clients)


def test_session_closed_reaches_other_workers_and_refreshes_their_cache(two_workers: Server, agent_id: int) -> None:
    """A close on any worker tells every client once, and no worker accepts a message for it afterwards."""
    pair = cross_pair(two_workers, agent_id)
    try:
        for client in pair.clients:  # both workers have just looked the session up: cached as open
            client.say(pair.session_id, "before close")
        for client in pair.clients:
            assert [client.recv_type("new_message") for _ in range(2)]
        status, body = two_workers.http("POST", f"/api/sessions/{pair.session_id}/close")
        assert status == 200 and body["status"] == "closed", body
        for client in pair.clients:
            assert client.recv_type("session_closed") == {"type": "session_closed", "session_id": pair.session_id}
        for client in pair.clients:
            reply = client.request({"type": "send_message", "session_id": pair.session_id, "content": "after"})
            assert reply["type"] == "error" and reply["error"] == "会话已关闭", reply
        for client in pair.clients:
            assert client.barrier() == []
    finally:
        close_all(pair.clients)


def test_presence_counts_users_and_connections_on_every_worker(two_workers: Server, agent_id: int) -> None:
    """Presence lists each joined user with its connection count across workers, and follows leaves."""
    pair = cross_pair(two_workers, agent_id)
    second = two_workers.client(agent_id)
    try:
        second.join(pair.session_id)
        customer_id = pair.customer_id
        for _ in range(4):  # both workers answer the same
            wait_for_presence(two_workers, pair.session_id, {customer_id: 1, agent_id: 2})
        second.request({"type": "leave_session"})
        wait_for_presence(two_workers, pair.session_id, {customer_id: 1, agent_id: 1})
        pair.customer.close()
        wait_for_presence(two_workers, pair.session_id, {agent_id: 1})
    finally:
        close_all([*pair.clients, second])


@pytest.mark.parametrize(
    ("raw_id", "headers", "status"),
    [("abc", {}, 400), ("0", {}, 400), ("999999999999", {}, 404), ("OWN", {"X-User-Id": "OTHER"}, 403)],
)
def test_presence_is_authorized_like_the_session(two_workers: Server, raw_id: str, headers: dict, status: int
                                                 ) -> None:
    """Presence refuses bad ids, unknown sessions and users who may not see the session."""
    session_id = two_workers.open_session(fresh_id())
    raw_id = str(session_id) if raw_id == "OWN" else raw_id
    headers = {k: str(fresh_id()) if v == "OTHER" else v for k, v in headers.items()}
    answer, body = two_workers.http("GET", f"/api/sessions/{raw_id}/presence", headers=headers)
    assert answer == status, body
    assert set(body) == {"error", "code"}


def test_presence_of_a_crashed_worker_vanishes_by_itself(two_workers: Server, agent_id: int) -> None:
    """A worker killed with SIGKILL cannot withdraw its entries: they expire after PRESENCE_TTL (2 s here)."""
    pair = cross_pair(two_workers, agent_id)
    try:
        customer_id = pair.customer_id
        wait_for_presence(two_workers, pair.session_id, {customer_id: 1, agent_id: 1})
        victim = int(node_of(pair.agent.connection_id).rsplit("-", 2)[1])
        os.kill(victim, signal.SIGKILL)
        body = wait_for_presence(two_workers, pair.session_id, {customer_id: 1}, timeout=15)
        assert body["connections"] == 1
    finally:
        close_all(pair.clients)


def test_more_than_one_worker_without_redis_refuses_to_start(tmp_path) -> None:
    """(d) 2 workers and no REDIS_URL: one clear line, non-zero exit, quickly, and the port never bound."""
    port = free_port()
    env = base_env(WEBSOCKET_HOST="127.0.0.1", WEBSOCKET_PORT=port, WEBSOCKET_WORKER_COUNT=2,
                   DATABASE_URL=f"sqlite:///{tmp_path}/chat.db", STATE_DIR=tmp_path / "run")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=30)
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [
        "chat: refusing to start: WEBSOCKET_WORKER_COUNT=2 needs REDIS_URL: without it a customer and an agent on "
        "different workers never see each other's messages. Set REDIS_URL=redis://host:6379/0 or use 1 worker."
    ], result.stderr
    assert "Listening at" not in result.stdout + result.stderr
    assert elapsed < 10, elapsed



def test_a_stopped_instance_withdraws_its_presence_at_once(two_instances: tuple[Server, Server], agent_id: int,
                                                           server_factory: Callable[..., Server]) -> None:
    """An instance told to stop removes its members from presence itself, not PRESENCE_TTL (30 s) later."""
    staying = two_instances[0]
    leaving = server_factory(database_url=staying.env["DATABASE_URL"], REDIS_URL=staying.env["REDIS_URL"],
                             REDIS_CHANNEL_PREFIX=staying.env["REDIS_CHANNEL_PREFIX"])
    customer, agent = Client(staying.ws_url), Client(leaving.ws_url)
    try:
        pair = make_pair(staying, agent_id, customer, agent)
        wait_for_presence(staying, pair.session_id, {pair.customer_id: 1, agent_id: 1})
        leaving.stop()  # returns once the process has exited
        wait_for_presence(staying, pair.session_id, {pair.customer_id: 1}, timeout=1.0)
    finally:
        close_all([customer, agent])
