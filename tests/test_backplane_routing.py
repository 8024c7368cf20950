"""Routing by session on plain Redis and on a real Redis Cluster: each event reaches only the workers that need
it, a legacy join hears everything stored after its answer, and a Redis outage loses, repeats and reorders nothing.

The cluster is three masters started on loopback by the fixture (never the shared 6379); the outage tests
kill a Redis the test started and start it again in the middle of traffic between two instances.
"""

from __future__ import annotations

import itertools
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import websocket
from redis_servers import RedisCluster, RedisProcess, need_redis_server
from traffic import Pair, clients_per_node, exchange, paced_exchange, split_pairs, stop_all

from support import Client, Server, fresh_id

PAIRS = 8


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A real 3-master Redis Cluster on free loopback ports, torn down at the end of the module."""
    need_redis_server()
    cluster = RedisCluster(Path(tmp_path_factory.mktemp("cluster")))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module", params=["redis", "cluster"])
def backplane(request: pytest.FixtureRequest) -> dict[str, str]:
    """Backplane settings: the shared plain Redis, or the module's cluster; a channel prefix of their own."""
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    if request.param == "cluster":
        cluster = request.getfixturevalue("cluster")
        return {"REDIS_URL": cluster.url, "REDIS_CLUSTER": "true", "REDIS_CHANNEL_PREFIX": prefix}
    return {"REDIS_URL": request.getfixturevalue("redis_url"), "REDIS_CHANNEL_PREFIX": prefix}


@pytest.fixture(scope="module")
def three_instances(server_factory: Callable[..., Server], mariadb_url: str, backplane: dict[str, str]
                    ) -> Iterator[list[Server]]:
    """Three hosts of one deployment (one worker each): two carry the traffic, the third stands by."""
    servers = [server_factory(database_url=mariadb_url, RATE_LIMIT=0, **backplane) for _ in range(3)]
    yield servers
    stop_all(servers)


@pytest.fixture(scope="module")
def agent_id(three_instances: list[Server]) -> int:
    return three_instances[0].add_agent(fresh_id())


def received_events(server: Server) -> float:
    """chat_backplane_received of a one-worker instance: events it took off Redis."""
    status, text = server.http("GET", "/metrics")
    assert status == 200
    return sum(float(v) for v in re.findall(r"^chat_backplane_received_total(?:\{[^}]*\})? (\S+)$", text, re.M))


def pairs_across(first: Server, second: Server, agent_id: int, count: int = PAIRS) -> list[Pair]:
    urls = itertools.cycle([first.ws_url, second.ws_url])
    by_node = clients_per_node(lambda: Client(next(urls)), nodes=2, per_node=count)
    return split_pairs(first.open_session, agent_id, by_node)


def close_pairs(pairs: list[Pair]) -> None:
    for pair in pairs:
        for client in pair.clients:
            client.close()


def test_cross_host_delivery_is_exact_and_a_bystander_host_receives_nothing(three_instances: list[Server],
                                                                            agent_id: int) -> None:
    """Two hosts exchange hundreds of messages once, in order; a third host with an idle authenticated
    connection and no member of those sessions takes no event off Redis at all."""
    first, second, bystander = three_instances
    idle = bystander.client(fresh_id())
    before = received_events(bystander)
    pairs = pairs_across(first, second, agent_id)
    try:
        result = exchange(pairs, 25)
        print(f"\ncross-host over {first.env.get('REDIS_CLUSTER') and 'cluster' or 'redis'}: {result.line()}")
        assert result.perfect, result.line()
        assert received_events(second) > 0
        assert received_events(bystander) == before
    finally:
        close_pairs(pairs)
        idle.close()


def test_a_host_hears_a_session_only_while_someone_is_in_it_there(three_instances: list[Server],
                                                                 agent_id: int) -> None:
    """A host whose last member left a session stops receiving it; a member joining again hears it again."""
    first, _, bystander = three_instances
    customer_id = fresh_id()
    session_id = first.open_session(customer_id)
    sender = first.client(customer_id)
    watcher = bystander.client(agent_id)
    try:
        watcher.join(session_id)
        sender.join(session_id)
        sender.say(session_id, "heard")
        assert watcher.recv_type("new_message")["message"]["content"] == "heard"
        watcher.request({"type": "leave_session"})
        deadline = time.monotonic() + 15
        quiet = False
        while time.monotonic() < deadline and not quiet:  # the subscription lingers briefly after the leave
            before = received_events(bystander)
            sender.say(session_id, "unheard")
            sender.recv_type("new_message")
            quiet = received_events(bystander) == before
        assert quiet, "the bystander still receives a session it has nobody in"
        watcher.join(session_id)
        sender.say(session_id, "heard again")
        assert watcher.recv_type("new_message")["message"]["content"] == "heard again"
    finally:
        sender.close()
        watcher.close()


def test_a_legacy_join_hears_every_message_stored_after_its_answer(three_instances: list[Server]) -> None:
    """Joins on one host race senders on another: every message sent after a joiner had its
    `joined_session` reaches it, with no hole and no repeat (the join waits for its subscription)."""
    first, second, _ = three_instances
    sessions, per_sender = 16, 60
    failures: list[str] = []

    def one_session(n: int) -> None:
        customer_id = fresh_id()
        session_id = first.open_session(customer_id)
        sender = first.client(customer_id)
        sender.join(session_id)
        sent_at: list[float] = []
        joined_at: list[float] = []
        got: list[int] = []

        def join_and_listen() -> None:
            time.sleep(random.uniform(0, 0.2))  # spread the joins over the sending
            joiner = second.client(customer_id)
            try:
                joiner.send({"type": "join_session", "session_id": session_id})
                while True:  # the first frame should be the answer; a delivery before it still counts
                    frame = joiner.recv(20)
                    if frame["type"] == "joined_session":
                        break
                    got.append(int(frame["message"]["content"].split()[1]))
                joined_at.append(time.monotonic())
                while True:
                    frame = joiner.recv(20)
                    if frame.get("type") == "new_message":
                        seq = int(frame["message"]["content"].split()[1])
                        if seq < 0:
                            return
                        got.append(seq)
            finally:
                joiner.close()

        listener = threading.Thread(target=join_and_listen)
        listener.start()
        seq, deadline = 0, time.monotonic() + 60
        # Send on until the joiner has joined and `per_sender` more messages went after it (a loaded
        # machine may start the joiner late).
        while time.monotonic() < deadline and (len(sent_at) < per_sender or not joined_at
                                               or sum(at > joined_at[0] for at in sent_at) < per_sender):
            sent_at.append(time.monotonic())
            sender.say(session_id, f"m {seq}")
            seq += 1
            time.sleep(0.004)  # pacing the sender
        sender.say(session_id, "m -1")
        listener.join(60)
        sender.close()
        if not joined_at:
            failures.append(f"session {n}: never joined")
            return
        owed = [seq for seq, at in enumerate(sent_at) if at > joined_at[0]]
        missing = sorted(set(owed) - set(got))
        if missing or len(got) != len(set(got)) or got != sorted(got):
            failures.append(f"session {n}: owed {len(owed)}, missing {missing}, got {got}")

    threads = [threading.Thread(target=one_session, args=(n,)) for n in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures, failures


# -- outages ----------------------------------------------------------------------------------------


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    need_redis_server()
    redis = RedisProcess(tmp_path / "redis")
    redis.start()
    try:
        yield redis
    finally:
        redis.stop()


def outage_run(first: Server, second: Server, outage: Callable[[], None]) -> None:
    agent = first.add_agent(fresh_id())
    pairs = pairs_across(first, second, agent, count=6)
    try:
        assert exchange(pairs, 5).perfect
        started = time.monotonic()

        def meanwhile() -> None:
            time.sleep(1.5)  # let traffic flow first
            outage()

        result = paced_exchange(pairs, per_sender=250, interval=0.04, meanwhile=meanwhile)
        print(f"\noutage between two instances: {result.line()} in {time.monotonic() - started:.1f}s")
        assert result.perfect, result.line()
    except BaseException:
        for server in (first, second):
            print(f"--- log of {server.ws_url}\n{server.log()[-6000:]}")
        raise
    finally:
        close_pairs(pairs)


def test_redis_killed_for_five_seconds_mid_traffic_loses_repeats_and_reorders_nothing(
    server_factory: Callable[..., Server], mariadb_url: str, own_redis: RedisProcess
) -> None:
    """Redis dies for ~5 s under traffic between two instances: every open connection still gets every
    message once, in each sender's order (caught up from the database when the subscriptions return)."""
    settings = {"REDIS_URL": own_redis.url, "REDIS_CHANNEL_PREFIX": f"test-{uuid.uuid4().hex[:8]}",
                "RATE_LIMIT": 0, "REDIS_TIMEOUT": 0.5}
    servers = [server_factory(database_url=mariadb_url, **settings) for _ in range(2)]

    def outage() -> None:
        own_redis.stop()
        time.sleep(5)  # the outage itself
        own_redis.start()

    try:
        outage_run(*servers, outage)
    finally:
        stop_all(servers)


def test_a_cluster_master_restarted_mid_traffic_loses_repeats_and_reorders_nothing(
    server_factory: Callable[..., Server], mariadb_url: str, tmp_path: Path
) -> None:
    """One master of the cluster is killed and restarted under traffic: the sessions on its shard are caught
    up, the others never stopped; nothing lost, repeated or reordered."""
    need_redis_server()
    cluster = RedisCluster(tmp_path / "cluster").start()
    settings = {"REDIS_URL": cluster.url, "REDIS_CLUSTER": "true", "REDIS_CHANNEL_PREFIX": f"t{uuid.uuid4().hex[:8]}",
                "RATE_LIMIT": 0, "REDIS_TIMEOUT": 0.5}
    try:
        servers = [server_factory(database_url=mariadb_url, **settings) for _ in range(2)]
        try:
            outage_run(*servers, lambda: cluster.restart(1, down_for=5))
        finally:
            stop_all(servers)
    finally:
        cluster.stop()


def test_two_workers_on_the_cluster_deliver_every_message_once_in_order(
    server_factory: Callable[..., Server], mariadb_url: str, cluster: RedisCluster
) -> None:
    """One instance with two workers on the cluster: split sessions exchange once, in order."""
    server = server_factory(database_url=mariadb_url, workers=2, REDIS_URL=cluster.url, REDIS_CLUSTER="true",
                            REDIS_CHANNEL_PREFIX=f"test-{uuid.uuid4().hex[:8]}", RATE_LIMIT=0)
    agent = server.add_agent(fresh_id())
    by_node = clients_per_node(lambda: Client(server.ws_url), nodes=2, per_node=PAIRS)
    pairs = split_pairs(server.open_session, agent, by_node)
    try:
        result = exchange(pairs, 25)
        assert result.perfect, result.line()
    finally:
        close_pairs(pairs)
        server.stop()


def test_session_closed_during_an_outage_reaches_the_other_host_when_redis_returns(
    server_factory: Callable[..., Server], mariadb_url: str, own_redis: RedisProcess
) -> None:
    """A session closed while Redis is down: the other host's members get session_closed once it is back."""
    settings = {"REDIS_URL": own_redis.url, "REDIS_CHANNEL_PREFIX": f"test-{uuid.uuid4().hex[:8]}",
                "REDIS_TIMEOUT": 0.5}
    first, second = (server_factory(database_url=mariadb_url, **settings) for _ in range(2))
    customer_id = fresh_id()
    session_id = first.open_session(customer_id)
    member = second.client(customer_id)
    try:
        member.join(session_id)
        own_redis.stop()
        status, body = first.http("POST", f"/api/sessions/{session_id}/close")
        assert status == 200, body
        own_redis.start()
        assert member.recv_type("session_closed", timeout=20) == {"type": "session_closed",
                                                                   "session_id": session_id}
        with pytest.raises(websocket.WebSocketTimeoutException):
            member.recv(1.5)
    finally:
        member.close()
        stop_all([first, second])
